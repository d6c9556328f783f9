# medkg: two commands do the whole set-up on a fresh machine.
#   make run   - serve on the embedded default (SQLite, in-process model, no broker) at 127.0.0.1:8000
#   make test  - install dev dependencies, make sure PostgreSQL and Redis are up, run the suite on PostgreSQL
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install install-dev run serve test lint format services bench clean

$(VENV)/.installed: requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements-sparse.txt $(VENV)/.installed
	$(PIP) install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py sync_namespaces
	$(PY) manage.py create_tenant demo
	@TOKEN=$$($(PY) manage.py issue_token --tenant demo --scopes embed:read,embed:write --ttl 12h); \
	echo ""; echo "Demo token (tenant demo, 12h):"; echo "  export TOKEN=$$TOKEN"; echo ""; \
	echo "Try:"; \
	echo "  curl -s http://$(HOST):$(PORT)/v1/embed -H \"Authorization: Bearer $$TOKEN\" -H 'Content-Type: application/json' \\"; \
	echo "    -d '{\"tenant_id\": \"demo\", \"namespace\": \"single_vector.minilm.384.v1\", \"texts\": [\"aspirin inhibits platelet aggregation\"]}'"; \
	echo ""
	$(MAKE) --no-print-directory serve

serve:
	MEDKG_PRELOAD_MODELS=1 exec $(VENV)/bin/gunicorn medkg.wsgi:application --bind $(HOST):$(PORT) \
		--worker-class gthread --workers 1 --threads 16 --timeout 120 --access-logfile - \
		--limit-request-line 8190 --limit-request-field_size 32768

services:
	bash tests/services.sh

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core medkg namespaces embeddings operations

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install-dev services
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core medkg namespaces embeddings operations
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(VENV)/bin/pytest $(PYTEST_ARGS)

bench: install-dev
	$(PY) bench/embed_throughput.py

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache .mypy_cache
