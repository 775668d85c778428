#!/usr/bin/env bash
# What a lent GPU machine lacks, laid out beside the checkout for the device tool to carry
# (DEVELOPERS.md, "GPU checks"): full MNIST in .gpu/mnist and, in .whl, the wheels of this
# project's dependencies that the machine's image does not hold (MLflow and what it needs,
# Optuna, plotly), at the versions of this checkout's .venv, for its Python (3.12).
#
# Usage (from anywhere, on the development machine):
#   bash scripts/gpu_bundle.sh [MNIST_DIR]    # default: $MNIST_DATA_DIR
# Both folders are ignored by git through .git/info/exclude (they must not be committed) and
# come to about 56 MiB, under the tool's 64 MiB. Running it again replaces them.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${1:-${MNIST_DATA_DIR:-}}"
if [ -z "$data" ] || [ ! -f "$data/train-images-idx3-ubyte.gz" ]; then
  echo "Error: full MNIST not found; pass its folder (or set MNIST_DATA_DIR)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "Error: no .venv here; run 'make install-test' first (the wheels take its versions)" >&2
  exit 2
fi

mkdir -p .git/info
for folder in /.whl/ /.gpu/; do
  grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done

rm -rf .gpu .whl
mkdir -p .gpu/mnist .whl
cp "$data"/*.gz .gpu/mnist/
[ -f "$data/SHA256SUMS" ] && cp "$data/SHA256SUMS" .gpu/mnist/
chmod -R u+w .gpu

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
  -d .whl $pins
echo "bundle: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1); MNIST $(du -sh .gpu | cut -f1)"
