"""What the OpenSearch stores share: the client, index names, document ids, error mapping, filters, and
`TenantIndex`, one namespace's index partitioned by tenant (create and check, bulk writes, search plumbing, count,
labels, drop, stats, readiness).

The dense k-NN store (embeddings.stores.opensearch) and the sparse rank_features store
(embeddings.stores.opensearch_sparse) differ only in their indexed field and their query; everything about
tenants, ids, refresh, paging and failures is here, once.

Design choices, each for a reason:
- Document `_id` = "<tenant>:<label>": a write or delete in the name of one tenant can never touch another tenant's
  document, even with a wrong label.
- `metadata` is a `flat_object`: tenants choose their own metadata keys and value types. As an `object`, each new key
  would add a field to the shared mapping (mapping explosion, and the total-fields limit would start rejecting
  documents) and the first tenant to send `"year": 2020` would fix the type, so another tenant's `"year": "n/a"`
  would be rejected: one tenant's data could break another's ingestion. A flat_object gives exact-match filters on
  dotted paths (`metadata.a.b`), which is what search filters need; values compare as their JSON text.
- Writes use `refresh=wait_for`: the call returns once the change is visible to search (read-after-write for the
  ingestion → search path), without forcing a refresh per call as `refresh=true` would (a refresh per bulk request
  makes many tiny segments: slower searches and costly merges).
- The mapping is `dynamic: strict` and records the namespace in `_meta`; an existing index is checked once per store
  (its field, its namespace, then the store's own checks) so two namespaces can never share an index.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import numbers
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TypeVar

from django.conf import settings
from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import ConnectionError as ClientConnectionError
from opensearchpy.exceptions import ConnectionTimeout, NotFoundError, OpenSearchException, TransportError
from opensearchpy.exceptions import ImproperlyConfigured as ClientImproperlyConfigured

from core.errors import BackendError, BackendUnavailable, InvalidRequest, MedkgError
from core.logging import log_event
from embeddings.stores.base import SearchHit, StoreStats

logger = logging.getLogger(__name__)
T = TypeVar("T")

STORE = "opensearch"
MAX_K = 10_000  # index.max_result_window, and the knn query's own limit on k
MAX_ALLOWED_LABELS = 65_536  # index.max_terms_count: the most values one `terms` query may carry
PAGE_SIZE = 1_000  # labels() and stats() page through the tenant this many at a time
BULK_CHUNK_DOCUMENTS = 500
BULK_CHUNK_BYTES = 8 * 1024 * 1024  # below the 10 MiB request limit of the smaller managed OpenSearch domains
BULK_RETRIES = 3  # documents rejected with 429 (queue full) are retried with backoff before we give up
# Bulk with wait_for and delete-by-query legitimately outlast a search; the search timeout would abort them.
WRITE_TIMEOUT_FLOOR_SECONDS = 60
DROP_TIMEOUT_SECONDS = 300
_UNAVAILABLE_STATUSES = {429, 502, 503, 504}  # overloaded or no node to answer: retry later, not a bad answer
_INDEX_NAME_INVALID = re.compile(r"[^a-z0-9_-]+")


# --- names, ids and filters ----------------------------------------------------------------------------------------
def index_name(namespace: str, prefix: str | None = None) -> str:
    """The index of `namespace`: OPENSEARCH_INDEX_PREFIX + the namespace, lowercased, dots and other characters
    that index names may not hold replaced by '-'. (Two names that sanitise alike are told apart by `_meta`.)"""
    prefix = settings.OPENSEARCH_INDEX_PREFIX if prefix is None else prefix
    name = _INDEX_NAME_INVALID.sub("-", f"{prefix}{namespace}".lower())
    if not name or name[0] in "-_" or len(name.encode()) > 255:
        raise BackendUnavailable(
            f"OPENSEARCH_INDEX_PREFIX={prefix!r} and namespace {namespace!r} give the invalid index name {name!r}: "
            "an index name may not start with '-' or '_' nor exceed 255 bytes.",
            details={"namespace": namespace, "store": STORE, "index": name},
        )
    return name


def document_id(tenant: str, label: int) -> str:
    return f"{tenant}:{int(label)}"


def _filter_text(key: str, value: Any) -> str:
    """A filter value as flat_object indexes it: strings as they are, numbers and booleans as their JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return json.dumps(value)
    raise InvalidRequest(
        f"filters.{key} must be a string, a number, a boolean or a list of them.",
        details={"filter": key},
    )


