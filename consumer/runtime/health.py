"""A tiny HTTP server for ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).

It runs on the consumer's event loop, so a wedged loop fails the liveness probe too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)


class HealthState:
    """Flags the pipeline sets; ``/readyz`` is 200 only when every one of them holds."""

    def __init__(self) -> None:
        self.started = False
        self.kafka_ok = False
        self.triton_ok = False
        self.stopping = False

    def ready(self) -> bool:
        return self.started and self.kafka_ok and self.triton_ok and not self.stopping

    def describe(self) -> str:
        return (
            f"started={self.started} kafka={self.kafka_ok} triton={self.triton_ok} "
            f"stopping={self.stopping}"
        )


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        state: HealthState,
        render_extra: Callable[[], None] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._state = state
        self._before_scrape = render_extra
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        logger.info("serving /metrics, /healthz and /readyz on %s:%d", self._host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, content_type, body = self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            if self._before_scrape is not None:
                self._before_scrape()
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            text = (self._state.describe() + "\n").encode()
            if self._state.ready():
                return "200 OK", "text/plain", text
            return "503 Service Unavailable", "text/plain", text
        return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
