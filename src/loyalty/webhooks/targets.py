"""Where webhooks may be sent: public addresses only, unless the deployment allows private ones.

A programme's admin registers the URL, and the service makes the request: without this
policy, an endpoint on 127.0.0.1, 10.x or 169.254.169.254 would let them reach the service's
own network (server-side request forgery). The URL's host is resolved and every address
checked when an endpoint is created or changed, and again at each connection of a delivery,
since DNS may change in between (or answer differently each time). The delivery connects to
the very address it checked. ``LOYALTY_WEBHOOK_ALLOW_PRIVATE_TARGETS`` is a deployment
setting; nothing in the API can change it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpx

if TYPE_CHECKING:
    from loyalty.settings import Settings

RESOLVE_TIMEOUT_SECONDS = 2.0
SETTING = "LOYALTY_WEBHOOK_ALLOW_PRIVATE_TARGETS"
Resolver = Callable[[str, int], Awaitable[list[str]]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address the host resolves to (A and AAAA), in the resolver's order."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_kind(address: str) -> str | None:
    """What kind of non-public address this is ('loopback', 'private' ...), or None if public."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, test in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unique-local", isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if test:
            return kind
    return None if ip.is_global else "non-public"


_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


@dataclass(frozen=True, kw_only=True)
class TargetPolicy:
    allow_private: bool = False
    # None: the module's resolve_host, looked up at each call (tests replace it).
    resolver: Resolver | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None) -> TargetPolicy:
        return cls(allow_private=bool(settings is not None and settings.webhook_allow_private_targets))

    async def resolve(self, host: str, port: int) -> list[str]:
        return await (self.resolver or resolve_host)(host, port)

    def refusal(self, host: str, addresses: Iterable[str]) -> str | None:
        """Why the host may not be called, given every address it resolved to; None if it may."""
        if self.allow_private:
            return None
        for address in addresses:
            kind = address_kind(address)
            if kind is not None:
                what = f"{address} is" if address == host else f"the host {host} resolves to {address},"
                return f"{what} a {kind} address; webhook endpoints must be public (see {SETTING})"
        return None


async def url_refusal(url: str, policy: TargetPolicy) -> str | None:
    """At create and update: why this URL's host may not receive webhooks, or None.

    A host that does not resolve now is accepted: each delivery resolves it again and
    checks what it finds, so the check cannot be dodged this way.
    """
    if policy.allow_private:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await policy.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, TimeoutError, UnicodeError):
            return None
    return policy.refusal(host, addresses)


class TargetRefused(httpcore.ConnectError):
    """A delivery's host resolved to an address the policy refuses; nothing was sent."""


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, checks every address, then connects to a checked one.

    httpcore still does TLS with the URL's host name (SNI and certificate check), so https
    stays correct while the TCP connection goes to the address that was checked.
    """

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.policy.resolve(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        reason = self.policy.refusal(host, addresses)
        if reason is not None:
            raise TargetRefused(f"webhook target refused: {reason}")
        error: Exception = httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("webhook target refused: unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _CheckedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: TargetPolicy) -> None:
        super().__init__(trust_env=False)
        # httpx takes no network backend of its own, so its connection pool is rebuilt with
        # one (same limits as httpx's defaults). No proxy from the environment: a proxy would
        # make the connection itself, unchecked.
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(policy),
        )


def delivery_client(policy: TargetPolicy, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """The HTTP client every webhook request goes through: checked, never redirected."""
    if policy.allow_private:
        return httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)
    return httpx.AsyncClient(timeout=timeout, transport=_CheckedTransport(policy), follow_redirects=False)
