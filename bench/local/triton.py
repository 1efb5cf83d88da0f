"""Run the tritonserver that ships inside the nvidia-pytriton wheel, on loopback ports.

That build bundles only Triton's Python backend. The launcher installs
:mod:`bench.local.triton_cpu_backend` as a Python-based backend named ``onnxruntime``, so a
model repository written for NVIDIA's GPU image (``backend: "onnxruntime"``) serves unchanged
on a CPU-only machine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
import shutil
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from bench.local.process import ManagedProcess, free_port
from consumer.errors import LocalServiceError

logger = logging.getLogger(__name__)

STAND_IN_BACKEND: Final = "onnxruntime"
_STAND_IN_SOURCE: Final = Path(__file__).with_name("triton_cpu_backend.py")
_STUB_NAME: Final = "triton_python_backend_stub"
_SHM_DIR: Final = Path("/dev/shm")
_TRITON_ERROR_LINE: Final = re.compile(r"E\d{4} ")
# Logged at error level by every start on a machine without a GPU.
_HARMLESS_ERRORS: Final = ("CudaDriverHelper has not been initialized",)
# urllib would otherwise send loopback health checks through an http_proxy from the environment.
_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the wheel's tritonserver live."""

    home: Path
    libs: Path

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.home / "python_backend_stubs" / version / _STUB_NAME

    @classmethod
    def locate(cls) -> TritonInstall:
        """Find tritonserver inside the installed nvidia-pytriton wheel.

        Raises LocalServiceError when the wheel is missing or lacks a stub for this Python.
        """
        # find_spec only locates the package; importing pytriton would pull in all of it.
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise LocalServiceError(
                "tritonserver comes from the nvidia-pytriton wheel, which is not installed "
                "(pip install 'modstream[local]')"
            )
        package = Path(spec.origin).parent
        install = cls(home=package / "tritonserver", libs=package.parent / "nvidia_pytriton.libs")
        if not install.binary.is_file():
            raise LocalServiceError(f"no tritonserver binary at {install.binary}")
        if not install.stub.is_file():
            available = sorted(p.name for p in install.stub.parent.parent.glob("*"))
            raise LocalServiceError(
                f"nvidia-pytriton has no Python backend stub for Python "
                f"{sys.version_info.major}.{sys.version_info.minor} (it has {available})"
            )
        return install


