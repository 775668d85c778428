"""mnist-tracker: train MNIST classifiers and track every run in MLflow."""

__version__ = "0.1.0"
