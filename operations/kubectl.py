"""kubectl for the rollback: render an overlay locally, check the cluster, scale, wait, apply.

Every command is echoed before it runs; with dry_run nothing runs but the local render (which needs no
cluster), so a dry run prints the exact commands with the overlay's replica counts.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml
from django.conf import settings

from operations.errors import KubectlFailed
from operations.triggers import KubernetesSettings, RollbackPair


def overlay_path(path: str) -> Path:
    """Overlay paths in the triggers file are relative to the repository root."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(settings.BASE_DIR) / candidate


class Kubectl:
    def __init__(
        self,
        *,
        kubernetes: KubernetesSettings,
        echo: Callable[[str], None],
        dry_run: bool = False,
        binary: str = "kubectl",
    ) -> None:
        self.kubernetes = kubernetes
        self.echo = echo
        self.dry_run = dry_run
        self.binary = binary

    def resolved_binary(self) -> str | None:
        return shutil.which(self.binary)

    def _execute(self, arguments: list[str], *, timeout: float) -> str:
        binary = self.resolved_binary()
        if binary is None:
            raise KubectlFailed(f"{self.binary} is not on PATH: --kubectl needs it to reach the cluster.")
        try:
            result = subprocess.run(  # noqa: S603  # fixed argument lists, no shell
                [binary, *arguments], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise KubectlFailed(f"`{self.shell(arguments)}` did not finish in {timeout:.0f} s") from error
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip()[-1500:]
            raise KubectlFailed(f"`{self.shell(arguments)}` failed (exit {result.returncode}): {message}")
        return result.stdout

    def shell(self, arguments: list[str]) -> str:
        return shlex.join([self.binary, *arguments])

    def run(self, arguments: list[str], *, timeout: float = 60.0) -> str:
        """Echo the command, then run it (unless dry run)."""
        self.echo(("would run: " if self.dry_run else "$ ") + self.shell(arguments))
        return "" if self.dry_run else self._execute(arguments, timeout=timeout)

    def in_namespace(self, *arguments: str) -> list[str]:
        return ["-n", self.kubernetes.namespace, *arguments]

    # --- the steps ------------------------------------------------------------------------
    def deployment_replicas(self, overlay: Path) -> dict[str, int]:
        """Replicas of each Deployment that `kubectl kustomize OVERLAY` renders (local: no cluster needed)."""
        if not (overlay / "kustomization.yaml").exists() and not (overlay / "kustomization.yml").exists():
            raise KubectlFailed(f"overlay {overlay} has no kustomization.yaml")
        rendered = self._execute(["kustomize", str(overlay)], timeout=60.0)
        replicas: dict[str, int] = {}
        for document in yaml.safe_load_all(rendered):
            if isinstance(document, dict) and document.get("kind") == "Deployment":
                name = str(document.get("metadata", {}).get("name", ""))
                replicas[name] = int((document.get("spec") or {}).get("replicas", 1))
        return replicas

    def check_reachable(self, deployments: list[str]) -> None:
        """Fail before anything changes when the cluster or a deployment cannot be reached."""
        arguments = self.in_namespace("get", "deployment", *deployments, "-o", "name", "--request-timeout=10s")
        self.run(arguments, timeout=30.0)

    def scale(self, deployment: str, replicas: int | None, *, overlay: Path) -> None:
        """Scale to the overlay's count; None only in a dry run that could not render the overlay."""
        count = str(replicas) if replicas is not None else f"<replicas of {deployment} in {overlay}>"
        self.run(self.in_namespace("scale", f"deployment/{deployment}", f"--replicas={count}"))

    def wait_rolled_out(self, deployment: str) -> None:
        timeout = self.kubernetes.rollout_timeout_seconds
        arguments = self.in_namespace("rollout", "status", f"deployment/{deployment}", f"--timeout={timeout}s")
        self.run(arguments, timeout=timeout + 30.0)

    def apply_overlay(self, overlay: Path) -> None:
        self.run(["apply", "-k", str(overlay)], timeout=120.0)

    def restart(self, deployments: list[str]) -> None:
        self.run(self.in_namespace("rollout", "restart", *[f"deployment/{name}" for name in deployments]))
        for name in deployments:
            self.wait_rolled_out(name)


class RollbackKubectl:
    """The Kubernetes side of one rollback pair: which deployments, which overlays, which replica counts."""

    def __init__(self, kubectl: Kubectl, pair: RollbackPair) -> None:
        self.kubectl = kubectl
        self.pair = pair
        self.rollback_overlay = overlay_path(kubectl.kubernetes.rollback_overlay)
        self.restore_overlay = overlay_path(kubectl.kubernetes.restore_overlay)

    def _replicas(self, overlay: Path, deployment: str, *, must_serve: bool) -> int | None:
        """The overlay's replica count for `deployment`; None in a dry run that cannot render."""
        if not overlay.is_dir():
            raise KubectlFailed(f"overlay {overlay} does not exist")
        if self.kubectl.dry_run and self.kubectl.resolved_binary() is None:
            self.kubectl.echo(f"(kubectl is not on PATH: replicas of {deployment} come from {overlay} at run time)")
            return None
        replicas = self.kubectl.deployment_replicas(overlay).get(deployment)
        if replicas is None:
            raise KubectlFailed(f"overlay {overlay} renders no Deployment {deployment}")
        if must_serve and replicas < 1:
            raise KubectlFailed(f"overlay {overlay} gives {deployment} {replicas} replicas: it could not serve")
        return replicas

    def prepare(self, *, undo: bool) -> tuple[int | None, int | None]:
        """Check overlays and cluster before any change. Returns (replicas to scale up, replicas to scale down)."""
        if undo:
            up = self._replicas(self.restore_overlay, self.pair.primary_deployment, must_serve=True)
            down = self._replicas(self.restore_overlay, self.pair.legacy_deployment, must_serve=False)
        else:
            up = self._replicas(self.rollback_overlay, self.pair.legacy_deployment, must_serve=True)
            down = self._replicas(self.rollback_overlay, self.pair.primary_deployment, must_serve=False)
        self.kubectl.check_reachable([self.pair.primary_deployment, self.pair.legacy_deployment])
        return up, down

    def scale_up(self, deployment: str, replicas: int | None, *, undo: bool) -> None:
        self.kubectl.scale(deployment, replicas, overlay=self._overlay(undo))
        self.kubectl.wait_rolled_out(deployment)

    def scale_down_and_apply(self, deployment: str, replicas: int | None, *, undo: bool) -> None:
        overlay = self._overlay(undo)
        self.kubectl.scale(deployment, replicas, overlay=overlay)
        self.kubectl.apply_overlay(overlay)

    def _overlay(self, undo: bool) -> Path:
        return self.restore_overlay if undo else self.rollback_overlay
