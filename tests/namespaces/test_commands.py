"""sync_namespaces, create_tenant and issue_token as an operator runs them."""

from __future__ import annotations

import shutil
from io import StringIO

import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, call_command
from rest_framework_simplejwt.tokens import AccessToken

from namespaces.models import Namespace, Tenant

SEED_DIR = settings.MEDKG_CONFIG_DIR / "embedding" / "namespaces"


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def seed_copy(tmp_path):
    target = tmp_path / "namespaces"
    shutil.copytree(SEED_DIR, target)
    return target


@pytest.mark.django_db
def test_sync_is_idempotent_and_reports(seed_copy):
    first = run("sync_namespaces", "--directory", str(seed_copy))
    assert "created: single_vector.minilm.384.v1" in first
    assert "created: single_vector.qwen3.4096.v1" in first

    second = run("sync_namespaces", "--directory", str(seed_copy))
    assert "unchanged: single_vector.minilm.384.v1" in second
    seeded = len(list(seed_copy.glob("*.yaml")))
    assert f"0 created, 0 updated, {seeded} unchanged" in second

    spec_path = seed_copy / "single_vector.minilm.384.v1.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["max_tokens"] = 128
    spec["allowed_tenants"] = ["acme"]
    spec_path.write_text(yaml.safe_dump(spec))
    third = run("sync_namespaces", "--directory", str(seed_copy))
    assert "updated: single_vector.minilm.384.v1" in third
    assert "tenant created: acme" in third
    namespace = Namespace.objects.get(name="single_vector.minilm.384.v1")
    assert namespace.max_tokens == 128
    assert not namespace.allow_all_tenants
    assert [t.slug for t in namespace.allowed_tenants.all()] == ["acme"]


@pytest.mark.django_db
def test_bad_file_changes_nothing_and_names_file_field_reason(seed_copy):
    run("sync_namespaces", "--directory", str(seed_copy))
    good = seed_copy / "single_vector.minilm.384.v1.yaml"
    spec = yaml.safe_load(good.read_text())
    spec["max_tokens"] = 64
    good.write_text(yaml.safe_dump(spec))  # a valid change that must NOT be applied
    bad = seed_copy / "zz-broken.yaml"
    bad.write_text(yaml.safe_dump({**spec, "name": "single_vector.other.384.v1", "batch_size": -3}))

    with pytest.raises(CommandError) as raised:
        run("sync_namespaces", "--directory", str(seed_copy))

    message = str(raised.value)
    assert "zz-broken.yaml" in message and "'batch_size'" in message and "greater than 0" in message
    assert "nothing was changed" in message
    assert Namespace.objects.get(name="single_vector.minilm.384.v1").max_tokens == 256
    assert not Namespace.objects.filter(name="single_vector.other.384.v1").exists()


@pytest.mark.django_db
def test_dry_run_writes_nothing(seed_copy):
    output = run("sync_namespaces", "--directory", str(seed_copy), "--dry-run")
    assert f"dry run: {len(list(seed_copy.glob('*.yaml')))} created" in output
    assert not Namespace.objects.exists()


@pytest.mark.django_db
def test_create_tenant_idempotent_and_validated():
    assert run("create_tenant", "acme").strip() == "created: acme"
    assert run("create_tenant", "acme").strip() == "exists: acme"
    assert Tenant.objects.filter(slug="acme").count() == 1
    with pytest.raises(CommandError, match="invalid tenant"):
        run("create_tenant", "Not A Slug")


@pytest.mark.django_db
def test_issue_token_prints_only_a_token_with_claims():
    run("create_tenant", "acme")
    output = run("issue_token", "--tenant", "acme", "--scopes", "embed:read,embed:write", "--ttl", "2h")
    assert output.count("\n") == 1
    token = AccessToken(output.strip())
    assert token["tenant_id"] == "acme"
    assert token["scopes"] == ["embed:read", "embed:write"]
    lifetime = token["exp"] - token["iat"]
    assert 2 * 3600 - 5 <= lifetime <= 2 * 3600 + 5


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "ghost"], "does not exist"),
        (["--tenant", "acme", "--scopes", "embed:root"], "unknown scopes"),
        (["--tenant", "acme", "--ttl", "forever"], "must look like"),
        (["--tenant", "acme", "--ttl", "0h"], "must look like"),
    ],
)
def test_issue_token_errors(args, message):
    run("create_tenant", "acme")
    with pytest.raises(CommandError, match=message):
        run("issue_token", *args)
