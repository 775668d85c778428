"""Workflows: what a user asks for, built from the layers below (train, resume, suite, tune).

Each is a function over typed settings that returns an outcome; the CLI, ``mlflow run``, the
tests and the benchmarks call the same ones.
"""
