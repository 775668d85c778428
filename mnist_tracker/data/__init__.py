"""MNIST on disk and in memory: find, verify and load the IDX files; splits; batches."""

from ..errors import DataError
from .idx import FILES, MANIFEST_NAME, IdxFile, parse_idx, write_idx
from .source import ENV_DATA_DIR, MIRRORS, MNIST, find_data_dir, load_mnist, locate
from .splits import Splits, balanced_order, iterate_batches, label_counts, split_data, to_input

__all__ = [
    "ENV_DATA_DIR",
    "FILES",
    "MANIFEST_NAME",
    "MIRRORS",
    "MNIST",
    "DataError",
    "IdxFile",
    "Splits",
    "balanced_order",
    "find_data_dir",
    "iterate_batches",
    "label_counts",
    "load_mnist",
    "locate",
    "parse_idx",
    "split_data",
    "to_input",
    "write_idx",
]
