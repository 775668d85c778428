"""Write the small real-MNIST subset committed under tests/data/mnist.

Usage: python scripts/make_test_subset.py --data-dir PATH_TO_FULL_MNIST [--out tests/data/mnist]

Takes a seeded, class-balanced 1,000 training and 500 test images from the full, verified files,
writes them as gzipped IDX files under the torchvision names, and a manifest with their counts
and sha256 so that mnist_tracker.data verifies them like the full set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnist_tracker import data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="tests/data/mnist")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    full = data.load_mnist(args.data_dir, download_missing=False)
    train_idx = data.balanced_order(full.train_y, args.seed)[: args.train].sort().values
    test_idx = data.balanced_order(full.test_y, args.seed)[: args.test].sort().values
    arrays = {
        "train_images": full.train_x[train_idx],
        "train_labels": full.train_y[train_idx],
        "test_images": full.test_x[test_idx],
        "test_labels": full.test_y[test_idx],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, tensor in arrays.items():
        spec = data.FILES[key]
        sha = data.write_idx(out / f"{spec.name}.gz", tensor.numpy().astype("uint8"))
        files[key] = {"count": len(tensor), "sha256": sha}
    manifest = {
        "description": (
            f"Class-balanced subset of MNIST (seed {args.seed}): {args.train} training and "
            f"{args.test} test images, made by scripts/make_test_subset.py"
        ),
        "files": files,
    }
    (out / data.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"wrote {out}: train {data.label_counts(arrays['train_labels'])}, "
        f"test {data.label_counts(arrays['test_labels'])}"
    )


if __name__ == "__main__":
    main()
