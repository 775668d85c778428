"""MNIST on disk and in memory.

Contracts:
- ``find_data_dir`` picks the folder: ``--data-dir``, else ``$MNIST_DATA_DIR``, else ``./data``.
- ``load_mnist`` returns the four verified arrays as uint8/int64 tensors, downloading the files
  with torchvision's mirrors when none are found (``download=True``).
- ``split_data`` turns them into the train / val / test splits a config asks for (class-balanced
  limits, seeded hold-out).
- ``iterate_batches`` slices batches from a seeded permutation of in-memory tensors; the model
  does its own resizing and normalisation, so the training path has no per-image work.

Every problem with the files raises ``DataError`` with a message that names the file, what is
wrong, and how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ENV_DATA_DIR = "MNIST_DATA_DIR"
MANIFEST_NAME = "mnist-manifest.json"


class DataError(Exception):
    """The MNIST files are missing, unreadable, or not what they claim to be."""


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

# torchvision's mirrors; a module attribute so tests (and air-gapped users) can point elsewhere.
MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]


@dataclass
class MNIST:
    """The raw dataset in memory: images uint8 (N, 28, 28), labels int64 (N,).

    ``test_x`` / ``test_y`` are None when the test files were not read (``include_test=False``).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    source: str  # the folder the files came from


@dataclass
class Splits:
    """What training sees. ``val_*`` is None without a hold-out; ``test_*`` is None when the
    test set must stay unseen (hyper-parameter search)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    source: str = ""


# ---------------------------------------------------------------------------------------------
# Finding and reading files


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder to read MNIST from: the argument, else ``$MNIST_DATA_DIR``, else ``./data``."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    return Path("data")


def _candidates(root: Path, spec: IdxFile) -> list[Path]:
    folders = [root, root / "MNIST" / "raw", root / "raw"]
    names = [spec.name, spec.kaggle_name]
    return [folder / (name + ext) for folder in folders for name in names for ext in ("", ".gz")]


def locate(root: Path, spec: IdxFile) -> Path | None:
    """The first existing file for ``spec`` under ``root`` in any known layout, or None."""
    for path in _candidates(root, spec):
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
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
    raw = _read_bytes(path)
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


def _manifest(root: Path) -> dict | None:
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        path = folder / MANIFEST_NAME
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: unreadable manifest ({exc})") from exc
    return None


def download(root: Path, missing: list[IdxFile]) -> None:
    """Fetch ``missing`` files from ``MIRRORS`` into ``root`` (progress bar from torchvision)."""
    from torchvision.datasets.utils import download_url

    root.mkdir(parents=True, exist_ok=True)
    for spec in missing:
        errors = []
        for mirror in MIRRORS:
            try:
                download_url(mirror + spec.name + ".gz", str(root), spec.name + ".gz")
                break
            except Exception as exc:  # any network failure: try the next mirror
                errors.append(f"{mirror}: {type(exc).__name__}: {exc}".splitlines()[0])
                partial = root / (spec.name + ".gz")
                partial.unlink(missing_ok=True)  # never leave half a file behind
        else:
            raise DataError(
                f"MNIST not found in {root} and the download failed ({'; '.join(errors)}). "
                f"Put the four IDX files (e.g. {spec.name}.gz) in {root}, or pass --data-dir / "
                f"set {ENV_DATA_DIR} to a folder that has them"
            )


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    download_missing: bool = True,
    include_test: bool = True,
) -> MNIST:
    """Find, optionally download, verify and load MNIST. Raises DataError on any problem.

    With ``include_test=False`` the test files are neither looked for nor read.
    """
    root = find_data_dir(data_dir)
    if (data_dir or os.environ.get(ENV_DATA_DIR)) and not root.is_dir():
        # Only the default ./data is created on demand; a named folder must exist (a typo
        # should not start a 60 MB download somewhere unexpected).
        raise DataError(
            f"data dir {root} does not exist; pass an existing folder to --data-dir "
            f"(or set {ENV_DATA_DIR})"
        )
    wanted = {k: s for k, s in FILES.items() if include_test or not k.startswith("test")}
    found = {key: locate(root, spec) for key, spec in wanted.items()}
    missing = [FILES[key] for key, path in found.items() if path is None]
    if missing:
        if not download_missing:
            looked = ", ".join(str(p.parent) for p in _candidates(root, missing[0])[::4])
            raise DataError(
                f"{missing[0].name} not found (looked in {looked}); pass --data-dir or set "
                f"{ENV_DATA_DIR} to a folder with the MNIST IDX files"
            )
        download(root, missing)
        found = {key: locate(root, spec) for key, spec in wanted.items()}
    manifest = _manifest(root)
    arrays = {}
    for key, spec in wanted.items():
        path = found[key]
        expected = None
        if manifest is not None and key in manifest.get("files", {}):
            expected = manifest["files"][key]
        arrays[key] = parse_idx(path, spec, expected)
    tensors: dict[str, torch.Tensor | None] = {"test_x": None, "test_y": None}
    for split in ("train", "test") if include_test else ("train",):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(f"{split}: {len(images)} images but {len(labels)} labels in {root}")
        tensors[f"{split}_x"] = torch.from_numpy(images.copy())
        tensors[f"{split}_y"] = torch.from_numpy(labels.astype(np.int64))
    return MNIST(**tensors, source=str(root))


# ---------------------------------------------------------------------------------------------
# Splits and batches


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(len(labels))`` whose every prefix is class-balanced.

    Round-robin over the classes in a random order: the first k indices hold each class
    ``k / n_classes`` times (±1) as long as every class has that many items.
    """
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    shuffled = labels[perm]
    rank = torch.empty_like(perm)
    for cls in torch.unique(shuffled):
        positions = (shuffled == cls).nonzero(as_tuple=True)[0]
        rank[positions] = torch.arange(len(positions))
    # Sort by rank within class; ties broken by the random position (stable sort).
    return perm[torch.sort(rank, stable=True).indices]