@dataclass
class TritonServer:
    """A tritonserver child process serving ``model_repository`` on 127.0.0.1.

    ``models`` limits loading to those names (explicit model control); None loads every model
    in the repository. Without ``work_dir`` a temporary one is made and removed by
    :meth:`close`. The ports are chosen once, so :meth:`restart` comes back on the same ones.
    """

    model_repository: Path
    models: Sequence[str] | None = None
    work_dir: Path | None = None
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    #: How long Triton itself waits on SIGTERM for in-flight requests and for open HTTP
    #: keep-alive connections (Triton's default, 30 s, outlasts any test or demo); keep it
    #: below ``stop_grace_s`` so the server exits on its own before it is killed.
    exit_timeout_s: int = 5
    stop_grace_s: float = 10.0
    #: Seconds the last successful :meth:`start` took from launch to ready.
    startup_s: float | None = field(default=None, init=False)
    _process: ManagedProcess | None = field(default=None, init=False, repr=False)
    _owns_work_dir: bool = field(default=False, init=False, repr=False)
    _shm_prefix: str = field(default="", init=False, repr=False)

    @property
    def grpc_url(self) -> str:
        """``host:port``, the form ``tritonclient.grpc`` expects."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP/REST endpoint, with scheme (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint (``http://127.0.0.1:PORT/metrics``)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        """tritonserver's combined stdout/stderr; appended to across restarts."""
        return self._work_dir() / "tritonserver.log"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise LocalServiceError("tritonserver was never started; call start() first")
        return self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def start(self, deadline_s: float = 60.0) -> None:
        """Launch tritonserver and wait until it reports ready (all startup models loaded).

        Raises LocalServiceError, with the end of the server log, if it exits first (a model
        that fails to load makes it exit) or is not ready within ``deadline_s``.
        """
        if self.running():
            return
        if not self.model_repository.is_dir():
            raise LocalServiceError(f"model repository {self.model_repository} is not a directory")
        install = TritonInstall.locate()
        work_dir = self._work_dir()
        if not (work_dir / "backends").is_dir():
            self._prepare(install, work_dir)
        # Each launch gets its own prefix so a killed server's leftover regions never collide.
        self._shm_prefix = f"modstream-triton-{os.getpid()}-{secrets.token_hex(4)}-"
        self._process = ManagedProcess(
            name="tritonserver",
            argv=self._argv(install, work_dir),
            log_path=self.log_path,
            env=self._env(install),
            cwd=work_dir,
        )
        began = time.monotonic()
        self._process.start()
        try:
            self._process.wait_until(self._ready, deadline_s, "ready")
        except LocalServiceError as exc:
            self._process.kill()
            self._remove_shm()
            errors = self._logged_errors()
            if errors:
                # The log tail is mostly Triton's wide status tables; the cause is further up.
                raise LocalServiceError(f"{exc}\nerrors logged by tritonserver:\n{errors}") from exc
            raise
        self.startup_s = time.monotonic() - began
        logger.info(
            "tritonserver pid %d ready in %.2fs: grpc %s, http %s, metrics %s, log %s",
            self._process.pid,
            self.startup_s,
            self.grpc_url,
            self.http_url,
            self.metrics_url,
            self.log_path,
        )

    def stop(self) -> None:
        """SIGTERM the server (it finishes in-flight requests), SIGKILL after ``stop_grace_s``."""
        if self._process is not None:
            self._process.stop(grace_s=self.stop_grace_s)
            self._remove_shm()

    def kill(self) -> None:
        """SIGKILL the server and its backend stubs at once, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._remove_shm()

    def restart(self, deadline_s: float = 60.0) -> None:
        """Stop (if running) and start again on the same ports."""
        self.stop()
        self.start(deadline_s)

    def close(self) -> None:
        """Stop the server and remove the work directory if this object created it."""
        self.stop()
        if self._owns_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
            self._owns_work_dir = False

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _work_dir(self) -> Path:
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="modstream-triton-"))
            self._owns_work_dir = True
        return self.work_dir

    @staticmethod
    def _prepare(install: TritonInstall, work_dir: Path) -> None:
        # tritonserver wants its backends and caches in writable directories of their own, with
        # the stub for the running Python beside the Python backend, as PyTriton lays them out.
        backends = work_dir / "backends"
        shutil.rmtree(backends, ignore_errors=True)
        shutil.rmtree(work_dir / "caches", ignore_errors=True)
        shutil.copytree(install.home / "backends", backends)
        shutil.copytree(install.home / "caches", work_dir / "caches")
        shutil.copy2(install.stub, backends / "python" / _STUB_NAME)
        stand_in = backends / STAND_IN_BACKEND
        stand_in.mkdir()
        shutil.copy2(_STAND_IN_SOURCE, stand_in / "model.py")

    def _argv(self, install: TritonInstall, work_dir: Path) -> list[str]:
        argv = [
            str(install.binary),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={work_dir / 'backends'}",
            f"--cache-directory={work_dir / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if self.models is not None:
            argv.append("--model-control-mode=explicit")
            argv.extend(f"--load-model={name}" for name in self.models)
        return argv

    @staticmethod
    def _env(install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        # Without these the Python backend stub cannot load libpython and the server hangs in
        # "loading" without an error.
        lib_dirs = [str(install.libs), str(sysconfig.get_config_var("LIBDIR") or "")]
        # The stub ignores PYTHONPATH; it finds numpy and onnxruntime through the interpreter
        # that comes first on PATH, which must be the one running this code.
        bin_dirs = [str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")]
        env["LD_LIBRARY_PATH"] = _join_paths(lib_dirs, env.get("LD_LIBRARY_PATH", ""))
        env["PATH"] = _join_paths(bin_dirs, env.get("PATH", ""))
        return env

    def _ready(self) -> bool:
        try:
            with _NO_PROXY.open(f"{self.http_url}/v2/health/ready", timeout=1.0) as response:
                return int(response.status) == 200
        # Before the models have loaded the port refuses connections; afterwards a server
        # that is still loading answers 400. Both mean "not yet".
        except (urllib.error.URLError, OSError):
            return False

    def _logged_errors(self, limit: int = 8, width: int = 600) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        errors = [
            line[:width]
            for line in lines
            if _TRITON_ERROR_LINE.match(line) and not any(n in line for n in _HARMLESS_ERRORS)
        ]
        return "\n".join(errors[-limit:])

    def _remove_shm(self) -> None:
        # A SIGKILLed server cannot unlink its Python-backend shared-memory regions, and
        # /dev/shm is RAM, so repeated fault tests would leak it.
        if self._shm_prefix and _SHM_DIR.is_dir():
            for region in _SHM_DIR.glob(f"{self._shm_prefix}*"):
                region.unlink(missing_ok=True)


def _join_paths(first: Sequence[str], rest: str) -> str:
    seen: list[str] = []
    for entry in [*first, *rest.split(os.pathsep)]:
        if entry and entry not in seen:
            seen.append(entry)
    return os.pathsep.join(seen)
