#!/bin/sh
# Random secrets for deploy/compose.yaml in deploy/secrets/ (git-ignored, docker-ignored). Keeps existing ones.
#   deploy/make-secrets.sh [DIRECTORY]
set -eu
directory="${1:-$(dirname "$0")/secrets}"
mkdir -p "$directory"
chmod 700 "$directory"
random() { LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$1"; }
# The folder is private to its owner; the files are readable by all, since Compose bind-mounts them as they are
# and the containers read them as their own users (medkg 10001, postgres, grafana).
write() {  # write NAME VALUE, unless NAME exists
  if [ ! -s "$directory/$1" ]; then
    (umask 022 && printf '%s' "$2" >"$directory/$1")
    echo "created $directory/$1"
  fi
}
write secret_key "$(random 64)"
write postgres_password "$(random 32)"
write database_url "postgres://medkg:$(cat "$directory/postgres_password")@postgres:5432/medkg"
write grafana_admin_password "$(random 24)"
