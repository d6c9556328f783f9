"""GPU fail-fast: real probes say there is no GPU here and why; GPU namespaces answer 503 gpu_unavailable."""

from __future__ import annotations

import json

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from namespaces.models import Namespace
from operations.environment import verify_environment
from tests.conftest import DEFAULT_NAMESPACE, assert_error
from tests.operations.conftest import QWEN

NO_GPU_HERE = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_GPU_HERE, reason="this machine has a GPU; test_gpu_is_reported covers it")
def test_no_gpu_here_is_reported_with_the_reason():
    report = verify_environment()

    assert report["available"] is False
    assert report["devices"] == []
    assert report["torch"]["ok"] is False
    # This machine runs the CPU build of torch; the reason says so, and says why NVML did not help.
    assert "CPU-only build" in report["reason"] or "no usable CUDA device" in report["reason"]
    assert "nvidia-ml-py is not installed" in report["reason"] or "NVML" in report["reason"]
    assert set(report) >= {"available", "devices", "driver", "cuda", "reason"}


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU_HERE, reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
def test_gpu_is_reported():
    report = verify_environment()

    assert report["available"] is True and report["reason"] is None
    assert len(report["devices"]) == torch.cuda.device_count()
    assert report["devices"][0]["memory_total_bytes"] > 0


def run_verify(*arguments: str) -> tuple[int, dict]:
    from io import StringIO

    out = StringIO()
    try:
        call_command("verify_environment", "--json", *arguments, stdout=out)
        code = 0
    except CommandError as error:
        code = error.returncode
    return code, json.loads(out.getvalue())


@pytest.mark.django_db
@pytest.mark.skipif(not NO_GPU_HERE, reason="this machine has a GPU")
def test_command_exits_non_zero_when_a_gpu_is_required_but_missing(synced, monkeypatch):
    monkeypatch.delenv("VLLM_URL", raising=False)

    code, report = run_verify("--require-gpu")
    assert code == 1
    assert report["available"] is False and report["reason"]
    assert report["ok"] is False and "--require-gpu" in report["required_by"]

    # The seeded Qwen3 namespace needs its vLLM GPU server, which is not configured here.
    code, report = run_verify("--namespace", QWEN)
    assert code == 1
    [check] = report["namespaces"]
    assert check == {**check, "namespace": QWEN, "where": "remote", "available": False}
    assert "VLLM_URL" in check["reason"]


@pytest.mark.django_db
def test_command_passes_when_no_gpu_is_required(synced):
    code, report = run_verify("--namespace", DEFAULT_NAMESPACE)
    assert code == 0
    assert report["required"] is False and report["ok"] is True


@pytest.mark.django_db
def test_command_passes_when_the_gpu_server_answers(qwen_served):
    code, report = run_verify("--namespace", QWEN)
    assert code == 0, report
    assert report["namespaces"][0]["available"] is True


@pytest.mark.django_db
@pytest.mark.skipif(not NO_GPU_HERE, reason="this machine has a GPU")
def test_an_in_process_gpu_namespace_needs_this_machines_gpu(synced):
    Namespace.objects.filter(name=DEFAULT_NAMESPACE).update(requires_gpu=True)

    code, report = run_verify("--namespace", DEFAULT_NAMESPACE)

    assert code == 1
    assert report["namespaces"][0]["where"] == "local"
    assert report["namespaces"][0]["reason"] == report["reason"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embed", {"namespace": QWEN, "texts": ["aspirin"]}),
        ("/v1/embeddings", {"model": QWEN, "input": "aspirin"}),
    ],
)
def test_requires_gpu_namespace_answers_503_gpu_unavailable(api, synced, token_a_write, monkeypatch, path, body):
    monkeypatch.delenv("VLLM_URL", raising=False)

    response = api.post(path, body, token=token_a_write)

    error = assert_error(response, 503, "gpu_unavailable")
    assert "VLLM_URL" in error["error"]["message"]


