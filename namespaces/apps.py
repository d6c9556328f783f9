from django.apps import AppConfig


class NamespacesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "namespaces"
