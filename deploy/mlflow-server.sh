#!/bin/sh
# The team's MLflow tracking server: PostgreSQL backend, artifacts proxied to an object store
# (--serve-artifacts), login required (the basic-auth app). docker compose runs exactly this
# script, and so do the tests (tests/test_deploy.py), so the two cannot drift.
#
# Environment (no defaults for secrets):
#   MLFLOW_BACKEND_STORE_URI       postgresql://mlflow:PASSWORD@postgres:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION   s3://mlflow-artifacts (with MLFLOW_S3_ENDPOINT_URL and
#                                  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or a folder
#   MLFLOW_AUTH_DATABASE_URI       users and permissions: postgresql://.../mlflow_auth
#   MLFLOW_AUTH_ADMIN_USERNAME     the first admin, created on first start (read by MLflow)
#   MLFLOW_AUTH_ADMIN_PASSWORD     its password (read by MLflow)
#   MLFLOW_FLASK_SERVER_SECRET_KEY signs sessions (read by MLflow)
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2),
#   MLFLOW_ALLOWED_HOSTS (mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000)
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (see .env.example)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (see .env.example)}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (see .env.example)}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set MLFLOW_AUTH_ADMIN_USERNAME (see .env.example)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (see .env.example)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (see .env.example)}"
port="${MLFLOW_PORT:-5000}"

# The auth app reads its settings from an ini file; it holds a database password, so only
# this user may read it.
umask 077
config_dir=$(mktemp -d)
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Each password check is a slow PBKDF2 hash by design; caching a verified credential for a
# minute keeps a training run's many small requests fast. A changed password reaches every
# worker within that minute.
auth_cache_ttl_seconds = 60
INI

exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --app-name basic-auth \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "$port" \
  --workers "${MLFLOW_WORKERS:-2}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:$port,localhost,localhost:$port,127.0.0.1,127.0.0.1:$port}"
