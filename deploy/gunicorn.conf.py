"""gunicorn settings of the web role (deploy/entrypoint.sh web), read from the environment.

One worker process with threads: the model is loaded once per process, and Prometheus counters
live in the process that serves (no multiprocess mode), so scale out with replicas, not workers.
"""

import os

bind = os.environ.get("MEDKG_BIND", "0.0.0.0:8000")
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds (45 s): finish requests in flight first.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Above medkg's own limits (MEDKG_MAX_URI_BYTES, MEDKG_MAX_HEADER_BYTES), so those are answered as JSON by
# medkg.http_limits rather than as gunicorn's HTML pages; 8190 is gunicorn's ceiling for the request line.
limit_request_line = 8190
limit_request_field_size = 32768
accesslog = "-"
errorlog = "-"
# Heartbeat files on tmpfs: a container's overlay filesystem can stall them and get workers killed.
_SHARED_MEMORY = "/dev/shm"  # noqa: S108 - gunicorn's own advice for containers, not a temporary file of ours
worker_tmp_dir = _SHARED_MEMORY if os.path.isdir(_SHARED_MEMORY) else None
# The app loads its model in the worker (medkg.wsgi), after the fork.
preload_app = False
