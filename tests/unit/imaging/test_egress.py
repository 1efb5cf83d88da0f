"""Image fetches reach public addresses only, checked on the address actually dialled."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpcore
import pytest

from consumer.errors import ImageRejected
from consumer.imaging.egress import (
    EgressPolicy,
    GuardedNetworkBackend,
    IPAddress,
    parse_networks,
)

REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "fe80::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "2001:db8::1",  # documentation
]
ALLOWED = ["8.8.8.8", "151.101.1.140", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(ImageRejected) as info:
        EgressPolicy().check(ipaddress.ip_address(address), "images.example")
    assert info.value.code == "image_url_blocked"
    assert "images.example" in info.value.message
    assert "MODSTREAM_IMAGING__FETCH_ALLOW_NETWORKS" in info.value.message


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    EgressPolicy().check(ipaddress.ip_address(address), "images.example")


def test_allowed_networks_open_exactly_those_ranges() -> None:
    policy = EgressPolicy(parse_networks(["10.20.0.0/16", "::1"]))
    policy.check(ipaddress.ip_address("10.20.3.4"), "minio.internal")
    policy.check(ipaddress.ip_address("::1"), "localhost")
    with pytest.raises(ImageRejected):
        policy.check(ipaddress.ip_address("10.21.0.1"), "elsewhere.internal")


def test_bad_allow_list_is_a_settings_error() -> None:
    from pydantic import ValidationError

    from consumer.runtime.settings import ImagingSettings

    with pytest.raises(ValidationError, match="CIDR"):
        ImagingSettings(fetch_allow_networks=["10.0.0.0/33"])


class _RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.dialled: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.dialled.append(host)
        raise httpcore.ConnectError("recorded, not connected")


def _resolving_to(*addresses: str) -> Any:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in addresses]

    return resolver


async def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    inner = _RecordingBackend()
    backend = GuardedNetworkBackend(
        EgressPolicy(), resolver=_resolving_to("8.8.8.8", "127.0.0.1"), inner=inner
    )
    with pytest.raises(ImageRejected, match=r"127\.0\.0\.1"):
        await backend.connect_tcp("rebind.example", 80)
    assert inner.dialled == [], "nothing may be dialled once any answer is refused"


async def test_the_checked_address_is_the_one_dialled() -> None:
    inner = _RecordingBackend()
    backend = GuardedNetworkBackend(
        EgressPolicy(), resolver=_resolving_to("8.8.8.8", "8.8.4.4"), inner=inner
    )
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("images.example", 443)
    # The host name is never handed to the dialler, so it cannot resolve it differently.
    assert inner.dialled == ["8.8.8.8", "8.8.4.4"]


async def test_unix_sockets_are_never_used() -> None:
    backend = GuardedNetworkBackend(EgressPolicy(), inner=_RecordingBackend())
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_unix_socket("/var/run/docker.sock")


async def test_unresolvable_host_is_a_connect_error() -> None:
    backend = GuardedNetworkBackend(EgressPolicy(), inner=_RecordingBackend())
    with pytest.raises(httpcore.ConnectError, match="cannot resolve"):
        await backend.connect_tcp("no-such-host.invalid", 80)
