"""Where a recipient domain's mail goes: MX hosts in preference order (RFC 5321 §5.1).

Answers are cached for their TTL. A domain without MX records is its own host (implicit MX);
a null MX (RFC 7505, `0 .`) or a domain with no address at all cannot receive mail.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

from mta.config import Config, parse_listen
from mta.dns import DnsError, Resolver

MIN_TTL_S = 30.0
MAX_TTL_S = 3600.0


@dataclass(frozen=True)
class Hop:
    """One host to try: its name (for TLS verification and shaping) and where to connect."""

    name: str
    port: int


@dataclass(frozen=True)
class Route:
    hops: tuple[Hop, ...]

    @property
    def key(self) -> str:
        return ",".join(f"{h.name}:{h.port}" for h in self.hops)


class Unroutable(Exception):
    """The domain cannot receive mail (permanent) or DNS could not say (temporary)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class MxResolver:
    def __init__(self, config: Config, resolver: Resolver) -> None:
        self._resolver = resolver
        self._port = config.outbound.port
        self._relay: Route | None = None
        if config.outbound.relay:
            host, port = parse_listen("outbound.relay", config.outbound.relay)
            self._relay = Route((Hop(host, port),))
        self._static = {
            domain.lower(): Route(
                tuple(Hop(*parse_listen("dns.static_mx", str(h))) for h in hosts)
            )
            for domain, hosts in config.dns.static_mx.items()
        }
        self._routes: dict[str, tuple[float, Route | Unroutable]] = {}
        self._addresses: dict[str, tuple[float, list[str]]] = {}

    async def route(self, domain: str) -> Route:
        """Raises Unroutable when the domain cannot be delivered to (now or ever)."""
        if self._relay is not None:
            return self._relay
        domain = domain.lower().rstrip(".")
        if domain in self._static:
            return self._static[domain]
        now = time.monotonic()
        cached = self._routes.get(domain)
        if cached is None or cached[0] < now:
            try:
                result, ttl = await self._lookup(domain)
            except DnsError as exc:  # remembered briefly, so a dead zone does not stall batches
                result = Unroutable(f"DNS lookup failed: {exc}", permanent=False)
                ttl = MIN_TTL_S
            cached = (now + min(max(ttl, MIN_TTL_S), MAX_TTL_S), result)
            self._routes[domain] = cached
        if isinstance(cached[1], Unroutable):
            raise cached[1]
        return cached[1]

    async def _lookup(self, domain: str) -> tuple[Route | Unroutable, float]:
        records, ttl = await self._resolver.query_ttl(domain, "MX")
        hosts: list[tuple[int, str]] = []
        for record in records:
            preference, _, host = record.partition(" ")
            if preference.isdigit():
                hosts.append((int(preference), host.rstrip(".")))
        if any(host in ("", ".") for _, host in hosts):
            return Unroutable(f"{domain} does not accept mail (null MX)", permanent=True), ttl
        if hosts:
            random.shuffle(hosts)  # hosts of equal preference share the load (RFC 5321 §5.1)
            hosts.sort(key=lambda h: h[0])
            return Route(tuple(Hop(host, self._port) for _, host in hosts)), ttl
        if await self.addresses(domain):
            return Route((Hop(domain, self._port),)), ttl  # implicit MX (RFC 5321 §5.1)
        return Unroutable(f"{domain} has no MX and no address records", permanent=True), ttl

    def prune(self) -> None:
        """Drop expired answers (the caches would otherwise grow with every domain seen)."""
        now = time.monotonic()
        for cache in (self._routes, self._addresses):
            for key in [k for k, (expires, _) in cache.items() if expires < now]:
                del cache[key]

    async def addresses(self, host: str) -> list[str]:
        """IP addresses of an MX host (IPv4 first); an IP literal is its own address."""
        if _is_ip(host):
            return [host]
        now = time.monotonic()
        cached = self._addresses.get(host)
        if cached is not None and cached[0] >= now:
            return cached[1]
        found: list[str] = []
        ttls = []
        failure: DnsError | None = None
        for rdtype in ("A", "AAAA"):
            try:
                records, ttl = await self._resolver.query_ttl(host, rdtype)
            except DnsError as exc:  # the other family may still answer
                failure = exc
                continue
            found += records
            ttls.append(ttl)
        if not found and failure is not None:
            raise failure
        self._addresses[host] = (now + min(max(min(ttls), MIN_TTL_S), MAX_TTL_S), found)
        return found
