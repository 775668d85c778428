#!/usr/bin/env bash
# What a lent GPU machine lacks, laid out beside the checkout for the device tool to carry
# (DEVELOPERS.md, "GPU checks"): full MNIST in .gpu/mnist and, in .whl, the wheels of this
# project's dependencies that the machine's image does not hold (MLflow and what it needs,
# Optuna, plotly), at the versions of this checkout's .venv, for its Python (3.12).
#
# Usage (from anywhere, on the development machine):
#   bash scripts/gpu_bundle.sh [MNIST_DIR]    # default: $MNIST_DATA_DIR
# Both folders are ignored by git through .git/info/exclude (they must not be committed) and
# come to about 56 MiB, under the tool's 64 MiB. Running it again replaces them, once the new
# bundle is complete: a failed download leaves the old one as it was.
set -euo pipefail
data="${1:-${MNIST_DATA_DIR:-}}"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
  t10k-labels-idx1-ubyte.gz)
for name in "${files[@]}"; do
  if [ -z "$data" ] || [ ! -f "$data/$name" ]; then
    echo "Error: full MNIST not found; pass its folder (or set MNIST_DATA_DIR)" >&2
    exit 2
  fi
done
data=$(cd "$data" && pwd)  # before moving to the checkout
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "Error: no .venv here; run 'make install-test' first (the wheels take its versions)" >&2
  exit 2
fi

mkdir -p .git/info
for folder in /.whl/ /.gpu/; do
  grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done

new=$(mktemp -d .git/gpu-bundle.XXXXXX)  # on the checkout's disk, unseen by git status
trap 'rm -rf "$new"' EXIT
mkdir -p "$new/gpu/mnist" "$new/whl"
for name in "${files[@]}"; do cp "$data/$name" "$new/gpu/mnist/"; done
if [ -f "$data/SHA256SUMS" ]; then cp "$data/SHA256SUMS" "$new/gpu/mnist/"; fi
chmod -R u+w "$new/gpu"

# Not in the machine's image (device tool, KINDS.md: "Python packages already there",
# 2026-11-17), needed to import MLflow (its SQL store and server), Optuna and plotly. A missing
# one fails at import there (cryptography did, on 2026-12-04), so keep this list whole.
missing=(
  alembic annotated-types blinker cachetools cffi colorlog cryptography databricks-sdk docker
  fastapi flask flask-cors gitdb gitpython google-auth graphene graphql-core graphql-relay
  gunicorn huey importlib-metadata itsdangerous mako mlflow mlflow-skinny mlflow-tracing
  opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
  optuna plotly prettytable pyasn1 pyasn1-modules pycparser pydantic pydantic-core
  python-dotenv skops smmap sqlalchemy sqlparse starlette typing-inspection uvicorn wcwidth
)
pins=$(.venv/bin/python - "${missing[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"Error: {name} is not installed in .venv; run 'make install-test' first")
EOF
)
# shellcheck disable=SC2086  # one pin per word
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$new/whl" $pins
rm -rf .gpu .whl
mv "$new/gpu" .gpu
mv "$new/whl" .whl
echo "bundle: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1); MNIST $(du -sh .gpu | cut -f1)"
