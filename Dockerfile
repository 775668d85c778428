# The project image (trainer, tuner): CPU PyTorch, then mnist-tracker.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.14.1" "torchvision==0.29.1"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mnist_tracker ./mnist_tracker
RUN pip install --no-cache-dir . "boto3>=1.34"
RUN useradd --create-home trainer && mkdir -p /data /torch /runs && chown trainer /data /torch /runs
USER trainer
ENV MNIST_DATA_DIR=/data/mnist TORCH_HOME=/torch MNIST_TRACKER_HOME=/runs PYTHONUNBUFFERED=1
CMD ["mnist-tracker", "--help"]