def metadata_clause(key: str, value: Any) -> dict[str, Any]:
    """An exact-match clause on metadata `key` (dots address nested keys); a list matches any of its values."""
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith(".") or ".." in key:
        raise InvalidRequest(f"Filter key {key!r} is not a metadata key.", details={"filter": str(key)})
    field = f"metadata.{key}"
    if isinstance(value, list | tuple):
        return {"terms": {field: [_filter_text(key, item) for item in value]}}
    return {"term": {field: _filter_text(key, value)}}


def filter_clauses(
    *, tenant: str, allowed_labels: Sequence[int] | None = None, filters: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The tenant term, the allowed labels and the metadata filters: the `filter` every search runs inside."""
    clauses: list[dict[str, Any]] = [{"term": {"tenant": tenant}}]
    if allowed_labels is not None:
        clauses.append({"terms": {"label": sorted({int(label) for label in allowed_labels})}})
    clauses.extend(metadata_clause(key, value) for key, value in sorted((filters or {}).items()))
    return clauses


# --- client --------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _client_for(url: str, username: str, password: str, verify_certs: bool, ca_certs: str, timeout: int) -> OpenSearch:
    """One thread-safe client (urllib3 connection pool) per configuration, shared by every namespace's store."""
    return OpenSearch(
        hosts=[url],  # user:password@ and https:// in the URL are honoured by the client
        http_auth=(username, password) if username else None,
        verify_certs=verify_certs,
        ca_certs=ca_certs or None,
        timeout=timeout,
        max_retries=2,  # on connection errors and 502/503/504; a timeout is not retried (the work may be running)
        retry_on_timeout=False,
    )


def opensearch_client() -> OpenSearch:
    if not settings.OPENSEARCH_URL:
        raise BackendUnavailable(
            "OPENSEARCH_URL is not set: the OpenSearch store has no server to talk to.",
            details={"store": STORE, "unset_variables": ["OPENSEARCH_URL"]},
        )
    try:
        return _client_for(
            settings.OPENSEARCH_URL,
            settings.OPENSEARCH_USERNAME,
            settings.OPENSEARCH_PASSWORD,
            settings.OPENSEARCH_VERIFY_CERTS,
            settings.OPENSEARCH_CA_CERTS,
            settings.OPENSEARCH_TIMEOUT_SECONDS,
        )
    except (ClientImproperlyConfigured, ValueError) as error:
        raise BackendUnavailable(
            f"The OpenSearch client cannot be built from OPENSEARCH_URL and its settings: {error}",
            details={"store": STORE},
        ) from error


# --- errors --------------------------------------------------------------------------------------------------------
def _root_reason(info: Any) -> str:
    """The first root cause's reason of an OpenSearch error body, if there is one."""
    if not isinstance(info, dict):
        return ""
    error = info.get("error")
    if isinstance(error, dict):
        causes = error.get("root_cause") or [error]
        first = causes[0] if isinstance(causes, list) and causes else error
        return str(first.get("reason") or error.get("reason") or "") if isinstance(first, dict) else ""
    return str(error or "")


def translate_error(error: Exception, *, namespace: str, operation: str) -> MedkgError:
    """A client or transport exception as the project's error: 503 when OpenSearch cannot answer now, 502 when it
    answered with a refusal or something unusable."""
    details: dict[str, Any] = {"namespace": namespace, "store": STORE, "operation": operation}
    if isinstance(error, ClientConnectionError):  # also SSLError and ConnectionTimeout
        what = "timed out" if isinstance(error, ConnectionTimeout) else "is unreachable"
        return BackendUnavailable(f"OpenSearch {what} ({operation} on namespace {namespace}).", details=details)
    if isinstance(error, TransportError):
        status = error.status_code
        details["status"] = status
        details["error"] = str(error.error)[:200]
        reason = _root_reason(error.info)
        if reason:
            details["reason"] = reason[:500]
        if status in _UNAVAILABLE_STATUSES:
            return BackendUnavailable(
                f"OpenSearch cannot serve {operation} on namespace {namespace} now (HTTP {status}).", details=details
            )
        if status in (401, 403):
            return BackendError(
                f"OpenSearch refused the credentials for {operation} (HTTP {status}): "
                "check OPENSEARCH_USERNAME / OPENSEARCH_PASSWORD and the user's permissions.",
                details=details,
            )
        return BackendError(
            f"OpenSearch rejected {operation} on namespace {namespace}: HTTP {status} {details['error']}.",
            details=details,
        )
    details["exception"] = type(error).__name__
    return BackendError(f"The OpenSearch client failed during {operation} on namespace {namespace}.", details=details)


@contextmanager
def translated_errors(*, namespace: str, operation: str) -> Iterator[None]:
    """Client exceptions inside the block leave it as the project's errors (logged once, here)."""
    try:
        yield
    except MedkgError:
        raise
    except (OpenSearchException, ClientImproperlyConfigured) as error:
        translated = translate_error(error, namespace=namespace, operation=operation)
        log_event(
            logger,
            "opensearch_request_failed",
            logging.WARNING,
            namespace=namespace,
            operation=operation,
            code=translated.code,
            error=str(error)[:500],
        )
        raise translated from error


def _index_missing(error: NotFoundError) -> bool:
    return error.error == "index_not_found_exception"


def _tenant_buckets(answer: dict[str, Any]) -> tuple[list[StoreStats], dict[str, Any] | None]:
    """One page of the composite aggregation over tenants, and the key to ask for the next."""
    aggregation = answer["aggregations"]["tenants"]
    stats = [
        StoreStats(tenant=str(bucket["key"]["tenant"]), vectors=int(bucket["doc_count"]), tombstones=0, bytes_on_disk=0)
        for bucket in aggregation["buckets"]
    ]
    return stats, aggregation.get("after_key")


class Indexed(Protocol):
    """What a stored item brings besides its field value (StoredVector and SparseItem both do)."""

    @property
    def label(self) -> int: ...
    @property
    def external_id(self) -> str: ...
    @property
    def metadata(self) -> dict[str, Any]: ...


# --- one namespace's index -----------------------------------------------------------------------------------------
class TenantIndex:
    """One namespace's index, every tenant's documents in it; a store holds one and adds its field and its query.

    `index_body` gives the settings and mappings the index is created with; `field` / `field_type` name the field
    the index must have; `check_field` runs the store's own checks on an existing index's field mapping (after the
    namespace check) and may raise the project's errors or KeyError/TypeError/ValueError for a foreign index.
    """

    def __init__(
        self,
        *,
        namespace: str,
        field: str,
        field_type: str,
        index_body: Callable[[], dict[str, Any]],
        check_field: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.field = field
        self.field_type = field_type
        self._index_body = index_body
        self._check_field = check_field
        self._lock = threading.Lock()
        self._checked_index = ""  # the index whose mapping was found right for this namespace

    @property
    def index(self) -> str:
        return index_name(self.namespace)

    # --- plumbing -------------------------------------------------------------------------------------------------
    def translated(self, operation: str) -> AbstractContextManager[None]:
        return translated_errors(namespace=self.namespace, operation=operation)

    def read(self, operation: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One read call with the errors translated; None when the index does not exist (nothing stored yet)."""
        with self.translated(operation):
            try:
                return method(**kwargs)
            except NotFoundError as error:
                if _index_missing(error):
                    return None
                raise

    @staticmethod
    def write_timeout() -> int:
        return max(settings.OPENSEARCH_TIMEOUT_SECONDS, WRITE_TIMEOUT_FLOOR_SECONDS)

    @staticmethod
    def check_tenant(tenant: str) -> None:
        if not isinstance(tenant, str) or not tenant:
            raise InvalidRequest("A tenant is required for every store operation.", details={"store": STORE})

    def prepare(self, client: OpenSearch, *, create: bool) -> bool:
        """Whether the index exists, creating it when `create`; its mapping is checked once per store and index.

        Writes always ask whether the index exists (a cheap HEAD): a bulk request to a missing index would
        auto-create it with a dynamic mapping, without the store's field.
        """
        index = self.index
        if not create and self._checked_index == index:
            return True
        with self._lock, self.translated("create_index" if create else "open_index"):
            if not client.indices.exists(index=index):
                if not create:
                    return False
                self._create(client, index)
            if self._checked_index != index:
                self._check_mapping(client, index)
                self._checked_index = index
        return True

    def _create(self, client: OpenSearch, index: str) -> None:
        try:
            client.indices.create(index=index, body=self._index_body(), request_timeout=self.write_timeout())
        except TransportError as error:
            # Another worker created it between our HEAD and PUT: its mapping is checked next.
            if error.error != "resource_already_exists_exception":
                raise
            return
        log_event(logger, "opensearch_index_created", namespace=self.namespace, index=index, field=self.field)

    def _foreign_index(self, index: str) -> BackendError:
        return BackendError(
            f"Index {index} exists but has no {self.field_type} field {self.field!r}: it was not created by medkg.",
            details={"namespace": self.namespace, "store": STORE, "index": index},
        )

    def _check_mapping(self, client: OpenSearch, index: str) -> None:
        response = client.indices.get_mapping(index=index)
        try:
            mappings = next(iter(response.values()))["mappings"]
            meta = mappings.get("_meta") or {}
            field = mappings["properties"][self.field]
            if field["type"] != self.field_type:
                raise ValueError(field["type"])
        except (AttributeError, KeyError, StopIteration, TypeError, ValueError) as error:
            raise self._foreign_index(index) from error
        if meta.get("namespace") != self.namespace:
            raise BackendError(
                f"Index {index} holds namespace {meta.get('namespace')!r}, not {self.namespace!r}: "
                "set another OPENSEARCH_INDEX_PREFIX or rename a namespace.",
                details={"namespace": self.namespace, "store": STORE, "index": index},
            )
        if self._check_field is not None:
            try:
                self._check_field(index, field)
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                raise self._foreign_index(index) from error

    def bulk(self, client: OpenSearch, operation: str, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send `actions` through the bulk helper; the per-document results of those that succeeded.

        A delete of an unknown id (404) is not a failure. Any other failed document fails the call: the caller's
        job records the error and retries, and re-sending the same ids is idempotent.
        """
        done: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        with self.translated(operation):
            for ok, result in helpers.streaming_bulk(
                client,
                actions,
                chunk_size=BULK_CHUNK_DOCUMENTS,
                max_chunk_bytes=BULK_CHUNK_BYTES,
                raise_on_error=False,
                max_retries=BULK_RETRIES,
                initial_backoff=1,
                max_backoff=8,
                refresh="wait_for",
                request_timeout=self.write_timeout(),
            ):
                op_type, item = next(iter(result.items()))
                if ok:
                    done.append(item)
                elif not (op_type == "delete" and item.get("status") == 404):
                    failed.append(item)
        if failed:
            raise self._bulk_failure(operation, failed)
        return done

    def _bulk_failure(self, operation: str, failed: list[dict[str, Any]]) -> MedkgError:
        first = failed[0]
        cause = first.get("error")
        reason = cause.get("reason", "") if isinstance(cause, dict) else str(cause or "")
        details = {
            "namespace": self.namespace,
            "store": STORE,
            "operation": operation,
            "failed": len(failed),
            "ids": [str(item.get("_id")) for item in failed[:10]],
            "status": first.get("status"),
            "error": cause.get("type", "") if isinstance(cause, dict) else "",
            "reason": str(reason)[:500],
        }
        log_event(logger, "opensearch_bulk_failed", logging.WARNING, **details)
        message = f"OpenSearch failed {len(failed)} document(s) of {operation} on namespace {self.namespace}"
        if all(item.get("status") in _UNAVAILABLE_STATUSES for item in failed):
            return BackendUnavailable(f"{message}: it is overloaded, retry later.", details=details)
        return BackendError(f"{message}: {details['error'] or 'error'} {details['reason']}".rstrip(), details=details)

    def parse(self, operation: str, response: Any, parse: Callable[[Any], T]) -> T:
        """Read an answer with `parse`. An answer from only some shards is incomplete: refused rather than returning
        fewer hits. An answer not of the documented shape is a BackendError, never a KeyError."""
        details: dict[str, Any] = {"namespace": self.namespace, "store": STORE, "operation": operation}
        try:
            shards = response.get("_shards") or {}
            if shards.get("failed"):
                details.update(shards_failed=shards.get("failed"), shards_total=shards.get("total"))
                raise BackendUnavailable(
                    f"OpenSearch answered {operation} on namespace {self.namespace} from only some shards.",
                    details=details,
                )
            return parse(response)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as error:
            raise BackendError(
                f"OpenSearch answered {operation} on namespace {self.namespace} with an unexpected body.",
                details=details,
            ) from error

    # --- the operations both stores share -------------------------------------------------------------------------
    def upsert(self, *, tenant: str, items: Sequence[Indexed], values: Sequence[Any]) -> int:
        """Index `items` of `tenant`, each with its field value (already checked by the store)."""
        client = opensearch_client()
        self.prepare(client, create=True)
        index = self.index
        actions = [
            {
                "_op_type": "index",
                "_index": index,
                "_id": document_id(tenant, item.label),
                "_source": {
                    "tenant": tenant,
                    "label": int(item.label),
                    "external_id": item.external_id,
                    "metadata": item.metadata or {},
                    self.field: value,
                },
            }
            for item, value in zip(items, values, strict=True)
        ]
        return len(self.bulk(client, "upsert", actions))

    def delete(self, *, tenant: str, labels: Sequence[int]) -> int:
        self.check_tenant(tenant)
        if not labels:
            return 0
        client = opensearch_client()
        if not self.prepare(client, create=False):
            return 0
        index = self.index
        ids = sorted({document_id(tenant, label) for label in labels})
        actions = [{"_op_type": "delete", "_index": index, "_id": doc_id} for doc_id in ids]
        return sum(1 for item in self.bulk(client, "delete", actions) if item.get("result") == "deleted")

    @staticmethod
    def check_search(*, k: Any, allowed_labels: Sequence[int] | None) -> int:
        """k as an int in [1, MAX_K], and at most MAX_ALLOWED_LABELS allowed labels; InvalidRequest otherwise."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= MAX_K:
            raise InvalidRequest(f"k must be an integer from 1 to {MAX_K}.", details={"k": str(k)})
        if allowed_labels is not None and len(allowed_labels) > MAX_ALLOWED_LABELS:
            raise InvalidRequest(
                f"At most {MAX_ALLOWED_LABELS} allowed labels fit one OpenSearch query; narrow the filters.",
                details={"allowed_labels": len(allowed_labels)},
            )
        return int(k)

    def search(
        self,
        *,
        body: dict[str, Any],
        allowed_labels: Sequence[int] | None,
        filters: dict[str, Any] | None,
        hits: Callable[[Any], list[SearchHit]],
        matches_nothing: bool = False,
    ) -> list[SearchHit]:
        """Run a search `body` the store built (its arguments already checked) and read it with `hits`.
        Nothing is sent when the query cannot match: no allowed labels, a filter on "any of no values", or
        `matches_nothing` (the store's own reason)."""
        if matches_nothing or (allowed_labels is not None and not allowed_labels):
            return []
        if any(isinstance(value, list | tuple) and not value for value in (filters or {}).values()):
            return []
        client = opensearch_client()
        if not self.prepare(client, create=False):
            return []
        response = self.read("search", client.search, index=self.index, body=body)
        if response is None:
            return []
        return self.parse("search", response, hits)

    def count(self, *, tenant: str) -> int:
        self.check_tenant(tenant)
        client = opensearch_client()
        response = self.read("count", client.count, index=self.index, body={"query": {"term": {"tenant": tenant}}})
        if response is None:
            return 0
        return self.parse("count", response, lambda answer: int(answer["count"]))

    def labels(self, *, tenant: str) -> set[int]:
        """Every label of the tenant, paged with search_after on the label (unique within a tenant)."""
        self.check_tenant(tenant)
        client = opensearch_client()
        found: set[int] = set()
        after: int | None = None
        while True:
            body: dict[str, Any] = {
                "size": PAGE_SIZE,
                "_source": False,
                "track_total_hits": False,
                "query": {"term": {"tenant": tenant}},
                "sort": [{"label": "asc"}],
            }
            if after is not None:
                body["search_after"] = [after]
            response = self.read("labels", client.search, index=self.index, body=body)
            if response is None:
                return found
            page = self.parse(
                "labels", response, lambda answer: [int(hit["sort"][0]) for hit in answer["hits"]["hits"]]
            )
            found.update(page)
            if len(page) < PAGE_SIZE:
                return found
            after = page[-1]

    def drop(self, *, tenant: str | None = None) -> None:
        client = opensearch_client()
        index = self.index
        if tenant is None:
            with self.translated("drop"):
                try:
                    client.indices.delete(index=index, request_timeout=DROP_TIMEOUT_SECONDS)
                except NotFoundError as error:
                    if not _index_missing(error):
                        raise
            self._checked_index = ""
            log_event(logger, "opensearch_index_dropped", namespace=self.namespace, index=index)
            return
        self.check_tenant(tenant)
        response = self.read(
            "drop",
            client.delete_by_query,
            index=index,
            body={"query": {"term": {"tenant": tenant}}},
            refresh=True,
            conflicts="proceed",
            request_timeout=DROP_TIMEOUT_SECONDS,
        )
        failures, deleted = self.parse(
            "drop", response or {}, lambda a: (len(a.get("failures") or []), a.get("deleted"))
        )
        if failures:
            raise BackendError(
                f"OpenSearch could not delete every document of the tenant in namespace {self.namespace}.",
                details={"namespace": self.namespace, "store": STORE, "failures": failures},
            )
        log_event(logger, "opensearch_tenant_dropped", namespace=self.namespace, index=index, deleted=deleted)

    def stats(self) -> list[StoreStats]:
        """Documents per tenant (a composite aggregation, paged). Deleted-document counts and disk size belong to
        the shared index, not to a tenant, so they are not split across tenants: both read 0 here."""
        client = opensearch_client()
        result: list[StoreStats] = []
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {"size": PAGE_SIZE, "sources": [{"tenant": {"terms": {"field": "tenant"}}}]}
            if after is not None:
                composite["after"] = after
            body = {"size": 0, "track_total_hits": False, "aggs": {"tenants": {"composite": composite}}}
            response = self.read("stats", client.search, index=self.index, body=body)
            if response is None:
                return result
            page, after = self.parse("stats", response, _tenant_buckets)
            result.extend(page)
            if not page or after is None:
                return result

    def readiness(self) -> tuple[bool, str]:
        """Pings the cluster (GET /): ready when it answers, else why not."""
        try:
            client = opensearch_client()
            with self.translated("readiness"):
                client.info()
        except MedkgError as error:
            return False, error.message
        return True, ""


class TenantIndexStore:
    """What an OpenSearch store only passes on to its TenantIndex; mixed in before VectorStore or SparseStore."""

    _index: TenantIndex

    @property
    def index(self) -> str:
        return self._index.index

    def delete(self, *, tenant: str, labels: Sequence[int]) -> int:
        return self._index.delete(tenant=tenant, labels=labels)

    def count(self, *, tenant: str) -> int:
        return self._index.count(tenant=tenant)

    def labels(self, *, tenant: str) -> set[int]:
        return self._index.labels(tenant=tenant)

    def drop(self, *, tenant: str | None = None) -> None:
        self._index.drop(tenant=tenant)

    def stats(self) -> list[StoreStats]:
        return self._index.stats()

    def readiness(self) -> tuple[bool, str]:
        return self._index.readiness()