def split_data(
    data: MNIST,
    *,
    seed: int,
    limit_train: int | None = None,
    limit_test: int | None = None,
    val_size: int = 0,
) -> Splits:
    """Seeded, class-balanced splits.

    The validation hold-out is taken from the training set first (``val_size`` images), then
    ``limit_train`` from what remains; ``limit_test`` takes a class-balanced subset of the test
    set. The test set is never used for validation; it is None in the result when ``data``
    was loaded without it.
    """
    n_train = len(data.train_y)
    if val_size < 0:
        raise DataError(f"val size {val_size} is negative; pass --val-size 0 or more")
    if val_size >= n_train:
        raise DataError(
            f"val size {val_size} is not smaller than the training set ({n_train} images); "
            "pass a smaller --val-size"
        )
    order = balanced_order(data.train_y, seed)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if limit_train is not None and limit_train < len(train_idx):
        # Re-balance what remains, so the limited training set is balanced too.
        rest_order = balanced_order(data.train_y[train_idx], seed + 1)
        train_idx = train_idx[rest_order[:limit_train]]
    test_x, test_y = data.test_x, data.test_y
    if test_y is not None and limit_test is not None and limit_test < len(test_y):
        test_idx = balanced_order(test_y, seed + 2)[:limit_test]
        test_x, test_y = test_x[test_idx], test_y[test_idx]
    splits = Splits(
        train_x=data.train_x[train_idx],
        train_y=data.train_y[train_idx],
        test_x=test_x,
        test_y=test_y,
        source=data.source,
    )
    if val_size:
        splits.val_x, splits.val_y = data.train_x[val_idx], data.train_y[val_idx]
    return splits


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, labels)`` batches of ``to_input(x[...])`` on ``device``.

    With a ``generator`` the order is a fresh seeded permutation (training); without, the
    stored order (evaluation). The slice moves to the device before conversion, so the host
    copies uint8 (or half-precision features), not float32.
    """
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    non_blocking = torch.device(device).type == "cuda"
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
        yield (
            to_input(xb.to(device, non_blocking=non_blocking)),
            yb.to(device, non_blocking=non_blocking),
        )


def to_input(x: torch.Tensor) -> torch.Tensor:
    """What a model takes: uint8 images (B, 28, 28) become float32 (B, 1, 28, 28) in [0, 1];
    anything else (cached features) becomes float32 as it is."""
    if x.dtype == torch.uint8:
        return x.unsqueeze(1).float().div_(255.0)
    return x.float()


def label_counts(labels: torch.Tensor) -> list[int]:
    """How many items of each digit 0-9."""
    return torch.bincount(labels, minlength=10).tolist()
