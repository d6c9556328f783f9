#!/bin/sh
# One image, several roles. Usage: entrypoint.sh ROLE [ARGS...], ROLE one of the below, or any command.
#   web      gunicorn on $MEDKG_BIND (default 0.0.0.0:8000), settings in deploy/gunicorn.conf.py
#   worker   Celery worker (needs CELERY_BROKER_URL); CELERY_CONCURRENCY processes (default 2)
#   migrate  apply migrations, then sync the namespaces from $MEDKG_CONFIG_DIR (the medkg-migrate Job)
#   wait-for-migrations  wait (up to $MEDKG_MIGRATION_WAIT_SECONDS, default 900) until no migration is pending
#   storage-migrate      bootstrap_faiss for each namespace of $MEDKG_STORAGE_NAMESPACES (medkg-storage-migration)
#   manage   manage.py with the remaining arguments (predeploy_check, bootstrap_faiss, ...)
set -eu
cd "$(dirname "$0")/.."
role="${1:-web}"
if [ $# -gt 0 ]; then shift; fi
case "$role" in
  web)
    exec gunicorn medkg.wsgi:application --config deploy/gunicorn.conf.py "$@"
    ;;
  worker)
    if [ -z "${CELERY_BROKER_URL:-}" ] && [ -z "${CELERY_BROKER_URL_FILE:-}" ]; then
      echo "worker: CELERY_BROKER_URL (or CELERY_BROKER_URL_FILE) must be set" >&2
      exit 2
    fi
    exec celery --app medkg worker --loglevel "${LOG_LEVEL:-INFO}" --concurrency "${CELERY_CONCURRENCY:-2}" \
      --hostname "medkg-worker@%h" "$@"
    ;;
  migrate)
    python manage.py migrate --noinput
    exec python manage.py sync_namespaces "$@"
    ;;
  wait-for-migrations)
    deadline=$(( $(date +%s) + ${MEDKG_MIGRATION_WAIT_SECONDS:-900} ))
    until python manage.py migrate --check >/dev/null 2>&1; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "wait-for-migrations: migrations still pending; is the medkg-migrate Job running?" >&2
        exec python manage.py migrate --check
      fi
      sleep 5
    done
    ;;
  storage-migrate)
    if [ -z "${MEDKG_STORAGE_NAMESPACES:-}" ]; then
      echo "storage-migrate: MEDKG_STORAGE_NAMESPACES is empty" >&2
      exit 2
    fi
    for namespace in $MEDKG_STORAGE_NAMESPACES; do
      python manage.py bootstrap_faiss --namespace "$namespace"
    done
    ;;
  manage)
    exec python manage.py "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
