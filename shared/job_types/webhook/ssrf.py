"""The SSRF guard: may a job open a connection to this host?

A webhook URL comes from whoever creates the job, and the worker runs inside our network,
next to the cloud metadata service and private databases. So the host is resolved here,
*every* address it resolves to is checked (a name that resolves to a public and a private
address would let an attacker pick), and the caller then connects to the checked address
itself, never to the name again: a second lookup could answer differently (DNS rebinding).

Refused unless an allowlisted network (``AJS_WEBHOOK_ALLOWLIST``) contains the address:
loopback, private, link-local, cloud metadata addresses, and anything else that is not a
global unicast address (CGNAT, multicast, unspecified, reserved, documentation). IPv6
forms that embed an IPv4 address (mapped, 6to4, NAT64) are judged by it as well.

Tests map names through :func:`use_resolver` instead of editing the system's resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Instance metadata endpoints. Most are link-local or private anyway; they are named so that
# the refusal says what the address is, and so that none of them hides in a broad rule.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "fd00:ec2::254",  # AWS IPv6 (Nitro)
    "169.254.170.2",  # AWS ECS task metadata and credentials
    "169.254.170.23",  # AWS EKS Pod Identity
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The target is not one a job may reach: nothing was contacted."""


class Unresolvable(Exception):
    """The name did not resolve (possibly for now: DNS failures can pass)."""


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_resolver: Resolver = system_resolver


@contextlib.contextmanager
def use_resolver(resolver: Resolver) -> Iterator[None]:
    """Resolve names with ``resolver`` inside the block (tests map names to addresses)."""
    global _resolver
    previous, _resolver = _resolver, resolver
    try:
        yield
    finally:
        _resolver = previous


def networks(allowlist: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(n, strict=False) for n in allowlist]


def _embedded(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if it is one of the forms that do."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allow: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``ip`` must not be contacted, or None when it may be."""
    allow = list(allow)
    if any(ip in net for net in allow if net.version == ip.version):
        return None
    inner = _embedded(ip)
    if inner is not None:
        why = refusal(inner, allow)
        if why is not None:
            return f"{why} (embedded in {ip})"
        if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip in NAT64):
            return None  # only a wrapper: the IPv4 address inside is what we reach
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public unicast address"
    return None


async def _addresses(name: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(name)]  # a literal address: nothing to resolve
    except ValueError:
        pass
    try:
        found = await _resolver(name, port)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"cannot resolve {name!r}: {exc}") from exc
    answers = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    if not answers:
        raise Unresolvable(f"{name!r} resolves to no address")
    return answers


async def resolve(host: str, port: int, allowlist: Iterable[str] = ()) -> str:
    """The address to connect to for ``host``: resolved once, every answer checked.

    Raises :class:`Refused` if any answer is refused, :class:`Unresolvable` if there is
    none. Connect to the returned address, not to ``host``.
    """
    allow = networks(allowlist)
    name = host.strip("[]")
    answers = await _addresses(name, port)
    for ip in answers:
        why = refusal(ip, allow)
        if why is not None:
            target = str(ip) if str(ip) == name else f"{name} (resolves to {ip})"
            raise Refused(f"refused to connect to {target}: {why}; only an address in "
                          "AJS_WEBHOOK_ALLOWLIST may be reached")
    return str(answers[0])
