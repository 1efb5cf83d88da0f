"""Consumers under test run as child processes, configured the way operators configure them
(``MODSTREAM_*`` variables), each leading a process group of its own so that its CPU and
memory, worker processes included, are measured apart from this harness."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, SecretStr

from bench.clone import clone_root
from bench.e2e.results import BenchmarkStalled
from bench.memory_model import ALLOCATOR_ENV
from consumer.runtime.settings import Settings

logger = logging.getLogger(__name__)

ENV_PREFIX: Final = "MODSTREAM_"
STOP_GRACE_S: Final = 30.0


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``MODSTREAM_*`` variables that reproduce every section of ``settings``.

    Unset (None) values are left out; lists and mappings are JSON, as pydantic-settings reads
    them back.
    """
    env: dict[str, str] = {}
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        if not isinstance(section, BaseModel):
            continue
        for name in type(section).model_fields:
            value = getattr(section, name)
            if value is None:
                continue
            key = f"{ENV_PREFIX}{section_name.upper()}__{name.upper()}"
            env[key] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict | tuple):
        return json.dumps(value)
    return str(value)


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` on top, and the deployment's allocator."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**inherited, **ALLOCATOR_ENV, **settings_env(settings)}


class ConsumerChild:
    """One consumer process (and process group) with its output in ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path):
        self.name = name
        self._argv = list(argv)
        self._env = dict(env)
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None

    @classmethod
    def pipeline(cls, name: str, settings: Settings, log_path: Path) -> ConsumerChild:
        """``modstream run`` with ``settings``."""
        argv = [sys.executable, "-m", "consumer", "run"]
        return cls(name, argv, child_env(settings), log_path)

    @classmethod
    def baseline(
        cls, name: str, settings: Settings, log_path: Path, arguments: Sequence[str]
    ) -> ConsumerChild:
        """``python -m bench.e2e.baselines`` with ``settings`` and ``arguments``."""
        argv = [sys.executable, "-m", "bench.e2e.baselines", *arguments]
        return cls(name, argv, child_env(settings), log_path)

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchmarkStalled(f"{self.name} was never started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self._argv,
                env=self._env,
                cwd=clone_root(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.debug("%s started: pid %d, log %s", self.name, self.pid, self.log_path)

    def exited(self) -> bool:
        return self._process is not None and self._process.returncode is not None

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")

    async def wait(self, timeout_s: float) -> None:
        """Wait for the process to exit by itself, successfully.

        Raises BenchmarkStalled, with its log tail, when it fails or outlasts ``timeout_s``.
        """
        if self._process is None:
            raise BenchmarkStalled(f"{self.name} was never started")
        try:
            code = await asyncio.wait_for(self._process.wait(), timeout_s)
        except TimeoutError as exc:
            raise BenchmarkStalled(
                f"{self.name} did not finish within {timeout_s:.0f}s:\n{self.log_tail()}"
            ) from exc
        if code != 0:
            raise BenchmarkStalled(f"{self.name} exited with {code}:\n{self.log_tail()}")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group (the consumer drains), SIGKILL it after ``grace_s``."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                logger.warning("%s did not stop within %.0fs; killed", self.name, grace_s)
        # Worker processes may outlive their leader; none may outlive the run.
        self._signal(signal.SIGKILL)
        if process.returncode is None:
            await process.wait()

    def kill_now(self) -> None:
        """SIGKILL the group without waiting: the last resort of an interrupted run."""
        if self._process is not None:
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


async def scrape(url: str, names: Sequence[str], labels: Mapping[str, str]) -> dict[str, float]:
    """Sums of the samples called ``names`` whose labels include ``labels``, from a
    Prometheus endpoint; missing ones are 0."""
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        response = await client.get(url)
        response.raise_for_status()
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            # The parser names counter samples ``<name>_total`` whatever the server wrote.
            name = sample.name.removesuffix("_total") if family.type == "counter" else sample.name
            if name in totals and all(sample.labels.get(k) == v for k, v in labels.items()):
                totals[name] += sample.value
    return totals
