#!/bin/sh
# Refuses the placeholder secrets of .env.example: every one starts with `change-me`, so a stack
# started from an unedited copy would run with passwords anyone can read in the repository.
#
#   refuse-example-secrets.sh NAME...                    # exit 1 if any NAME holds one
#   refuse-example-secrets.sh NAME... -- COMMAND [ARG]...  # check, then exec COMMAND
#
# NAME is an environment variable: a secret itself, or a URL whose password is checked
# (scheme://user:PASSWORD@host/...). Unset or empty names pass (the callers require theirs).
# One line on stderr per refused variable, naming it, never printing its value. The compose
# entry points that take secrets run this first; so do mlflow-server.sh and postgres-init.sh.
set -eu

fix="replace it with a long random value: python -c 'import secrets; print(secrets.token_urlsafe(24))'"
refused=0
while [ "$#" -gt 0 ]; do
  name=$1
  shift
  [ "$name" = "--" ] && break
  case $name in
    '' | [0-9]* | *[!A-Za-z0-9_]*)
      echo "refuse-example-secrets: not a variable name: '$name'" >&2
      exit 2
      ;;
  esac
  eval "value=\${$name-}"
  what=""
  case $value in
    change-me*) what="$name is the example value from .env.example" ;;
    *://*)
      authority=${value#*://}
      authority=${authority%%/*}
      case $authority in
        *:*@*)
          userinfo=${authority%@*}
          case ${userinfo#*:} in
            change-me*) what="the password in $name is the example value from .env.example" ;;
          esac
          ;;
      esac
      ;;
  esac
  if [ -n "$what" ]; then
    echo "refusing to start: $what; $fix" >&2
    refused=1
  fi
done
[ "$refused" = 0 ] || exit 1
[ "$#" -eq 0 ] || exec "$@"
