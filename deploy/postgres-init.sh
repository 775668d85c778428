#!/bin/sh
# Creates the team stack's databases and roles: mlflow (tracking), mlflow_auth (users and
# permissions) and optuna (shared studies). Run once against a fresh PostgreSQL, as its
# superuser: docker compose mounts it into /docker-entrypoint-initdb.d, and
# deploy/local-postgres.sh runs it for the native tests.
#
# Environment: MLFLOW_DB_PASSWORD, OPTUNA_DB_PASSWORD (required; .env.example's `change-me...`
# placeholders are refused); PGHOST, PGPORT, PGUSER as for psql. psql reads the passwords from
# the environment (\getenv), so they are never on its command line.
set -eu
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${OPTUNA_DB_PASSWORD:?set OPTUNA_DB_PASSWORD}"
# Beside this script, or where docker compose mounts it (this one runs from initdb.d there).
guard="$(dirname "$0")/refuse-example-secrets.sh"
[ -r "$guard" ] || guard=/mnist-tracker/refuse-example-secrets.sh
sh "$guard" MLFLOW_DB_PASSWORD OPTUNA_DB_PASSWORD

psql -v ON_ERROR_STOP=1 --dbname postgres <<'SQL'
\getenv mlflow_pw MLFLOW_DB_PASSWORD
\getenv optuna_pw OPTUNA_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE optuna LOGIN PASSWORD :'optuna_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE optuna OWNER optuna;
SQL
