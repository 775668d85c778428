"""The IDX file format of MNIST: the four files, their expected content, read and verified.

Contracts:
- ``FILES`` names the four files with their magic number, item count and the sha256 of the
  decompressed official content.
- ``parse_idx`` reads one file (gzipped or not) and verifies magic, dimensions, count, length
  and sha256 (or a manifest's count and sha256 for a subset); every problem raises
  ``DataError`` naming the file, what is wrong and how to fix it.
- ``write_idx`` writes what ``parse_idx`` reads (used to make the committed test subset).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

MANIFEST_NAME = "mnist-manifest.json"


@dataclass(frozen=True)
class IdxFile:
    """One of the four MNIST files and what its decompressed content must be."""

    key: str  # train_images, train_labels, test_images, test_labels
    name: str  # torchvision / LeCun name, e.g. train-images-idx3-ubyte
    kaggle_name: str  # e.g. train-images.idx3-ubyte
    magic: int  # 2051 for images, 2049 for labels
    count: int  # items in the official file
    sha256: str  # of the decompressed official file


FILES: dict[str, IdxFile] = {
    f.key: f
    for f in (
        IdxFile(
            "train_images",
            "train-images-idx3-ubyte",
            "train-images.idx3-ubyte",
            2051,
            60000,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        IdxFile(
            "train_labels",
            "train-labels-idx1-ubyte",
            "train-labels.idx1-ubyte",
            2049,
            60000,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        IdxFile(
            "test_images",
            "t10k-images-idx3-ubyte",
            "t10k-images.idx3-ubyte",
            2051,
            10000,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        IdxFile(
            "test_labels",
            "t10k-labels-idx1-ubyte",
            "t10k-labels.idx1-ubyte",
            2049,
            10000,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    )
}


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed when it ends in ``.gz``; DataError if unreadable."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: cannot decompress or read ({exc}); the file is truncated or corrupt, "
            "delete it and download it again"
        ) from exc


def parse_idx(path: Path, spec: IdxFile, expected: dict | None = None) -> np.ndarray:
    """Read and verify one IDX file; return its items as a numpy uint8 array.

    ``expected`` overrides the official count and sha256 (``{"count": .., "sha256": ..}``),
    as a manifest does for a subset.
    """
    raw = read_bytes(path)
    count = spec.count if expected is None else int(expected["count"])
    sha = spec.sha256 if expected is None else expected["sha256"]
    header_len = 16 if spec.magic == 2051 else 8
    if len(raw) < header_len:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header (corrupt)")
    magic = struct.unpack(">i", raw[:4])[0]
    if magic != spec.magic:
        raise DataError(
            f"{path}: magic number {magic}, expected {spec.magic} "
            f"({'images' if spec.magic == 2051 else 'labels'} file); wrong or corrupt file"
        )
    n = struct.unpack(">i", raw[4:8])[0]
    shape: tuple[int, ...] = (n,)
    if spec.magic == 2051:
        rows, cols = struct.unpack(">ii", raw[8:16])
        if (rows, cols) != (28, 28):
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
        shape = (n, 28, 28)
    if n != count:
        hint = "" if expected else f" (a subset needs a {MANIFEST_NAME} beside it)"
        raise DataError(f"{path}: header says {n} items, expected {count}{hint}")
    body = len(raw) - header_len
    want = int(np.prod(shape))
    if body != want:
        raise DataError(f"{path}: {body} bytes of data, expected {want}; the file is truncated")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha:
        raise DataError(
            f"{path}: sha256 of the content is {digest[:12]}..., expected {sha[:12]}...; "
            "the file is corrupt, delete it and download it again"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)
    if spec.magic == 2049 and array.size and array.max() > 9:
        raise DataError(f"{path}: label {int(array.max())} out of range 0-9")
    return array


def write_idx(path: Path, array: np.ndarray) -> str:
    """Write ``array`` (uint8; (N,) labels or (N, 28, 28) images) as IDX, gzipped if ``.gz``.

    Returns the sha256 of the uncompressed content (what ``parse_idx`` checks).
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 3:
        header = struct.pack(">iiii", 2051, *array.shape)
    elif array.ndim == 1:
        header = struct.pack(">ii", 2049, array.shape[0])
    else:
        raise ValueError(f"IDX writer takes 1-D labels or 3-D images, got shape {array.shape}")
    raw = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes reproducible.
        with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
            gz.write(raw)
    else:
        path.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()
