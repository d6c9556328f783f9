from django.apps import AppConfig


class EmbeddingsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "embeddings"

    def ready(self) -> None:
        from prometheus_client import REGISTRY

        from embeddings.metrics import StoreStateCollector

        # ready() runs once per process; the guard keeps a second Django setup (tests) from registering twice.
        if not any(isinstance(c, StoreStateCollector) for c in getattr(REGISTRY, "_collector_to_names", {})):
            REGISTRY.register(StoreStateCollector())  # type: ignore[arg-type]
