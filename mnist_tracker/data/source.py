"""Finding, downloading and loading MNIST: ``load_mnist`` -> ``MNIST`` (uint8 tensors).

Contracts:
- ``find_data_dir`` picks the folder: ``--data-dir``, else ``$MNIST_DATA_DIR``, else ``./data``.
- ``load_mnist`` returns the four verified arrays as uint8/int64 tensors, downloading the files
  from torchvision's mirrors when none are found in the default ``./data``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .idx import FILES, MANIFEST_NAME, IdxFile, parse_idx

ENV_DATA_DIR = "MNIST_DATA_DIR"

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


def _manifest(root: Path) -> dict[str, dict] | None:
    """The ``files`` of the first manifest under ``root`` (None: there is none): for an IDX
    file's key, the ``{"count", "sha256"}`` a subset has instead of full MNIST's."""
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        path = folder / MANIFEST_NAME
        if path.is_file():
            return _read_manifest(path)
    return None


_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_manifest(path: Path) -> dict[str, dict]:
    """A manifest's ``files``: ``{"files": {"train_images": {"count": 1000, "sha256": "..."},
    ...}}`` (other keys, a description, are ignored; a file it leaves out is checked against
    full MNIST). DataError naming the file and what is wrong with it otherwise."""
    fix = "fix it, or delete it to check the files against full MNIST"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: unreadable manifest ({exc.strerror or exc}); {fix}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path}: the manifest is not valid JSON ({exc}); {fix}") from None
    if not isinstance(manifest, dict):
        kind = _JSON_TYPES.get(type(manifest), "a number")
        raise DataError(f'{path}: the manifest is {kind}, not an object with "files"; {fix}')
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DataError(
            f'{path}: the manifest has no "files" object (an entry per IDX file, e.g. '
            f'"train_images": {{"count": 1000, "sha256": "..."}}); {fix}'
        )
    for key, entry in files.items():
        if key not in FILES:
            raise DataError(
                f'{path}: unknown manifest entry "files.{key}" (the entries are '
                f"{', '.join(FILES)}); {fix}"
            )
        if not _is_entry(entry):
            raise DataError(
                f'{path}: manifest entry "files.{key}" needs "count" (a whole number) and '
                f'"sha256" (64 lowercase hex digits), got {json.dumps(entry)[:80]}; {fix}'
            )
    return files


def _is_entry(entry) -> bool:
    """``{"count": N, "sha256": "<64 hex digits>"}``, N a whole number (not a boolean)."""
    if not isinstance(entry, dict):
        return False
    count, sha = entry.get("count"), entry.get("sha256")
    whole = isinstance(count, int) and not isinstance(count, bool) and count >= 0
    return whole and isinstance(sha, str) and _SHA256.fullmatch(sha) is not None


def download(root: Path, missing: list[IdxFile]) -> None:
    """Fetch ``missing`` files from ``MIRRORS`` into ``root`` (progress bar from torchvision);
    DataError, and no folder left behind that this call created, when every mirror fails."""
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(root, missing)
    except DataError:
        if created and not any(root.iterdir()):
            root.rmdir()  # a failed download leaves no empty ./data behind
        raise


def _fetch(root: Path, missing: list[IdxFile]) -> None:
    from torchvision.datasets.utils import download_url

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
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"data dir {root} {problem}; pass an existing folder to --data-dir "
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
    manifest = _manifest(root) or {}
    arrays = {}
    for key, spec in wanted.items():
        arrays[key] = parse_idx(found[key], spec, manifest.get(key))
    tensors: dict[str, torch.Tensor | None] = {"test_x": None, "test_y": None}
    for split in ("train", "test") if include_test else ("train",):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(f"{split}: {len(images)} images but {len(labels)} labels in {root}")
        tensors[f"{split}_x"] = torch.from_numpy(images.copy())
        tensors[f"{split}_y"] = torch.from_numpy(labels.astype(np.int64))
    return MNIST(**tensors, source=str(root))
