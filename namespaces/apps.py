from django.apps import AppConfig


class NamespacesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "namespaces"

    def ready(self) -> None:
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from namespaces.models import Namespace, NamespaceAlias, NamespaceStandby, Tenant
        from namespaces.selectors import access_cache_model_changed

        # Any change saved through the ORM in this process empties the access cache at once.
        for model in (Tenant, Namespace, NamespaceAlias, NamespaceStandby):
            uid = model.__name__
            post_save.connect(access_cache_model_changed, sender=model, dispatch_uid=f"access_cache_save_{uid}")
            post_delete.connect(access_cache_model_changed, sender=model, dispatch_uid=f"access_cache_delete_{uid}")
        m2m_changed.connect(
            access_cache_model_changed,
            sender=Namespace.allowed_tenants.through,
            dispatch_uid="access_cache_namespace_tenants",
        )
