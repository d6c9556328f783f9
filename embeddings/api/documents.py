"""Document endpoints: ingest, delete, job status and search, all within the caller's tenant."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.api.serializers import (
    DocumentsDeleteInputSerializer,
    DocumentsUpsertInputSerializer,
    HybridSearchInputSerializer,
    HybridSearchOutputSerializer,
    JobAcceptedOutputSerializer,
    JobOutputSerializer,
    SearchInputSerializer,
    SearchOutputSerializer,
)
from embeddings.ingestion import IncomingDocument, documents_accept, documents_delete
from embeddings.metrics import request_observed
from embeddings.models import IngestionJob
from embeddings.selectors import HybridPart, documents_search, hybrid_search, job_get_for_tenant
from medkg.api.access import namespace_granted
from medkg.api.permissions import check_claimed_tenant, principal_of


def _accepted(job: IngestionJob, accepted: int) -> Response:
    status_url = f"/v1/jobs/{job.pk}"
    body = {"job_id": job.pk, "status": job.status, "accepted": accepted, "status_url": status_url}
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": status_url})


class DocumentsView(APIView):
    required_scope = "embed:write"

    @extend_schema(
        request=DocumentsUpsertInputSerializer,
        responses={202: JobAcceptedOutputSerializer},
        operation_id="documents_upsert",
    )
    def post(self, request: Request, namespace: str) -> Response:
        check_claimed_tenant(request)
        payload = DocumentsUpsertInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        granted = namespace_granted(request, name=namespace, scope=self.required_scope, routed=False)
        documents = [
            IncomingDocument(id=item["id"], text=item["text"], metadata=item["metadata"])
            for item in payload.validated_data["documents"]
        ]
        with request_observed(namespace=granted.name, endpoint="documents_upsert"):
            job = documents_accept(namespace=granted, tenant=principal_of(request).tenant, documents=documents)
        return _accepted(job, len(documents))

    @extend_schema(
        request=DocumentsDeleteInputSerializer,
        responses={202: JobAcceptedOutputSerializer},
        operation_id="documents_delete",
    )
    def delete(self, request: Request, namespace: str) -> Response:
        check_claimed_tenant(request)
        payload = DocumentsDeleteInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        granted = namespace_granted(request, name=namespace, scope=self.required_scope, routed=False)
        ids = payload.validated_data["ids"]
        with request_observed(namespace=granted.name, endpoint="documents_delete"):
            job = documents_delete(namespace=granted, tenant=principal_of(request).tenant, external_ids=ids)
        return _accepted(job, len(set(ids)))


class JobView(APIView):
    required_scope = "embed:read"

    @extend_schema(responses={200: JobOutputSerializer}, operation_id="job_get")
    def get(self, request: Request, job_id: str) -> Response:
        job = job_get_for_tenant(job_id=job_id, tenant=principal_of(request).tenant)
        return Response(JobOutputSerializer(job).data)


class SearchView(APIView):
    required_scope = "embed:read"

    @extend_schema(request=SearchInputSerializer, responses={200: SearchOutputSerializer}, operation_id="search")
    def post(self, request: Request, namespace: str) -> Response:
        check_claimed_tenant(request)
        payload = SearchInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        granted = namespace_granted(request, name=namespace, scope=self.required_scope)
        with request_observed(namespace=granted.name, endpoint="search"):
            hits = documents_search(
                namespace=granted,
                tenant=principal_of(request).tenant,
                query=data["query"],
                k=data["k"],
                filters=data["filters"],
            )
        return Response(
            {
                "namespace": granted.name,
                "model": granted.model_id,
                "model_version": granted.model_version,
                "hits": [{"id": hit.id, "score": hit.score, "metadata": hit.metadata} for hit in hits],
            }
        )


class HybridSearchView(APIView):
    """Search several namespaces of the caller's tenant at once and fuse the rankings (RRF or min-max)."""

    required_scope = "embed:read"

    @extend_schema(
        request=HybridSearchInputSerializer, responses={200: HybridSearchOutputSerializer}, operation_id="hybrid_search"
    )
    def post(self, request: Request) -> Response:
        check_claimed_tenant(request)
        payload = HybridSearchInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        parts: list[HybridPart] = []
        for item in data["namespaces"]:
            granted = namespace_granted(request, name=item["namespace"], scope=self.required_scope)
            if all(part.namespace.pk != granted.pk for part in parts):  # two names routed to one namespace
                parts.append(HybridPart(namespace=granted, weight=item["weight"]))
        with request_observed(namespace="hybrid", endpoint="hybrid_search"):
            page = hybrid_search(
                tenant=principal_of(request).tenant,
                query=data["query"],
                parts=parts,
                method=data["fusion"],
                k=data["k"],
                offset=data["offset"],
                depth=data["depth"],
                rrf_k=data["rrf_k"],
                filters=data["filters"],
            )
        return Response(
            {
                "fusion": data["fusion"],
                "namespaces": [
                    {
                        "namespace": part.namespace.name,
                        "weight": part.weight,
                        "model": part.namespace.model_id,
                        "model_version": part.namespace.model_version,
                    }
                    for part in parts
                ],
                "offset": page.offset,
                "k": data["k"],
                "next_offset": page.offset + data["k"] if page.has_more else None,
                "hits": [
                    {
                        "id": hit.id,
                        "score": hit.score,
                        "metadata": hit.metadata,
                        "sources": {
                            name: {"rank": source.rank, "score": source.score} for name, source in hit.sources.items()
                        },
                    }
                    for hit in page.hits
                ],
            }
        )
