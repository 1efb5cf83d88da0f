"""``modstream run`` as a child process, configured the way operators configure it: env vars."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from consumer.runtime.settings import Settings


def consumer_env(settings: Settings) -> dict[str, str]:
    """The MODSTREAM_* variables that reproduce ``settings`` for a consumer process."""
    kafka, topics = settings.kafka, settings.topics
    return {
        **os.environ,
        "MODSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "MODSTREAM_KAFKA__GROUP_ID": kafka.group_id,
        "MODSTREAM_KAFKA__INPUT_TOPIC": kafka.input_topic,
        "MODSTREAM_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
        "MODSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
        "MODSTREAM_KAFKA__COMMIT_INTERVAL_MS": str(kafka.commit_interval_ms),
        "MODSTREAM_TOPICS__ALLOW": topics.allow,
        "MODSTREAM_TOPICS__REVIEW": topics.review,
        "MODSTREAM_TOPICS__BLOCK": topics.block,
        "MODSTREAM_TOPICS__DEAD_LETTER": topics.dead_letter,
        "MODSTREAM_TRITON__URL": settings.triton.url,
        "MODSTREAM_BATCHING__MAX_BATCH_SIZE": str(settings.batching.max_batch_size),
        "MODSTREAM_BATCHING__MAX_WAIT_MS": str(settings.batching.max_wait_ms),
        "MODSTREAM_POLICY__PATH": str(settings.policy.path),
        "MODSTREAM_METRICS__HOST": "127.0.0.1",
        "MODSTREAM_METRICS__PORT": "0",
    }


class ConsumerProcess:
    """One ``python -m consumer run`` child; its stdout and stderr go to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._log_offset = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer", "run", env=self._env, stdout=log, stderr=log
            )
        self.starts += 1

    async def wait_started(self, timeout_s: float = 60.0) -> None:
        """Wait until this start of the process has connected to Triton (it logs the model).

        A signal that arrives while the interpreter itself is still starting, before any of
        the consumer's code runs, ends the process with the default action; tests that
        check a clean exit wait for this first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                if b"serving model" in log.read():
                    return
            if not self.running:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"consumer did not start within {timeout_s}s: {self.log_path}")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    def log_since_start(self, limit: int = 20_000) -> str:
        """What this start of the process logged (its last ``limit`` characters)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")[-limit:]

    async def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for the drain; return the exit status.

        A process still running after ``timeout_s`` is asked to log its pending tasks
        (SIGUSR2), so the log says where it was stuck, then killed.
        """
        if self.process is None:
            raise RuntimeError("the consumer process was never started")
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.send_signal(signal.SIGUSR2)
                await asyncio.sleep(2)
                await self.kill()
        return self.process.returncode if self.process.returncode is not None else -9
