#!/bin/sh
# Start or stop a throw-away PostgreSQL (Debian's binaries) on a loopback port, with the team
# stack's databases (deploy/postgres-init.sh). For the native tests and CI; not for production.
#
#   deploy/local-postgres.sh start DIR PORT   # initdb into DIR if empty, start, create DBs
#   deploy/local-postgres.sh stop DIR
#
# Needs MLFLOW_DB_PASSWORD and OPTUNA_DB_PASSWORD in the environment. As root, the server runs
# as the `postgres` user (PostgreSQL refuses to run as root).
set -eu
cmd="${1:?usage: local-postgres.sh start DIR PORT | stop DIR}"
dir="${2:?data directory}"
here=$(cd "$(dirname "$0")" && pwd)

bindir=""
for candidate in "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent)")" \
                 /usr/lib/postgresql/*/bin; do
  if [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/initdb" ]; then bindir="$candidate"; break; fi
done
[ -n "$bindir" ] || { echo "local-postgres: no PostgreSQL binaries (pg_ctl, initdb) found" >&2; exit 3; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    port="${3:?port}"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -s "$dir/PG_VERSION" ]; then
      as_pg "$bindir/initdb" -D "$dir" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        >"$dir.initdb.log" 2>&1
      fresh=1
    fi
    as_pg "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-h 127.0.0.1 -p $port -k $dir" start >/dev/null
    if [ "${fresh:-0}" = 1 ]; then
      # The passwords reach it through the environment (runuser keeps it), not argv.
      export PGHOST="$dir" PGPORT="$port" PGUSER=postgres MLFLOW_DB_PASSWORD OPTUNA_DB_PASSWORD
      as_pg sh "$here/postgres-init.sh" >/dev/null
    fi
    echo "postgresql on 127.0.0.1:$port (data in $dir)"
    ;;
  stop)
    as_pg "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: local-postgres.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
