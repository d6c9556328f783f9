"""WSGI entry point (gunicorn medkg.wsgi). Optionally loads the default model before the first request."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medkg.settings")
from medkg.http_limits import HttpLimits

application = HttpLimits(get_wsgi_application())

from medkg.startup import preload_default_provider  # noqa: E402 - needs the app registry

preload_default_provider()
