"""The operators' admin in a real browser: headless Chromium (Debian's) driven by Playwright.

Logs in, filters the cross-tenant audit to one tenant (with its counts per tenant), opens an incident, and
keeps screenshots under test-artifacts/ (git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from operations.models import DrillVerdict, RollbackDrill
from operations.services import incident_open
from tests.conftest import RESTRICTED_NAMESPACE
from tests.servers import REPO_ROOT

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture
def audit_trail(transactional_db, api, restricted_namespace, outsider, token_a_write):
    """Refusals by two tenants, through the real API: tenant B three times, tenant A once."""
    for _ in range(3):
        api.post("/v1/embed", {"namespace": RESTRICTED_NAMESPACE, "texts": ["x"]}, token=outsider["token"])
    api.post(
        "/v1/embed", {"tenant_id": "tenant-b", "namespace": RESTRICTED_NAMESPACE, "texts": ["x"]}, token=token_a_write
    )


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium missing: apt-get install chromium")
def test_operator_filters_the_audit_to_one_tenant_and_opens_an_incident(live_server, audit_trail, monkeypatch):
    from django.utils import timezone
    from playwright.sync_api import sync_playwright

    User.objects.create_superuser("ops", "ops@example.org", "pw-ops-123")
    incident = incident_open(
        trigger="gpu_failure_rate",
        severity="critical",
        namespace="single_vector.qwen3.4096.v1",
        title="vLLM unreachable",
        measurements={"gpu_failure_rate": "0.31 > 0.05"},
    )
    RollbackDrill.objects.create(
        environment="staging",
        namespace="single_vector.qwen3.4096.v1",
        target_namespace="single_vector.minilm.384.v1",
        started_at=timezone.now(),
        rto_seconds=1.7,
        full_seconds=2.4,
        restore_seconds=0.5,
        verdict=DrillVerdict.PASSED,
        passed=True,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{live_server.url}/admin/login/?next=/admin/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "pw-ops-123")
            page.click("input[type=submit]")
            page.wait_for_selector("#site-name")

            page.goto(f"{live_server.url}/admin/namespaces/accessauditevent/")
            counts = page.inner_text("#counts-per-tenant")
            assert "tenant-b" in counts and "tenant-a" in counts
            page.click("#changelist-filter a:text-is('tenant-b')")
            page.wait_for_url("**token_tenant=tenant-b**")
            rows = page.locator("#result_list tbody tr")
            assert rows.count() == 3
            assert all("tenant-b" in rows.nth(i).inner_text() for i in range(3))
            filtered_counts = page.inner_text("#counts-per-tenant")
            assert "tenant-b\t3" in filtered_counts and "tenant-a" not in filtered_counts
            page.screenshot(path=str(ARTIFACTS / "admin-audit-tenant-b.png"), full_page=True)

            page.goto(f"{live_server.url}/admin/operations/rollbackdrill/")
            assert "1.70 / 300 s" in page.inner_text("#result_list")

            page.goto(f"{live_server.url}/admin/operations/incident/")
            page.click(f"#result_list a:text-is('{incident.pk}')")
            page.wait_for_url(f"**/admin/operations/incident/{incident.pk}/change/**")
            body = page.input_value("#id_body")
            assert f"# Incident {incident.pk}: vLLM unreachable" in body and "Post-incident review" in body
            assert "gpu_failure_rate" in page.inner_text(".field-trigger")  # evidence: shown, not editable
            assert page.locator("#id_trigger").count() == 0
            page.screenshot(path=str(ARTIFACTS / "admin-incident.png"), full_page=True)
        finally:
            browser.close()

    assert (ARTIFACTS / "admin-incident.png").stat().st_size > 10_000


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium missing: apt-get install chromium")
def test_operator_watches_a_migration_at_its_gate_and_aborts_it(
    live_server, synced, tenant_a, settings, tmp_path, monkeypatch
):
    """A real migration (MiniLM v1 -> an identical v2, backfilled and gated on a SciFact subset) waits before its
    cutover; the operator reads its progress and gate figures in the admin and aborts it there: v1 serves as before."""
    from playwright.sync_api import sync_playwright

    from namespaces.selectors import alias_resolve
    from operations.lifecycle import migration_run
    from operations.models import MigrationState, MigrationStep, NamespaceMigration
    from tests.operations.test_namespace_migration import ALIAS, V1, accept, new_version, plan, scifact_subset, texts

    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"
    v1, v2 = synced[V1], new_version(synced)
    accept(v1, tenant_a, texts(12))
    migration = plan(v1, v2, scifact_subset(tmp_path / "scifact-tiny", queries=10, others=20))
    migration = migration_run(migration=migration, until=MigrationStep.GATE)
    assert (migration.state, migration.step) == (MigrationState.WAITING, MigrationStep.CUTOVER)
    User.objects.create_superuser("ops", "ops@example.org", "pw-ops-123")
    ARTIFACTS.mkdir(exist_ok=True)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{live_server.url}/admin/login/?next=/admin/operations/namespacemigration/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "pw-ops-123")
            page.click("input[type=submit]")
            page.wait_for_selector("#result_list")
            row = page.inner_text("#result_list tbody tr")
            assert V1 in row and "cutover" in row and "waiting" in row and "100 % (12/12)" in row, row

            page.click(f"#result_list a:text-is('{migration.pk}')")
            page.wait_for_url(f"**/admin/operations/namespacemigration/{migration.pk}/change/**")
            gate = page.inner_text(".field-gate_figures")
            assert "0.0 % drop" in gate and "passed" in gate and "overlap@10 1.0" in gate, gate
            assert "tenant-a: 12 / 12" in page.inner_text(".field-tenant_progress")
            page.screenshot(path=str(ARTIFACTS / "admin-migration.png"), full_page=True)

            page.goto(f"{live_server.url}/admin/operations/namespacemigration/")
            page.check("#result_list input.action-select")
            page.select_option("select[name=action]", "abort")
            page.click("button[name=index]")
            page.wait_for_selector(".messagelist")
            assert f"#{migration.pk}: abort done" in page.inner_text(".messagelist")
            assert "Aborted" in page.inner_text("#result_list tbody tr")
        finally:
            browser.close()

    assert NamespaceMigration.objects.get(pk=migration.pk).state == MigrationState.ABORTED
    assert alias_resolve(ALIAS) == V1
