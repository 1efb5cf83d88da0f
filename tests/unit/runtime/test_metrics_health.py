from __future__ import annotations

import asyncio

from consumer.runtime.health import HealthServer, HealthState
from consumer.runtime.metrics import OTHER_TENANT, Metrics, TenantLabels


def test_tenant_labels_are_bounded_but_pinned_tenants_always_keep_theirs() -> None:
    labels = TenantLabels(max_labels=2, always=["vip"])
    assert labels.label("a") == "a"
    assert labels.label("b") == "b"
    assert labels.label("c") == OTHER_TENANT
    assert labels.label("a") == "a"
    assert labels.label("vip") == "vip"


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_health_server_serves_metrics_liveness_and_readiness() -> None:
    metrics = Metrics()
    metrics.decisions.labels("block", "acme", "sexual_explicit").inc()
    state = HealthState()
    server = HealthServer("127.0.0.1", 0, metrics.registry, state)
    await server.start()
    try:
        status, body = await _get(server.port, "/metrics")
        assert status == 200
        assert (
            b'modstream_decisions_total{action="block",category="sexual_explicit",'
            b'tenant="acme"} 1.0' in body
        )
        assert (await _get(server.port, "/healthz"))[0] == 200
        status, body = await _get(server.port, "/readyz")
        assert status == 503
        assert b"triton=False" in body
        state.started = state.kafka_ok = state.triton_ok = True
        assert (await _get(server.port, "/readyz"))[0] == 200
        state.stopping = True
        assert (await _get(server.port, "/readyz"))[0] == 503
        assert (await _get(server.port, "/nope"))[0] == 404
    finally:
        await server.close()
