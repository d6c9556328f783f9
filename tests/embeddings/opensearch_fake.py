"""A real HTTP server on loopback that records requests and answers like OpenSearch, for the OpenSearch store tests.

A real OpenSearch (a JVM cluster with the k-NN plugin's native libraries) cannot run here: it is not on PyPI,
Debian or npm, and nothing else can be fetched. The stores talk through the real opensearch-py client and its real
serialisation to this server (`http.server` in a thread), which records every request and answers in the response
shapes of the OpenSearch REST docs. It does not search: where an answer matters, the test scripts it.
Index templates are kept and returned as GET _index_template documents them: `composed_of` filled in and settings
values as strings (flattened with `flat_settings=true`), so a caller that compares them must normalise as it would
against a real cluster.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import opensearchpy
import pytest

from core.errors import MedkgError

SHARDS_OK = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}


# --- a real HTTP server that records requests and answers like OpenSearch ------------------------------------------
@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON; a list of parsed lines for _bulk (NDJSON); None without a body
    headers: dict[str, str]


@dataclass
class Scripted:
    method: str
    path: str
    status: int
    body: Any
    delay: float = 0.0
    times: int | None = 1  # None: every time


def error_body(status: int, kind: str, reason: str) -> dict[str, Any]:
    """OpenSearch's error response shape."""
    return {
        "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
        "status": status,
    }


def search_answer(hits: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "took": 2,
        "timed_out": False,
        "_shards": SHARDS_OK,
        "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": None, "hits": hits},
        **extra,
    }


