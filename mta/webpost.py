"""HTTP posts to users' applications (route forwards, store notifications, webhooks).

The URL is the user's, so without a policy anyone who can create a route could make the server
post to itself, to the LAN or to a cloud metadata endpoint (169.254.169.254). Every address a
post connects to is checked against allow/deny CIDRs at connect time, so a DNS name is judged
by what it resolves to and an IP literal just the same. Names resolve through our own Resolver
(configured answers apply), no proxy comes from the environment, redirects are never followed,
and the reply's body is never read: it is the application's, not ours to keep.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from http import HTTPStatus
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from mta.dns import DnsError, Resolver


class Refused(OSError):
    """A destination address the policy does not allow (an OSError, so that aiohttp's
    connection attempt fails with it like with any unreachable address)."""


class PostError(Exception):
    """A post without a usable answer. The text is safe for logs and events: it quotes no URL
    (credentials) and nothing the application sent back."""

    def __init__(self, problem: str, status: int = 0) -> None:
        super().__init__(problem)
        self.status = status


class Policy:
    """Where posts may connect: an address is refused when it is in `deny` and not in `allow`.
    `setting` names the deny list in the refusal, so an operator knows what to change."""

    def __init__(self, allow: Iterable[str], deny: Iterable[str], setting: str) -> None:
        self._allow = [ipaddress.ip_network(str(c), strict=False) for c in allow]
        self._deny = [ipaddress.ip_network(str(c), strict=False) for c in deny]
        self._setting = setting

    def check(self, address: str) -> None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise Refused(f"address {address!r} is not an IP address") from None
        forms: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)  # ::ffff:127.0.0.1 reaches 127.0.0.1
        if any(f in n for f in forms for n in self._deny) and not any(
            f in n for f in forms for n in self._allow
        ):
            shown = " (".join(map(str, forms)) + ")" * (len(forms) - 1)
            raise Refused(f"address {shown} is not allowed ({self._setting})")

    def socket(self, addr_info: AddrInfoType) -> socket.socket:
        """aiohttp's socket factory: it sees every address about to be connected to, whether
        it came from DNS or straight from the URL (aiohttp resolves no IP literal)."""
        family, kind, proto, _name, sockaddr = addr_info
        self.check(str(sockaddr[0]))
        return socket.socket(family, kind, proto)


class _Names(AbstractResolver):
    """aiohttp's look-ups answered by our Resolver, so `dns.answers` apply to posts too."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        kinds = [(f, t) for f, t in ((socket.AF_INET, "A"), (socket.AF_INET6, "AAAA"))
                 if family in (socket.AF_UNSPEC, f)]
        outcomes = await asyncio.gather(
            *(self._resolver.query(host, t) for _f, t in kinds), return_exceptions=True
        )
        found: list[ResolveResult] = []
        failure: DnsError | None = None
        for (kind, _t), outcome in zip(kinds, outcomes, strict=True):
            if isinstance(outcome, DnsError):
                failure = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                found += [
                    ResolveResult(hostname=host, host=address, port=port, family=kind, proto=0,
                                  flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
                    for address in outcome
                ]
        if not found:  # an OSError: aiohttp reports it as a failed look-up of this host
            raise OSError(f"{host}: {failure or 'no address'}")
        return found

    async def close(self) -> None:
        """Nothing to release: the Resolver is shared."""


def session(resolver: Resolver, policy: Policy, timeout_s: float) -> aiohttp.ClientSession:
    """A session for posts to users' URLs. No cookies: one user's application must not see
    what another's set, and a post carries nothing from the one before."""
    connector = aiohttp.TCPConnector(resolver=_Names(resolver), socket_factory=policy.socket)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trust_env=False,  # an HTTP(S)_PROXY in the service's environment would bypass `policy`
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def post(
    client: aiohttp.ClientSession, url: str, form: aiohttp.FormData | aiohttp.payload.Payload
) -> int:
    """POST `form` (a form, or a body with its content type such as a webhook's JSON) to
    `url` and return the status. A 3xx raises: following it would turn the POST into a GET
    and send it wherever the reply points."""
    try:
        target = URL(url)
    except ValueError:
        raise PostError("invalid URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise PostError("only http:// and https:// URLs are posted to")
    try:
        async with client.post(target, data=form, allow_redirects=False) as response:
            status = response.status
    except aiohttp.ClientConnectorError as exc:
        why = exc.os_error.strerror or exc.os_error  # a Refused has its text and no strerror
        raise PostError(f"cannot connect to {exc.host}:{exc.port}: {why}") from None
    except TimeoutError:
        raise PostError("timed out") from None
    except aiohttp.ClientResponseError:  # its text quotes the URL, credentials and all
        raise PostError("the reply is not valid HTTP") from None
    except aiohttp.InvalidURL:  # its text is the URL
        raise PostError("invalid URL") from None
    except aiohttp.ClientOSError as exc:
        raise PostError(f"connection failed: {exc.strerror or exc}") from None
    except aiohttp.ClientError as exc:
        raise PostError(exc.__class__.__name__) from None
    if 300 <= status < 400:
        raise PostError(f"{status_line(status)}: redirects are not followed", status)
    return status


def status_line(status: int) -> str:
    """'HTTP 503 Service Unavailable', in the standard's words, never the application's."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def redact(url: str) -> str:
    """`url` without its user name and password (https://***@host/path), for logs and events;
    anything else (an email address) as it is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid URL)"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
