"""The Kubernetes overlays, rendered by `kubectl kustomize` and validated without a cluster.

Validation is kubeconform's, done by kubernetes-validate (the same JSON schemas, strict: unknown fields
fail), plus the fields that matter per overlay: images, probes, GPU limits, PVC names, replica counts.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from django.core.management import get_commands

from tests.deploy.manifests import (
    DEPLOY,
    DEPLOYMENTS,
    MEDKG_DEPLOYMENTS,
    OVERLAYS,
    REPO_ROOT,
    container,
    containers,
    entrypoint_roles,
    generated_configmap,
    medkg_environment,
    named,
    pod_spec,
    render,
)

KUBERNETES_VERSION = "1.32.0"
REPLICAS = {
    "production": {"medkg-web": 3, "medkg-worker": 2, "vllm-qwen3": 1, "medkg-legacy-st": 0},
    "staging": {"medkg-web": 1, "medkg-worker": 1, "vllm-qwen3": 1, "medkg-legacy-st": 0},
    "rollback": {"medkg-web": 3, "medkg-worker": 2, "vllm-qwen3": 0, "medkg-legacy-st": 3},
}
HOSTS = {
    "production": "embeddings.example.org",
    "staging": "embeddings.staging.example.org",
    "rollback": "embeddings.example.org",
}
ENVIRONMENTS = {"production": "production", "staging": "staging", "rollback": "production"}
ROLLOUT_JOBS = {"medkg-migrate", "medkg-storage-migration"}
SECRET_MOUNT = "/run/secrets/medkg"


def medkg_workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deployments and Jobs that run the medkg image."""
    return [
        item
        for item in objects
        if item["kind"] in ("Deployment", "Job") and item["metadata"]["labels"].get("medkg.io/runtime") == "medkg"
    ]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = render(overlay)

    assert len(objects) > 10
    for item in objects:
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)