@dataclass
class FakeOpenSearch:
    requests: list[Recorded] = field(default_factory=list)
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> the body it was created with
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> the body it was PUT with
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # "index/_id" -> _source
    scripted: list[Scripted] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self) -> None:
                fake.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the timeout test hangs up on purpose: a broken pipe here is expected, not news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, method: str, path: str, status: int, body: Any, *, delay: float = 0.0, times: int | None = 1):
        self.scripted.append(Scripted(method, path, status, body, delay, times))

    def create_index(self, name: str, body: dict[str, Any]) -> None:
        self.indexes[name] = body

    def calls(self) -> list[tuple[str, str]]:
        return [(request.method, request.path) for request in self.requests]

    # --- request handling -------------------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if parts.path.endswith("/_bulk"):
            body: Any = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        else:
            body = json.loads(raw) if raw else None
        request = Recorded(
            handler.command,
            parts.path,
            dict(parse_qsl(parts.query)),
            body,
            {key.lower(): value for key, value in handler.headers.items()},
        )
        with self.lock:
            self.requests.append(request)
            answer = self._scripted(request)
            status, payload, delay = answer if answer else (*self._default(request), 0.0)
        if delay:
            time.sleep(delay)
        if payload is None or request.method == "HEAD":
            data = b""
        else:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _scripted(self, request: Recorded) -> tuple[int, Any, float] | None:
        for entry in self.scripted:
            if entry.method == request.method and entry.path == request.path:
                if entry.times is not None:
                    entry.times -= 1
                    if entry.times == 0:
                        self.scripted.remove(entry)
                return entry.status, entry.body, entry.delay
        return None

    def _default(self, request: Recorded) -> tuple[int, Any]:
        segments = [segment for segment in request.path.split("/") if segment]
        method = request.method
        if not segments and method == "GET":
            return 200, {"name": "fake", "cluster_name": "fake", "version": {"distribution": "opensearch"}}
        if segments == ["_bulk"] and method == "POST":
            return 200, self._bulk(request.body)
        if len(segments) == 2 and segments[0] == "_index_template":
            return self._index_template(request, segments[1])
        name = segments[0]
        missing = (404, error_body(404, "index_not_found_exception", f"no such index [{name}]"))
        if len(segments) == 1:
            if method == "HEAD":
                return (200, None) if name in self.indexes else (404, None)
            if method == "PUT":
                if name in self.indexes:
                    return 400, error_body(400, "resource_already_exists_exception", f"index [{name}] already exists")
                self.indexes[name] = request.body
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}
            if method == "DELETE":
                return (200, {"acknowledged": True}) if self.indexes.pop(name, None) is not None else missing
        if name not in self.indexes:
            return missing
        operation = segments[1]
        if operation == "_mapping":
            return 200, {name: {"mappings": self.indexes[name]["mappings"]}}
        if operation == "_search":
            return 200, search_answer([])
        if operation == "_count":
            return 200, {"count": 0, "_shards": SHARDS_OK}
        if operation == "_delete_by_query":
            return 200, {"took": 1, "timed_out": False, "total": 0, "deleted": 0, "failures": []}
        return 400, error_body(400, "illegal_argument_exception", f"unexpected request {method} {request.path}")

    def _index_template(self, request: Recorded, name: str) -> tuple[int, Any]:
        """PUT, GET and DELETE _index_template/<name>, answered as the index template docs show them."""
        missing = error_body(404, "resource_not_found_exception", f"index template matching [{name}] not found")
        if request.method == "PUT":
            self.templates[name] = request.body
            return 200, {"acknowledged": True}
        if request.method == "DELETE":
            return (200, {"acknowledged": True}) if self.templates.pop(name, None) is not None else (404, missing)
        if request.method != "GET" or name not in self.templates:
            return 404, missing
        stored = json.loads(json.dumps(self.templates[name]))
        stored.setdefault("composed_of", [])
        template = stored.get("template") or {}
        if "settings" in template:
            flat = request.query.get("flat_settings") == "true"
            template["settings"] = settings_as_returned(template["settings"], flat=flat)
        return 200, {"index_templates": [{"name": name, "index_template": stored}]}

    def _bulk(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        items = []
        position = 0
        while position < len(lines):
            op_type, meta = next(iter(lines[position].items()))
            key = f"{meta['_index']}/{meta['_id']}"
            base = {"_index": meta["_index"], "_id": meta["_id"], "_shards": {"total": 1, "successful": 1, "failed": 0}}
            if op_type == "delete":
                found = self.documents.pop(key, None) is not None
                result = {"result": "deleted", "status": 200} if found else {"result": "not_found", "status": 404}
                position += 1
            else:
                existed = key in self.documents
                self.documents[key] = lines[position + 1]
                result = {"result": "updated", "status": 200} if existed else {"result": "created", "status": 201}
                position += 2
            items.append({op_type: {**base, "_version": 1, **result}})
        return {"took": 3, "errors": False, "items": items}


def settings_as_returned(settings: dict[str, Any], *, flat: bool, prefix: str = "") -> dict[str, Any]:
    """Index settings as OpenSearch returns them: every value a string, keys dotted when `flat`."""
    result: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and flat:
            result.update(settings_as_returned(value, flat=True, prefix=f"{name}."))
        elif isinstance(value, dict):
            result[key] = settings_as_returned(value, flat=False)
        else:
            result[name if flat else key] = json.dumps(value) if isinstance(value, bool) else str(value)
    return result


def serving(settings: Any) -> Iterator[FakeOpenSearch]:
    """A running fake, with the settings of the OpenSearch stores pointing at it (the `fake` fixture)."""
    server = FakeOpenSearch()
    server.start()
    settings.OPENSEARCH_URL = server.url
    settings.OPENSEARCH_INDEX_PREFIX = "medkg-"
    settings.OPENSEARCH_USERNAME = ""
    settings.OPENSEARCH_PASSWORD = ""
    settings.OPENSEARCH_TIMEOUT_SECONDS = 5
    yield server
    server.stop()


def assert_project_error(error: BaseException) -> None:
    """The store's errors are the project's; the client's exception is only the cause, for the logs."""
    assert isinstance(error, MedkgError)
    assert not isinstance(error, opensearchpy.exceptions.OpenSearchException)
    assert type(error).__module__ == "core.errors"


# Integration tests against a real cluster: marked `opensearch`, and skipped with this reason where none is set.
requires_opensearch = pytest.mark.skipif(
    not os.environ.get("OPENSEARCH_URL"), reason="OPENSEARCH_URL is not set: no OpenSearch server here"
)


def on_live_cluster(settings: Any) -> str:
    """Point the stores at the real cluster of OPENSEARCH_URL, with an index prefix of this test's own (returned)."""
    settings.OPENSEARCH_URL = os.environ["OPENSEARCH_URL"]
    settings.OPENSEARCH_INDEX_PREFIX = f"medkg-test-{uuid.uuid4().hex[:8]}-"
    return str(settings.OPENSEARCH_INDEX_PREFIX)
