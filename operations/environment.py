"""GPU fail-fast: what this machine really offers, from torch.cuda and NVML (nvidia-ml-py), not from PATH.

`verify_environment()` reports {"available", "devices", "driver", "cuda", "reason", ...}. torch decides
`available` (it is what runs the in-process models); NVML adds the driver, live memory and utilisation and
explains a mismatch (a GPU that NVML sees but a CPU-only torch cannot use). nvidia-ml-py is a GPU-host
package (requirements-gpu.txt): it is imported lazily and its absence is said plainly.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, TypedDict


class GpuDevice(TypedDict):
    index: int
    name: str
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    utilization_ratio: float | None
    source: str  # "nvml" or "torch"


class ProbeResult(TypedDict):
    ok: bool
    detail: str


class EnvironmentReport(TypedDict):
    available: bool
    devices: list[GpuDevice]
    driver: str | None
    cuda: str | None
    reason: str | None
    torch: ProbeResult
    nvml: ProbeResult


_CACHE_SECONDS = 30.0
_cache: tuple[float, EnvironmentReport] | None = None
_cache_lock = threading.Lock()


def _torch_probe() -> tuple[ProbeResult, list[GpuDevice], str | None]:
    """(result, devices, CUDA version torch was built for)."""
    try:
        import torch
    except ImportError:
        return ProbeResult(ok=False, detail="torch is not installed"), [], None
    built_for = torch.version.cuda
    if built_for is None:
        return ProbeResult(ok=False, detail=f"torch {torch.__version__} is a CPU-only build (no CUDA)"), [], None
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        detail = f"torch {torch.__version__} (CUDA {built_for}) finds no usable CUDA device{hint}"
        return ProbeResult(ok=False, detail=detail), [], built_for
    devices: list[GpuDevice] = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        devices.append(
            GpuDevice(
                index=index,
                name=str(properties.name),
                memory_total_bytes=int(properties.total_memory),
                memory_used_bytes=None,  # asking torch would create a CUDA context on every device
                utilization_ratio=None,
                source="torch",
            )
        )
    detail = f"torch {torch.__version__} sees {len(devices)} CUDA device(s)"
    return ProbeResult(ok=bool(devices), detail=detail), devices, built_for


def _nvml_probe() -> tuple[ProbeResult, list[GpuDevice], str | None, str | None]:
    """(result, devices, driver version, CUDA driver version)."""
    try:
        import pynvml  # from nvidia-ml-py, installed on GPU hosts only
    except ImportError:
        return (
            ProbeResult(ok=False, detail="nvidia-ml-py is not installed (GPU hosts install requirements-gpu.txt)"),
            [],
            None,
            None,
        )
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return ProbeResult(ok=False, detail=f"NVML cannot start: {error} (no NVIDIA driver?)"), [], None, None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_version = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda = f"{cuda_version // 1000}.{(cuda_version % 1000) // 10}"
        devices = [_nvml_device(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as error:
        return ProbeResult(ok=False, detail=f"NVML query failed: {error}"), [], None, None
    finally:
        pynvml.nvmlShutdown()
    detail = f"NVML sees {len(devices)} GPU(s), driver {driver}"
    return ProbeResult(ok=bool(devices), detail=detail), devices, driver, cuda


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_device(pynvml: Any, index: int) -> GpuDevice:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
    return GpuDevice(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_total_bytes=int(memory.total),
        memory_used_bytes=int(memory.used),
        utilization_ratio=float(utilization.gpu) / 100.0,
        source="nvml",
    )


def _probe() -> EnvironmentReport:
    torch_result, torch_devices, built_for = _torch_probe()
    nvml_result, nvml_devices, driver, driver_cuda = _nvml_probe()
    available = torch_result["ok"]
    # NVML knows more (live memory, utilisation) about the same devices: prefer its view when both agree.
    devices = nvml_devices if available and len(nvml_devices) == len(torch_devices) else torch_devices
    reason = None
    if not available:
        reason = torch_result["detail"]
        if nvml_result["ok"]:
            reason += f"; NVML sees {len(nvml_devices)} GPU(s) that torch cannot use"
        else:
            reason += f"; {nvml_result['detail']}"
    return EnvironmentReport(
        available=available,
        devices=devices,
        driver=driver,
        cuda=built_for or driver_cuda,
        reason=reason,
        torch=torch_result,
        nvml=nvml_result,
    )


def verify_environment(*, fresh: bool = True) -> EnvironmentReport:
    """Probe the GPU environment. `fresh=False` accepts a probe up to 30 s old (health checks, metrics)."""
    global _cache
    with _cache_lock:
        if not fresh and _cache is not None and time.monotonic() - _cache[0] < _CACHE_SECONDS:
            return _cache[1]
        report = _probe()
        _cache = (time.monotonic(), report)
        return report


def gpu_devices_now() -> list[GpuDevice]:
    """Live per-device readings for the metrics; empty where no GPU exists (so no GPU gauge is exported)."""
    report = verify_environment(fresh=False)
    if not report["available"]:
        return []
    _, devices, _, _ = _nvml_probe()
    return devices or report["devices"]
