"""IDX reading, verification, download, splits and batches, on the committed real subset."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch

from mnist_tracker import data

from .conftest import SUBSET, copy_subset

pytestmark = pytest.mark.fast


def test_subset_loads_and_is_balanced():
    mnist = data.load_mnist(SUBSET, download_missing=False)
    assert mnist.train_x.shape == (1000, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.test_x.shape == (500, 28, 28)
    assert mnist.train_y.dtype == torch.int64
    assert data.label_counts(mnist.train_y) == [100] * 10
    assert data.label_counts(mnist.test_y) == [50] * 10


@pytest.mark.parametrize(
    ("layout", "gz"),
    [
        ("torchvision", True),
        ("torchvision", False),
        ("torchvision-raw", True),
        ("torchvision-raw", False),
        ("kaggle", True),
        ("kaggle", False),
    ],
)
def test_name_layouts_and_compression(tmp_path, layout, gz):
    copy_subset(tmp_path, layout, gz)
    mnist = data.load_mnist(tmp_path, download_missing=False)
    reference = data.load_mnist(SUBSET, download_missing=False)
    assert torch.equal(mnist.train_x, reference.train_x)
    assert torch.equal(mnist.test_y, reference.test_y)


def _raw(name: str) -> bytearray:
    with gzip.open(SUBSET / f"{name}.gz") as fh:
        return bytearray(fh.read())


def _corrupt(tmp_path, name: str, mutate) -> None:
    copy_subset(tmp_path, "torchvision", gz=False)
    path = tmp_path / name
    path.write_bytes(bytes(mutate(_raw(name))))


def _set(raw: bytearray, offset: int, value: int) -> bytearray:
    raw[offset : offset + 4] = value.to_bytes(4, "big")
    return raw


def _flip(raw: bytearray, offset: int) -> bytearray:
    raw[offset] ^= 0xFF
    return raw


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("train-images-idx3-ubyte", lambda r: r[:-100], "truncated"),
        ("train-images-idx3-ubyte", lambda r: r[:10], "too short"),
        ("train-images-idx3-ubyte", lambda r: _set(r, 0, 2049), "magic number 2049"),
        ("train-images-idx3-ubyte", lambda r: _set(r, 8, 32), "32x28"),
        ("train-images-idx3-ubyte", lambda r: _set(r, 4, 999), "999 items"),
        ("train-images-idx3-ubyte", lambda r: _flip(r, 5000), "sha256"),
        ("t10k-labels-idx1-ubyte", lambda r: _flip(r, 20), "sha256"),
        ("t10k-labels-idx1-ubyte", lambda r: _set(r, 0, 2051), "magic number 2051"),
    ],
)
def test_corrupt_files_are_named(tmp_path, name, mutate, message):
    _corrupt(tmp_path, name, mutate)
    with pytest.raises(data.DataError) as err:
        data.load_mnist(tmp_path, download_missing=False)
    assert name in str(err.value)
    assert message in str(err.value)


def test_truncated_gzip_is_named(tmp_path):
    copy_subset(tmp_path, "torchvision", gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte\.gz.*truncated or corrupt"):
        data.load_mnist(tmp_path, download_missing=False)


def test_subset_without_manifest_is_rejected(tmp_path):
    copy_subset(tmp_path)
    (tmp_path / data.MANIFEST_NAME).unlink()
    with pytest.raises(data.DataError, match=r"expected 60000.*manifest"):
        data.load_mnist(tmp_path, download_missing=False)


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_mnist(tmp_path, download_missing=False)
    assert str(tmp_path) in str(err.value) and "--data-dir" in str(err.value)


def test_data_dir_lookup_order(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_DATA_DIR, "/from/env")
    assert str(data.find_data_dir("/explicit")) == "/explicit"
    assert str(data.find_data_dir(None)) == "/from/env"
    monkeypatch.delenv(data.ENV_DATA_DIR)
    assert str(data.find_data_dir(None)) == "data"


def test_offline_download_fails_clearly(monkeypatch, tmp_path):
    # Port 9 (discard) on loopback refuses connections: a real, fast network failure.
    monkeypatch.setattr(data.source, "MIRRORS", ["http://127.0.0.1:9/"])
    target = tmp_path / "empty"
    target.mkdir()
    with pytest.raises(data.DataError) as err:
        data.load_mnist(target)
    message = str(err.value)
    assert "download failed" in message and str(target) in message and "--data-dir" in message
    assert not list(target.glob("*.gz")), "no half-written file is left behind"


def test_download_from_a_mirror(monkeypatch, tmp_path):
    """The real download path, against a local HTTP mirror serving the subset files."""
    served = tmp_path / "mirror"
    served.mkdir()
    for path in SUBSET.glob("*.gz"):
        shutil.copy(path, served / path.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        monkeypatch.setattr(
            data.source, "MIRRORS", ["http://127.0.0.1:9/", f"http://127.0.0.1:{port}/"]
        )
        target = tmp_path / "downloaded"
        target.mkdir()
        shutil.copy(SUBSET / data.MANIFEST_NAME, target / data.MANIFEST_NAME)
        mnist = data.load_mnist(target)
    finally:
        server.shutdown()
    assert len(mnist.train_y) == 1000
    assert sorted(p.name for p in target.glob("*.gz")) == sorted(
        p.name for p in SUBSET.glob("*.gz")
    )


def test_nonexistent_explicit_dir():
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_mnist("/no/such/folder")


def test_splits_are_balanced_seeded_and_disjoint():
    mnist = data.load_mnist(SUBSET, download_missing=False)
    a = data.split_data(mnist, seed=1, limit_train=200, limit_test=100, val_size=300)
    b = data.split_data(mnist, seed=1, limit_train=200, limit_test=100, val_size=300)
    c = data.split_data(mnist, seed=2, limit_train=200, limit_test=100, val_size=300)
    assert data.label_counts(a.train_y) == [20] * 10
    assert data.label_counts(a.val_y) == [30] * 10
    assert data.label_counts(a.test_y) == [10] * 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_x, b.val_x)
    assert not torch.equal(a.train_x, c.train_x)
    # No image is both in train and in val: compare the images themselves.
    train_rows = {bytes(img.numpy()) for img in a.train_x}
    assert not any(bytes(img.numpy()) in train_rows for img in a.val_x)


def test_val_size_must_leave_training_data():
    mnist = data.load_mnist(SUBSET, download_missing=False)
    with pytest.raises(data.DataError, match="not smaller than the training set"):
        data.split_data(mnist, seed=0, val_size=1000)


def test_batches_cover_everything_once():
    mnist = data.load_mnist(SUBSET, download_missing=False)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for xb, yb in data.iterate_batches(mnist.test_x, mnist.test_y, 64, generator=gen):
        assert xb.dtype == torch.float32 and xb.shape[1:] == (1, 28, 28)
        assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0
        seen.append(yb)
    labels = torch.cat(seen)
    assert len(labels) == 500 and data.label_counts(labels) == [50] * 10
    assert not torch.equal(labels, mnist.test_y), "training batches come in a shuffled order"


@pytest.mark.full_data
def test_full_mnist_verifies(full_data_dir):
    """The official files: checksums of the decompressed content, counts, label counts."""
    mnist = data.load_mnist(full_data_dir, download_missing=False)
    assert mnist.train_x.shape == (60000, 28, 28) and mnist.test_x.shape == (10000, 28, 28)
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.label_counts(mnist.train_y) == train_counts
    assert data.label_counts(mnist.test_y) == test_counts


def test_a_failed_download_leaves_no_empty_data_folder(monkeypatch, tmp_path):
    """The default ./data is made for the download; when every mirror fails it goes again."""
    monkeypatch.setattr(data.source, "MIRRORS", ["http://127.0.0.1:9/"])
    monkeypatch.delenv("MNIST_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataError, match="download failed"):
        data.load_mnist()
    assert not (tmp_path / "data").exists()


def test_digits_from_a_photo_look_like_mnist(tmp_path):
    """A test digit drawn large, dark on light and off centre comes back close to the
    original: white on black, 20 x 20 box, centred by mass (what `predict` feeds the model)."""
    from PIL import Image

    from mnist_tracker.data.images import read_digits

    mnist = data.load_mnist(SUBSET, download_missing=False)
    original = mnist.test_x[3].numpy().astype(float)
    canvas = np.full((300, 260), 255, dtype=np.uint8)
    canvas[40 : 40 + 224, 10 : 10 + 224] = 255 - np.kron(original, np.ones((8, 8))).astype(np.uint8)
    Image.fromarray(canvas).save(tmp_path / "photo.png")
    (back,) = read_digits(tmp_path / "photo.png")
    assert back.dtype == np.uint8 and back.shape == (28, 28)
    assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.8
    assert read_digits(SUBSET / "t10k-images-idx3-ubyte.gz").shape == (500, 28, 28)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(data.DataError, match=r"notes\.txt: not an image"):
        read_digits(tmp_path / "notes.txt")


@pytest.mark.fast
@pytest.mark.parametrize(
    ("count", "pixels", "message"),
    [
        (5, 100, "says 5 images, 3920 bytes of pixels, but it holds 100; the file is truncated"),
        (2**31 - 1, 0, "but it holds 0; the file is truncated"),
        (-1, 0, "of -1 x 28 x 28, expected N x 28 x 28"),
    ],
)
def test_an_idx_file_cut_short_is_named_as_such(tmp_path, count, pixels, message):
    """It said "an IDX images file of 5 x 28 x 28, expected N x 28 x 28" (a hostile test's
    find, stop 36): true of its header, and silent on what was wrong."""
    import struct

    from mnist_tracker.data.images import read_digits

    path = tmp_path / "cut.idx"
    path.write_bytes(struct.pack(">iiii", 2051, count, 28, 28) + bytes(pixels))
    with pytest.raises(data.DataError, match=re.escape(message)):
        read_digits(path)


def _files(**entries) -> str:
    return json.dumps({"files": entries})


SHA = "0" * 64
BAD_MANIFESTS = [
    ("{not json", "is not valid JSON"),
    ('[{"files": {}}]', 'the manifest is an array, not an object with "files"'),
    ('"files"', "the manifest is a string"),
    ('{"description": "a subset"}', 'has no "files" object'),
    ('{"files": ["train_images"]}', 'has no "files" object'),
    (_files(train_images={"count": "1000", "sha256": SHA}), '"files.train_images" needs'),
    (_files(train_images={"count": 1000}), 'needs "count" (a whole number) and "sha256"'),
    (_files(train_images={"count": True, "sha256": SHA}), '"files.train_images" needs'),
    (_files(train_labels=1000), '"files.train_labels" needs'),
    (_files(test_labels={"count": 500, "sha256": "abc"}), "64 lowercase hex digits"),
    (
        _files(train_imgs={"count": 1000, "sha256": SHA}),
        'unknown manifest entry "files.train_imgs"',
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_MANIFESTS, ids=[t for t, _ in BAD_MANIFESTS])
def test_a_malformed_manifest_is_one_data_error_naming_it(tmp_path, text, message):
    """Before: a list or an ill-typed entry crashed with AttributeError / KeyError / TypeError
    (a traceback); now every shape is a DataError naming the file and the fix."""
    folder = copy_subset(tmp_path)
    (folder / data.MANIFEST_NAME).write_text(text)
    with pytest.raises(data.DataError) as err:
        data.load_mnist(folder, download_missing=False)
    line = str(err.value)
    assert line.startswith(str(folder / data.MANIFEST_NAME)) and message in line, line
    assert "fix it, or delete it" in line and "\n" not in line
