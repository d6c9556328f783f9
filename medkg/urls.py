"""URL map: the public API under /v1, health and metrics for operators, the admin for staff."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from medkg.api.v1.documents import DocumentsView
from medkg.api.v1.embed import EmbedView, OpenAIEmbeddingsView
from medkg.api.v1.health import HealthView
from medkg.api.v1.jobs import JobView
from medkg.api.v1.namespaces import NamespaceListView, NamespaceTokenizeView, NamespaceValidateView
from medkg.api.v1.rerank import RerankView
from medkg.api.v1.search import HybridSearchView, SearchView

handler400 = "medkg.api.exceptions.json_bad_request"
handler403 = "medkg.api.exceptions.json_permission_denied"
handler404 = "medkg.api.exceptions.json_not_found"
handler500 = "medkg.api.exceptions.json_server_error"

urlpatterns = [
    path("health", HealthView.as_view(), name="health"),
    path("v1/embed", EmbedView.as_view(), name="embed"),
    path("v1/embeddings", OpenAIEmbeddingsView.as_view(), name="openai_embeddings"),
    path("v1/namespaces", NamespaceListView.as_view(), name="namespace_list"),
    path("v1/namespaces/<str:namespace>/validate", NamespaceValidateView.as_view(), name="namespace_validate"),
    path("v1/namespaces/<str:namespace>/tokenize", NamespaceTokenizeView.as_view(), name="namespace_tokenize"),
    path("v1/namespaces/<str:namespace>/documents", DocumentsView.as_view(), name="documents"),
    path("v1/namespaces/<str:namespace>/search", SearchView.as_view(), name="search"),
    path("v1/search", HybridSearchView.as_view(), name="hybrid_search"),
    path("v1/rerank", RerankView.as_view(), name="rerank"),
    path("v1/jobs/<str:job_id>", JobView.as_view(), name="job"),
    path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("v1/docs", SpectacularRedocView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]