@pytest.mark.django_db
def test_gpu_server_down_is_gpu_unavailable_and_health_shows_it(api, token_a_write, qwen_served):
    qwen_served.stop()

    response = api.post("/v1/embed", {"namespace": QWEN, "texts": ["aspirin"]}, token=token_a_write)
    assert_error(response, 503, "gpu_unavailable")

    health = api.get("/health")
    assert health.status_code == 200  # the default (CPU) namespace still serves
    body = health.json()
    qwen = next(entry for entry in body["providers"] if entry["namespace"] == QWEN)
    assert qwen["ready"] is False and qwen["requires_gpu"] is True and qwen["code"] == "gpu_unavailable"
    assert body["gpu"]["available"] is verify_environment()["available"]
    metrics = api.get("/metrics").content.decode()
    assert f'embedding_namespace_ready{{namespace="{QWEN}",provider="vllm",requires_gpu="true"}} 0.0' in metrics
    assert "embedding_health_up 1.0" in metrics


@pytest.mark.django_db
def test_gpu_namespace_serves_when_its_gpu_server_answers(api, token_a_write, qwen_served):
    response = api.post("/v1/embed", {"namespace": QWEN, "texts": ["aspirin"]}, token=token_a_write)

    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert body["namespace"] == QWEN and body["dim"] == 4096
    assert len(body["embeddings"][0]["vector"]) == 4096


@pytest.mark.django_db
def test_gpu_gauges_are_exported_only_where_a_gpu_exists(api, synced):
    metrics = api.get("/metrics").content.decode()

    if NO_GPU_HERE:
        assert "embedding_gpu_utilization_ratio" not in metrics
        assert "embedding_gpu_memory_used_bytes" not in metrics
    else:
        assert "embedding_gpu_memory_total_bytes{" in metrics


@pytest.mark.django_db
def test_health_shows_the_seeded_gpu_namespace_unavailable_without_its_server(api, synced, monkeypatch):
    monkeypatch.delenv("VLLM_URL", raising=False)

    body = api.get("/health").json()

    qwen = next(entry for entry in body["providers"] if entry["namespace"] == QWEN)
    assert qwen == {**qwen, "ready": False, "requires_gpu": True, "code": "gpu_unavailable"}
    assert "VLLM_URL" in qwen["detail"]
    assert set(body["gpu"]) == {"available", "devices", "driver", "cuda", "reason"}


class FakeNvml:
    """NVML cannot run here (no NVIDIA driver): a stand-in module with nvidia-ml-py's API and an H100's answers."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.shut_down = False

    def nvmlInit(self):
        return None

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self):
        return b"570.86.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12080

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Memory", (), {"total": 85_520_809_984, "used": 1_048_576_000})()

    def nvmlDeviceGetUtilizationRates(self, handle):
        return type("Utilization", (), {"gpu": 37, "memory": 5})()


@pytest.mark.skipif(not NO_GPU_HERE, reason="this machine has a GPU")
def test_nvml_readings_and_a_gpu_that_torch_cannot_use(monkeypatch):
    import sys

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    report = verify_environment()

    assert report["nvml"] == {"ok": True, "detail": "NVML sees 1 GPU(s), driver 570.86.15"}
    assert report["driver"] == "570.86.15" and report["cuda"] == "12.8"
    assert report["available"] is False  # the CPU build of torch cannot use it: that is the reason given
    assert "NVML sees 1 GPU(s) that torch cannot use" in report["reason"]
    assert fake.shut_down
    monkeypatch.undo()
    verify_environment()  # the cached report (for /health) is this machine's again


def test_gpu_gauges_read_each_device(monkeypatch):
    from prometheus_client import CollectorRegistry, generate_latest

    from operations import metrics

    device = {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total_bytes": 85_520_809_984,
        "memory_used_bytes": 1_048_576_000,
        "utilization_ratio": 0.37,
        "source": "nvml",
    }
    monkeypatch.setattr(metrics, "gpu_devices_now", lambda: [device])
    registry = CollectorRegistry()
    registry.register(metrics.GpuCollector())

    text = generate_latest(registry).decode()

    labels = '{gpu="0",name="NVIDIA H100 80GB HBM3"}'
    assert f"embedding_gpu_utilization_ratio{labels} 0.37" in text
    assert f"embedding_gpu_memory_used_bytes{labels} 1.048576e+09" in text
    assert f"embedding_gpu_memory_total_bytes{labels} 8.5520809984e+10" in text