def test_the_weight_cache_seed_job_is_valid() -> None:
    job = yaml.safe_load((DEPLOY / "k8s" / "jobs" / "vllm-cache-seed.yaml").read_text())

    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    assert job["metadata"]["namespace"] == "medkg"
    (volume,) = pod_spec(job)["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "vllm-cache"
    (seed,) = containers(job)
    production_vllm = container(named(render("production"), "Deployment")["vllm-qwen3"], "vllm")
    assert seed["image"] == production_vllm["image"]
    assert seed["volumeMounts"][0]["mountPath"] == production_vllm["volumeMounts"][0]["mountPath"]


def test_the_validation_is_strict() -> None:
    """A misspelt field or a wrong type fails, so the passing validation above means something."""
    web = named(render("production"), "Deployment")["medkg-web"]
    misspelt = copy.deepcopy(web)
    container(misspelt, "medkg")["livenessProbes"] = container(misspelt, "medkg").pop("livenessProbe")
    wrong_type = copy.deepcopy(web)
    wrong_type["spec"]["replicas"] = "three"

    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_contract_names(overlay: str) -> None:
    objects = render(overlay)

    assert set(named(objects, "Namespace")) == {"medkg"}
    assert {item["metadata"].get("namespace") for item in objects if item["kind"] != "Namespace"} == {"medkg"}
    assert set(named(objects, "Deployment")) == set(DEPLOYMENTS)
    assert set(named(objects, "PersistentVolumeClaim")) == {"faiss-data", "vllm-cache"}
    assert set(named(objects, "Service")) == {"medkg-web", "vllm-qwen3"}
    assert set(named(objects, "Job")) == (set() if overlay == "rollback" else ROLLOUT_JOBS)
    assert "Secret" not in {item["kind"] for item in objects}  # referenced, never committed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replica_counts(overlay: str) -> None:
    deployments = named(render(overlay), "Deployment")

    assert {name: deployment["spec"]["replicas"] for name, deployment in deployments.items()} == REPLICAS[overlay]


def test_the_rollback_overlay_only_scales_production() -> None:
    production = {(item["kind"], item["metadata"]["name"]): item for item in render("production")}
    rollback = {(item["kind"], item["metadata"]["name"]): item for item in render("rollback")}

    assert set(production) - set(rollback) == {("Job", name) for name in ROLLOUT_JOBS}  # it runs no rollout Job
    differences = []
    for key, item in rollback.items():
        before = copy.deepcopy(production[key])
        after = copy.deepcopy(item)
        for scaled in (before, after):
            if scaled["kind"] == "Deployment":
                scaled["spec"].pop("replicas")
        if before != after:
            differences.append(key)
    assert differences == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_consistent(overlay: str) -> None:
    objects = render(overlay)
    medkg_images = {item["image"] for workload in medkg_workloads(objects) for item in containers(workload)}
    vllm = named(objects, "Deployment")["vllm-qwen3"]

    (medkg_image,) = medkg_images  # web, worker, legacy-st, Jobs and init containers: one image
    repository, _, tag = medkg_image.rpartition(":")
    assert repository.endswith("/medkg/medkg") and tag and tag != "latest"
    assert container(vllm, "vllm")["image"] == f"{repository}-vllm:{tag}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_http_pods_are_probed_on_health(overlay: str) -> None:
    deployments = named(render(overlay), "Deployment")

    for name, container_name in (("medkg-web", "medkg"), ("medkg-legacy-st", "medkg"), ("vllm-qwen3", "vllm")):
        served = container(deployments[name], container_name)
        (port,) = served["ports"]
        assert (port["name"], port["containerPort"]) == ("http", 8000)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert served[probe]["httpGet"] == {"path": "/health", "port": "http"}, (name, probe)
    worker = container(deployments["medkg-worker"], "medkg")
    assert "celery --app medkg inspect ping" in " ".join(worker["livenessProbe"]["exec"]["command"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_vllm_qwen3_holds_a_gpu_on_a_gpu_node(overlay: str) -> None:
    objects = render(overlay)
    vllm = named(objects, "Deployment")["vllm-qwen3"]
    served = container(vllm, "vllm")

    assert served["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert served["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod_spec(vllm)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(vllm)["tolerations"]
    assert vllm["spec"]["strategy"]["type"] == "Recreate"
    others = [
        item["name"]
        for workload in workloads(objects)
        if workload is not vllm
        for item in containers(workload)
        if "nvidia.com/gpu" in str(item.get("resources"))
    ]
    assert others == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_a_memory_limit(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        for item in containers(workload):
            resources = item.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), (workload["metadata"]["name"], item["name"])
            assert "memory" in resources.get("limits", {}), (workload["metadata"]["name"], item["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_non_root_users(overlay: str) -> None:
    objects = render(overlay)
    image_users = {
        "Dockerfile": int(re.findall(r"^USER (\d+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)[-1]),
        "Dockerfile.vllm": int(re.findall(r"^USER (\d+)", (DEPLOY / "Dockerfile.vllm").read_text(), re.MULTILINE)[-1]),
    }

    for workload in workloads(objects):
        security = pod_spec(workload)["securityContext"]
        expected = image_users["Dockerfile.vllm" if workload["metadata"]["name"] == "vllm-qwen3" else "Dockerfile"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == expected
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        for item in containers(workload):
            assert item["securityContext"]["allowPrivilegeEscalation"] is False
            assert item["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for workload in medkg_workloads(objects):
        for item in containers(workload):
            assert item["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes_claim_the_contract_pvcs(overlay: str) -> None:
    objects = render(overlay)
    claims = {
        workload["metadata"]["name"]: {
            volume["persistentVolumeClaim"]["claimName"]
            for volume in pod_spec(workload)["volumes"]
            if "persistentVolumeClaim" in volume
        }
        for workload in workloads(objects)
    }
    pvcs = named(objects, "PersistentVolumeClaim")

    assert claims["vllm-qwen3"] == {"vllm-cache"}
    assert all(claims[name] == {"faiss-data"} for name in claims if name != "vllm-qwen3")
    assert pvcs["faiss-data"]["spec"]["accessModes"] == ["ReadWriteMany"]  # every web pod reads the indexes
    assert pvcs["vllm-cache"]["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_and_read_from_files(overlay: str) -> None:
    objects = render(overlay)
    environment = medkg_environment(objects)
    file_variables = {name: value for name, value in environment.items() if name.endswith("_FILE")}

    assert {"SECRET_KEY_FILE", "DATABASE_URL_FILE"} <= set(file_variables)
    assert all(value.startswith(f"{SECRET_MOUNT}/") for value in file_variables.values())
    for workload in medkg_workloads(objects):
        spec = pod_spec(workload)
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert set(secret_volumes.values()) == {"medkg-secrets"}
        for item in containers(workload):
            mounts = {mount["mountPath"]: mount["name"] for mount in item["volumeMounts"]}
            assert mounts.get(SECRET_MOUNT) in secret_volumes, (workload["metadata"]["name"], item["name"])
    references = {
        (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"].get("optional", False))
        for workload in workloads(objects)
        for item in containers(workload)
        for entry in item.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    assert references == {("medkg-secrets", True)}  # only optional keys as variables; required ones are files
    assert named(objects, "Ingress")["medkg-web"]["spec"]["tls"][0]["secretName"] == "medkg-tls"


def test_the_runbook_creates_every_secret_key_the_manifests_read() -> None:
    objects = render("production")
    wanted = {value.rsplit("/", 1)[1] for name, value in medkg_environment(objects).items() if name.endswith("_FILE")}
    wanted |= {
        entry["valueFrom"]["secretKeyRef"]["key"]
        for workload in workloads(objects)
        for item in containers(workload)
        for entry in item.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    runbook = (REPO_ROOT / "docs" / "runbook.md").read_text()
    created = set(re.findall(r"--from-(?:file|literal)=([a-z0-9-]+)=", runbook))

    assert wanted - created == set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_config_file_is_a_configmap_mounted_where_settings_reads_it(overlay: str) -> None:
    """config/ reaches the pods as generated ConfigMaps, in its own layout under MEDKG_CONFIG_DIR."""
    objects = render(overlay)
    config_dir = Path(medkg_environment(objects)["MEDKG_CONFIG_DIR"])
    configmaps = {item["metadata"]["name"]: item for item in objects if item["kind"] == "ConfigMap"}
    files = sorted(
        path.relative_to(REPO_ROOT / "config")
        for path in (REPO_ROOT / "config").rglob("*.y*ml")
        if path.name != "kustomization.yaml"
    )

    assert files
    for workload in medkg_workloads(objects):
        volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
        medkg = container(workload, "medkg")
        mounted: dict[Path, str] = {}
        for mount in medkg["volumeMounts"]:
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                continue
            data = configmaps.get(source["name"], {}).get("data", {})
            target = Path(mount["mountPath"])
            if "subPath" in mount:
                mounted[target] = data.get(mount["subPath"], "")
            else:
                mounted.update({target / key: text for key, text in data.items()})
        missing = [str(relative) for relative in files if config_dir / relative not in mounted]
        assert missing == [], f"{workload['metadata']['name']}: not mounted from a ConfigMap: {missing}"
        for relative in files:
            assert mounted[config_dir / relative] == (REPO_ROOT / "config" / relative).read_text(), relative


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_reads_the_same_vllm_yaml(overlay: str) -> None:
    objects = render(overlay)
    vllm = named(objects, "Deployment")["vllm-qwen3"]
    served = container(vllm, "vllm")
    config_path = {entry["name"]: entry.get("value") for entry in served["env"]}["MEDKG_VLLM_CONFIG"]
    (mount,) = [mount for mount in served["volumeMounts"] if mount["mountPath"] == config_path]
    volume = {volume["name"]: volume for volume in pod_spec(vllm)["volumes"]}[mount["name"]]

    configmap = generated_configmap(objects, "medkg-config-embedding")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert configmap["data"][mount["subPath"]] == (REPO_ROOT / "config" / "embedding" / "vllm.yaml").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_and_ingress_per_overlay(overlay: str) -> None:
    objects = render(overlay)
    environment = medkg_environment(objects)
    ingress = named(objects, "Ingress")["medkg-web"]["spec"]
    host = HOSTS[overlay]

    assert environment["MEDKG_ENVIRONMENT"] == ENVIRONMENTS[overlay]
    assert host in environment["ALLOWED_HOSTS"].split(",")
    assert "medkg-web.medkg.svc" in environment["ALLOWED_HOSTS"].split(",")
    assert environment["CSRF_TRUSTED_ORIGINS"] == f"https://{host}"
    assert environment["VLLM_URL"] == "http://vllm-qwen3:8000"
    assert ingress["tls"][0]["hosts"] == [host]
    (rule,) = ingress["rules"]
    assert rule["host"] == host
    paths = {path["path"] for path in rule["http"]["paths"]}
    assert paths == {"/v1", "/health", "/admin", "/static"}  # /metrics stays inside the cluster
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"] == {"name": "medkg-web", "port": {"name": "http"}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_web_service_and_disruption_budget_select_the_api_pods(overlay: str) -> None:
    objects = render(overlay)
    deployments = named(objects, "Deployment")
    selector = named(objects, "Service")["medkg-web"]["spec"]["selector"]
    budget = named(objects, "PodDisruptionBudget")["medkg-web"]["spec"]

    def selected(labels_selector: dict[str, str]) -> set[str]:
        return {
            name
            for name, deployment in deployments.items()
            if labels_selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        }

    assert selected(selector) == {"medkg-web", "medkg-legacy-st"}
    assert selected(budget["selector"]["matchLabels"]) == {"medkg-web"}
    assert budget["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_roles_and_commands_that_exist(overlay: str) -> None:
    roles = entrypoint_roles()
    objects = render(overlay)

    for workload in medkg_workloads(objects):
        for item in containers(workload):
            assert item["args"][0] in roles, (workload["metadata"]["name"], item["name"], item["args"])
    waiting = {w["metadata"]["name"] for w in medkg_workloads(objects) if pod_spec(w).get("initContainers")}
    assert waiting == {*MEDKG_DEPLOYMENTS, *({"medkg-storage-migration"} if overlay != "rollback" else set())}


def test_the_entrypoint_calls_management_commands_that_exist() -> None:
    called = set(re.findall(r"python manage\.py ([a-z_]+)", (DEPLOY / "entrypoint.sh").read_text()))

    assert {"migrate", "sync_namespaces", "bootstrap_faiss"} <= called
    assert called - set(get_commands()) == set()
