#!/bin/sh
# The team's MLflow tracking server: PostgreSQL backend, artifacts proxied to an object store
# (--serve-artifacts), login required (the basic-auth app). docker compose runs exactly this
# script, and so do the tests (tests/test_deploy.py), so the two cannot drift.
#
# Environment (no defaults for secrets; each is refused while it holds .env.example's
# `change-me...` placeholder, see refuse-example-secrets.sh):
#   MLFLOW_BACKEND_STORE_URI       postgresql://mlflow:PASSWORD@postgres:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION   s3://mlflow-artifacts (with MLFLOW_S3_ENDPOINT_URL and
#                                  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or a folder
#   MLFLOW_AUTH_DATABASE_URI       users and permissions: postgresql://.../mlflow_auth
#   MLFLOW_AUTH_ADMIN_USERNAME     the first admin, created on first start (read by MLflow)
#   MLFLOW_AUTH_ADMIN_PASSWORD     its password (read by MLflow)
#   MLFLOW_FLASK_SERVER_SECRET_KEY signs sessions (read by MLflow)
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2),
#   MLFLOW_ALLOWED_HOSTS (mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000)
#
# No secret is put on a command line, where `ps` shows it to every user: `mlflow server` reads
# the backend store URI and the artifact destination from MLFLOW_BACKEND_STORE_URI and
# MLFLOW_ARTIFACTS_DESTINATION (its click envvars), and hands them to its uvicorn workers and
# job runners in their environment too. The auth database URI goes in an ini file (the auth app
# reads it from nowhere else), private to this user and removed when the server stops: mlflow
# runs as a child of this shell, which passes a TERM, INT or HUP on to it as a TERM, waits for
# it and cleans up. Only a SIGKILL of this shell leaves the file behind (in $TMPDIR, else /tmp).
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (see .env.example)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (see .env.example)}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (see .env.example)}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set MLFLOW_AUTH_ADMIN_USERNAME (see .env.example)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (see .env.example)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (see .env.example)}"
sh "$(dirname "$0")/refuse-example-secrets.sh" MLFLOW_BACKEND_STORE_URI \
  MLFLOW_AUTH_DATABASE_URI MLFLOW_ARTIFACTS_DESTINATION MLFLOW_AUTH_ADMIN_PASSWORD \
  MLFLOW_FLASK_SERVER_SECRET_KEY AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
port="${MLFLOW_PORT:-5000}"

# Stopped before mlflow starts: exit (which runs the EXIT trap). Once it runs: forward.
server=""
stop() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || :; else exit 143; fi
}
trap stop TERM INT HUP

# The auth app reads its settings from an ini file; it holds a database password, so only
# this user may read it, and it goes when the server does.
umask 077
config_dir=$(mktemp -d)
trap 'rm -rf "$config_dir"' EXIT
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

# MLflow's job runner (GenAI evaluation and optimisation jobs, 7 huey worker processes of
# ~260 MB each) serves nothing this stack logs; set the variable to true to have it anyway.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

mlflow server \
  --serve-artifacts \
  --app-name basic-auth \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "$port" \
  --workers "${MLFLOW_WORKERS:-2}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:$port,localhost,localhost:$port,127.0.0.1,127.0.0.1:$port}" &
server=$!
# A trapped signal ends `wait` early; wait again until mlflow itself has exited (a zombie still
# answers kill -0), and exit with its status.
status=0
wait "$server" || status=$?
while kill -0 "$server" 2>/dev/null; do
  status=0
  wait "$server" || status=$?
done
exit "$status"
