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
