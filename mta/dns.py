"""DNS look-ups (dnspython, async), with fixed answers from config standing in for public DNS."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from mta.config import DnsConfig, parse_nameserver

FIXED_TTL_S = 300.0  # answers from config
NEGATIVE_TTL_S = 60.0  # "no such name / record", when the zone does not say


class DnsError(Exception):
    """The look-up could not be answered (timeout, SERVFAIL): neither yes nor no."""


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


class Resolver:
    def __init__(self, config: DnsConfig) -> None:
        self._answers: dict[tuple[str, str], list[str]] = {}
        for key, records in config.answers.items():
            name, rdtype = key.split()
            self._answers[(_norm(name), rdtype.upper())] = [str(r) for r in records]
        # a listed name is answered only from config, for every type (split horizon)
        self._listed = {name for name, _ in self._answers}
        self._only_answers = config.only_answers
        self._resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver("dns.nameservers", s))
                for s in config.nameservers
            ]
        self._resolver.lifetime = config.timeout_s

    async def query(self, name: str, rdtype: str) -> list[str]:
        """Records as text: TXT strings joined, MX as 'pref host', names without the final dot.
        An empty list means the name or the record type does not exist."""
        records, _ttl = await self.query_ttl(name, rdtype)
        return records

    async def query_ttl(self, name: str, rdtype: str) -> tuple[list[str], float]:
        """`query`, with how long the answer may be cached (negative answers too)."""
        key = (_norm(name), rdtype.upper())
        if key in self._answers:
            return list(self._answers[key]), FIXED_TTL_S
        if self._only_answers or key[0] in self._listed:
            return [], FIXED_TTL_S
        try:
            answer = await self._resolver.resolve(key[0], key[1])
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], NEGATIVE_TTL_S
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsError(f"{name} {rdtype}: {exc.__class__.__name__}") from None
        records = []
        for rdata in answer:
            if key[1] == "TXT":
                records.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif key[1] == "MX":
                records.append(f"{rdata.preference} {_norm(rdata.exchange.to_text())}")
            else:
                records.append(_norm(rdata.to_text()))
        return records, float(answer.rrset.ttl if answer.rrset is not None else NEGATIVE_TTL_S)
