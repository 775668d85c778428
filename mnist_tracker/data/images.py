"""Digits from image files, made to look like MNIST: for ``predict``.

``read_digits(path)`` reads a PNG or JPEG (one digit, any size, dark on light or light on dark)
or an IDX images file (many digits, already MNIST's format) and returns uint8 ``(N, 28, 28)``
arrays as MNIST has them: a white digit on black, scaled to fit a 20 x 20 box and centred by
its centre of mass in the 28 x 28 image (LeCun's preprocessing of the original set).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import DataError
from .idx import read_bytes

IDX_IMAGES_MAGIC = 2051


def read_digits(path: str | Path) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` MNIST-style digits from ``path``; DataError naming the file when
    it cannot be read as an image or IDX images file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass PNG, JPEG or IDX image files")
    raw = read_bytes(path)
    if len(raw) >= 4 and struct.unpack(">i", raw[:4])[0] == IDX_IMAGES_MAGIC:
        return _idx_images(path, raw)
    return mnist_like(_grey(path))[None]


def _idx_images(path: Path, raw: bytes) -> np.ndarray:
    if len(raw) < 16:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX images header; corrupt")
    n, rows, cols = struct.unpack(">iii", raw[4:16])
    if (rows, cols) != (28, 28) or n < 0:
        raise DataError(
            f"{path}: an IDX images file of {n} x {rows} x {cols}, expected N x 28 x 28; "
            "pass MNIST-sized digits"
        )
    if len(raw) != 16 + n * 784:
        raise DataError(
            f"{path}: its header says {n} images, {n * 784} bytes of pixels, but it holds "
            f"{len(raw) - 16}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 28, 28).copy()


def _grey(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, image).convert("L"), dtype=np.float64)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not an image PIL can read ({exc}); pass PNG or JPEG") from None


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def mnist_like(grey: np.ndarray) -> np.ndarray:
    """One grey image (any size, 0-255) as MNIST has its digits (see the module's doc)."""
    from PIL import Image

    image = np.asarray(grey, dtype=np.float64)
    if _border(image).mean() > 127:  # dark ink on light paper: MNIST is the other way round
        image = 255.0 - image
    image = np.clip(image - np.median(_border(image)), 0, 255)  # the background to black
    if image.max() <= 0:
        return np.zeros((28, 28), dtype=np.uint8)
    rows, cols = np.nonzero(image > 0.2 * image.max())
    crop = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(
        Image.fromarray((crop / crop.max() * 255).astype(np.uint8)).resize(size, Image.LANCZOS),
        dtype=np.float64,
    )
    out = np.zeros((28, 28))
    total = small.sum()
    cy, cx = (np.indices(small.shape) * small).reshape(2, -1).sum(1) / total
    top = int(np.clip(round(14 - cy), 0, 28 - small.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - small.shape[1]))
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return np.clip(out, 0, 255).astype(np.uint8)
