"""Where image fetches may connect: public addresses only, checked on the address dialled.

The check runs inside the HTTP client's connect step, after DNS resolution, on every address
the host name resolved to. A URL naming a private host, a redirect to one, and a DNS answer
that changes between a check and the connection (rebinding) are therefore all refused: there
is no separate check that the connection could disagree with. TLS still verifies the
certificate against the URL's host name, not the address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import httpcore
import httpx

from consumer.contract.reasons import ReasonCode
from consumer.errors import ImageRejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (``10.0.0.0/8``, ``::1/128``, or a bare address) as networks."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def _kind(address: IPAddress) -> str:
    for name in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    return "non-public"


class EgressPolicy:
    """Refuse every address that is not globally routable unicast, except allowed networks.

    That covers loopback, RFC 1918 and unique-local ranges, link-local (including the cloud
    metadata address 169.254.169.254), carrier-grade NAT, multicast, documentation and reserved
    ranges, and IPv4-mapped IPv6 forms of all of them.
    """

    def __init__(self, allowed: Sequence[IPNetwork] = ()) -> None:
        self._allowed = tuple(allowed)

    def check(self, address: IPAddress, host: str) -> None:
        """Raise ImageRejected(``image_url_blocked``) unless ``address`` may be connected to."""
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        effective: IPAddress = mapped if mapped is not None else address
        if any(effective in network for network in self._allowed):
            return
        if effective.is_global and not effective.is_multicast:
            return
        raise ImageRejected(
            ReasonCode.IMAGE_URL_BLOCKED,
            f"image host {host} resolves to {effective}, a {_kind(effective)} address; image "
            "URLs must point to public hosts (a private deployment can allow networks with "
            "MODSTREAM_IMAGING__FETCH_ALLOW_NETWORKS)",
        )


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an address literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        answers = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolve, check every address with the policy, then connect to a checked address."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolver(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolved to no address")
        # All of them, not just the one dialled first: a host with one private answer among
        # public ones is refused rather than left to the order of the answers.
        for address in addresses:
            self._policy.check(address, host)
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure if failure is not None else httpcore.ConnectError(host)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("image fetches never use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the connection pool dialling through the egress policy.

    Proxies from the environment are ignored: through a proxy the address checked would be
    the proxy's, not the image host's.
    """

    def __init__(self, policy: EgressPolicy, *, resolver: Resolver = resolve) -> None:
        super().__init__(trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        # httpx has no parameter for the network backend, so the pool it built is replaced by
        # the same pool dialling through the guard.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=5.0,
            network_backend=GuardedNetworkBackend(policy, resolver=resolver),
        )
