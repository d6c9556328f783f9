"""Namespace endpoints: list what the tenant may use, check texts against a token budget."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.metrics import request_observed
from embeddings.services import TokenCheck, texts_check_budget
from medkg.api.access import namespace_granted
from medkg.api.permissions import check_claimed_tenant, principal_of
from namespaces.api.serializers import (
    NamespaceInfoSerializer,
    NamespaceListOutputSerializer,
    ValidateInputSerializer,
    ValidateOutputSerializer,
)
from namespaces.selectors import namespace_list_for_tenant

_NEAR_BUDGET = 0.9


class NamespaceListView(APIView):
    required_scope = "embed:read"

    @extend_schema(responses={200: NamespaceListOutputSerializer}, operation_id="namespace_list")
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        namespaces = namespace_list_for_tenant(tenant=principal.tenant)
        serializer = NamespaceInfoSerializer(namespaces, many=True, context={"tenant": principal.tenant})
        return Response({"namespaces": serializer.data})


def _warning(check: TokenCheck, budget: int) -> str | None:
    if check.exceeds_budget:
        return (
            f"{check.token_count} tokens exceed the budget of {budget} by {check.token_count - budget}; "
            "embedding refuses it unless options.truncate is set."
        )
    if check.token_count >= _NEAR_BUDGET * budget:
        return f"{check.token_count} tokens are within 10% of the budget of {budget}."
    return None


class NamespaceValidateView(APIView):
    required_scope = "embed:read"

    @extend_schema(
        request=ValidateInputSerializer, responses={200: ValidateOutputSerializer}, operation_id="namespace_validate"
    )
    def post(self, request: Request, namespace: str) -> Response:
        check_claimed_tenant(request)
        payload = ValidateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        found = namespace_granted(request, name=namespace, scope=self.required_scope)
        with request_observed(namespace=found.name, endpoint="namespace_validate"):
            checks = texts_check_budget(namespace=found, texts=payload.validated_data["texts"])
        return Response(
            {
                "namespace": found.name,
                "max_tokens": found.max_tokens,
                "valid": not any(check.exceeds_budget for check in checks),
                "results": [
                    {
                        "text_index": check.text_index,
                        "token_count": check.token_count,
                        "exceeds_budget": check.exceeds_budget,
                        "warning": _warning(check, found.max_tokens),
                    }
                    for check in checks
                ],
            }
        )
