"""The SSRF guard for webhook URLs: which destinations the service may POST to.

One pure check (standard library only; the two settings it reads come in as `GuardSettings`), used twice: by
the API when a job, batch or default endpoint names a `webhook_url` (refused with `unsafe_webhook_url`), and by
the webhook worker right before each delivery, which re-resolves the name and then connects to the very address
it checked (so a DNS answer that changes between the check and the connection, "DNS rebinding", cannot steer a
delivery into the private network).

Refused unless `settings.webhook_allowlist` admits them: private, loopback, link-local, multicast, reserved,
unspecified, shared (CGNAT) and otherwise non-global addresses, IPv4 and IPv6, including IPv4 addresses embedded
in IPv6 (IPv4-mapped, 6to4, NAT64, Teredo). Plain `http` is refused unless `settings.webhook_allow_http`.
It knows nothing of HTTP clients, jobs, storage or the database.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""`resolver(host, port)` returns the addresses (as strings) a name resolves to; raises OSError if none."""

MAX_URL_LENGTH = 2048
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeWebhookUrl(ValueError):
    """A webhook URL that is malformed or points somewhere the service must not send requests.

    `code` is the stable error code the API answers with (422 `unsafe_webhook_url`); `message` says why.
    """

    code = "unsafe_webhook_url"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnresolvableWebhookUrl(UnsafeWebhookUrl):
    """The host name does not resolve (possibly a transient DNS failure: the worker retries these)."""


class GuardSettings(Protocol):
    """The two settings the guard reads (the service's `Settings` satisfies it)."""

    webhook_allowlist: list[str]
    webhook_allow_http: bool


@dataclass(frozen=True)
class WebhookTarget:
    """A checked destination: the URL as given, its host and port, and the addresses that passed the check."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the operating system (`getaddrinfo`), keeping the order and dropping duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def check_webhook_url(
    url: str, settings: GuardSettings, resolver: Resolver | None = None
) -> WebhookTarget:
    """Parse, resolve and check `url`; every address the name resolves to must be admitted.

    Raises `UnsafeWebhookUrl` (or `UnresolvableWebhookUrl`) with a message saying why.
    """
    parts = _parse(url, settings)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _ip_literal(host)
    if literal is not None:
        raw = [str(literal)]
    else:
        try:
            raw = list((resolver or system_resolver)(host, port))
        except (OSError, UnicodeError) as exc:
            raise UnresolvableWebhookUrl(f"webhook host {host!r} does not resolve: {exc}") from None
        if not raw:
            raise UnresolvableWebhookUrl(f"webhook host {host!r} does not resolve")
    allowlist = _networks(settings.webhook_allowlist)
    for address in raw:
        refusal = address_refusal(_ip(address), allowlist)
        if refusal:
            raise UnsafeWebhookUrl(f"webhook host {host!r} resolves to {address}, {refusal} "
                                   "(UNIPIC_WEBHOOK_ALLOWLIST admits networks by CIDR)")
    return WebhookTarget(url=url, scheme=parts.scheme, host=host, port=port, addresses=tuple(raw))


def address_refusal(ip: IPAddress, allowlist: Sequence[IPNetwork] = ()) -> str | None:
    """Why `ip` may not be contacted (e.g. "a loopback address"), or None when it may."""
    candidates = [ip, *_embedded_ipv4(ip)]
    if any(c in net for c in candidates for net in allowlist if c.version == net.version):
        return None
    for c in candidates:
        reason = _non_public_reason(c)
        if reason:
            return reason
    return None


def _parse(url: str, settings: GuardSettings) -> SplitResult:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookUrl(f"webhook URL must be a string of 1 to {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UnsafeWebhookUrl("webhook URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UnsafeWebhookUrl(f"webhook URL is malformed: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise UnsafeWebhookUrl("webhook URL must use https")
    if parts.scheme == "http" and not settings.webhook_allow_http:
        raise UnsafeWebhookUrl("webhook URL must use https (plain http is disabled; "
                               "UNIPIC_WEBHOOK_ALLOW_HTTP=true allows it)")
    if not parts.hostname:
        raise UnsafeWebhookUrl("webhook URL has no host")
    return parts


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _ip(address: str) -> IPAddress:
    return ipaddress.ip_address(address.split("%", 1)[0])


def _networks(cidrs: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def _non_public_reason(ip: IPAddress) -> str | None:
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "a non-public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None
