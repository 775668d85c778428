#!/bin/sh
# Creates the team stack's databases and roles: mlflow (tracking), mlflow_auth (users and
# permissions) and optuna (shared studies). Run once against a fresh PostgreSQL, as its
# superuser: docker compose mounts it into /docker-entrypoint-initdb.d, and
# deploy/local-postgres.sh runs it for the native tests.
#
# Environment: MLFLOW_DB_PASSWORD, OPTUNA_DB_PASSWORD (required); PGHOST, PGPORT, PGUSER as
# for psql.
set -eu
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${OPTUNA_DB_PASSWORD:?set OPTUNA_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --dbname postgres \
  -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v optuna_pw="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE optuna LOGIN PASSWORD :'optuna_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE optuna OWNER optuna;
SQL
