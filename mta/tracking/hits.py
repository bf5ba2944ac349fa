"""What recipients do with tracking links: each hit on an open pixel, click link or unsubscribe
link becomes an `opened`, `clicked` or `unsubscribed` event (and an unsubscribe a suppression,
in the same transaction).

A hit is attributed through its signed token (mta.tracking.links) and the message's own
`delivered` (else `accepted`) event, whose tags, campaigns, user-variables and mailing list the
new event carries, as Mailgun's do. A hit that cannot be attributed (its domain deleted, its
message never sent or purged from the history) records nothing, but the pixel and the redirect
still answer. An unsubscribe is the exception: its token alone says who leaves which mail, so
it is honoured while the domain exists, with whatever the history still knows.

Opens and clicks are recorded every time; stats count unique ones apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from mta.domains import Domains
from mta.events import (
    Event,
    EventKind,
    MailingList,
    MessageHeaders,
    MessageSummary,
    event_statements,
)
from mta.events.lookup import Sent, SentKey, sent_copies
from mta.lists import unsubscribe_statement as list_unsubscribe_statement
from mta.store import Statement, Store
from mta.suppressions import ALL_TAGS, unsubscribe_statement
from mta.tracking.clients import ClientDescriber
from mta.tracking.copies import UNSUBSCRIBE_SUBJECT
from mta.tracking.links import LIST_SCOPE, Link, LinkKind, TrackingLinks

log = logging.getLogger("mta.tracking")

SENT_CACHE_SIZE = 10_000  # sent copies whose attribution is remembered (~1 KB each)
_UNKNOWN = Sent()  # an unsubscribe whose message the history no longer knows


class Hits:
    """Verifies tracking tokens and records the hits they stand for."""

    def __init__(
        self, store: Store, domains: Domains, links: TrackingLinks, clients: ClientDescriber
    ) -> None:
        self._store = store
        self._domains = domains
        self._links = links
        self._clients = clients
        # what a sent copy's event says never changes, so an entry stays true (but for `at`
        # of a copy looked up before its delivery was recorded: earlier than the delivery, so
        # clicks may escape the scanner mark, never get it wrongly)
        self._sent: OrderedDict[SentKey, Sent] = OrderedDict()
        self._waiting: dict[SentKey, asyncio.Future[Sent | None]] = {}  # for the next read
        self._looking: asyncio.Task[None] | None = None

    async def opened(self, token: str, ip: str, headers: Mapping[str, str]) -> bool:
        """False when the token is not a valid open link (answered 404)."""
        link = self._links.read("o", token)
        if link is None:
            return False
        await self._record_or_log("opened", link, ip, headers)
        return True

    async def clicked(self, token: str, ip: str, headers: Mapping[str, str]) -> str | None:
        """Where to send the browser, or None when the token is not a valid click link."""
        link = self._links.read("c", token)
        if link is None or not isinstance(link.url, str) or not link.url:
            return None
        await self._record_or_log("clicked", link, ip, headers, url=link.url)
        return link.url

    def link(self, kind: LinkKind, token: str) -> Link | None:
        """The verified link, recording nothing (a page that asks before it acts; a HEAD)."""
        return self._links.read(kind, token)

    async def unsubscribe(
        self, token: str, ip: str, headers: Mapping[str, str], confirm: bool
    ) -> Link | None:
        """The link (None: not a valid unsubscribe link); `confirm` carries it out."""
        link = self._links.read("u", token)
        if link is None or not confirm:
            return link
        scope = link.scope
        if isinstance(scope, str) and scope.startswith(LIST_SCOPE):
            # unsubscribed from that list only: flagged on it, on no suppression list
            listed = MailingList(address=scope[len(LIST_SCOPE) :])
            await self._record("unsubscribed", link, ip, headers, listed=listed)
            return link
        tags = [t for t in scope if isinstance(t, str)] if isinstance(scope, list) else []
        # a tag link of a message without tags still asks to hear no more: the whole domain
        await self._record("unsubscribed", link, ip, headers, tags=tags or [ALL_TAGS])
        return link

    async def unsubscribe_by_mail(self, recipient: str, subject: str, ip: str) -> bool:
        """A List-Unsubscribe mailto arriving on the MX: `subject` holds the signed token
        (mta.tracking.copies); a mail without a valid token for the recipient's domain is not
        one and goes on to the routes."""
        token = subject.strip().removeprefix(UNSUBSCRIBE_SUBJECT.strip()).strip()
        link = self._links.read("u", token)
        if link is None or link.domain != recipient.rpartition("@")[2].lower():
            return False
        await self.unsubscribe(token, ip, {}, confirm=True)
        return True

    async def _record_or_log(
        self, kind: EventKind, link: Link, ip: str, headers: Mapping[str, str], **extra: Any
    ) -> None:
        """A person's click reaches its target, and the pixel answers, even when the store
        cannot take the event: that is logged, not shown to them."""
        try:
            await self._record(kind, link, ip, headers, **extra)
        except Exception:
            log.exception("could not record a tracking hit (%s, %s)", kind, link.message_id)

    async def _record(
        self,
        kind: EventKind,
        link: Link,
        ip: str,
        headers: Mapping[str, str],
        *,
        url: str | None = None,
        tags: list[str] | None = None,
        listed: MailingList | None = None,
    ) -> None:
        domain = await self._domains.get(link.domain)
        if domain is None:
            return
        sent = await self._attribution(domain.name, link)
        if sent is None:
            if kind != "unsubscribed":
                return
            sent = _UNKNOWN
        now = time.time()
        since = now - sent.at if kind == "clicked" and sent.at is not None else None
        event = Event(
            kind,
            timestamp=now,
            recipient=link.recipient,
            tags=sent.tags,
            campaigns=sent.campaigns,
            user_variables=sent.user_variables,
            mailing_list=sent.mailing_list or listed,
            message=MessageSummary(headers=MessageHeaders(message_id=link.message_id)),
            ip=ip,
            geolocation=self._clients.geolocation(ip),
            client_info=self._clients.client_info(headers.get("User-Agent", ""), since),
            url=url,
        )
        statements: list[Statement] = event_statements(domain.name, [event])
        if tags:
            statements.append(
                unsubscribe_statement(self._store.dialect, domain.name, link.recipient, tags, now)
            )
        if listed is not None:  # the member stays on the list, flagged unsubscribed
            statements.append(list_unsubscribe_statement(listed.address, link.recipient))
        await self._store.write(*statements)

    async def _attribution(self, domain: str, link: Link) -> Sent | None:
        key = (domain, link.message_id, link.recipient.lower())
        sent = self._sent.get(key)
        if sent is not None:
            self._sent.move_to_end(key)
            return sent
        found = self._waiting.get(key)
        if found is None:
            found = self._waiting[key] = asyncio.get_running_loop().create_future()
            if self._looking is None:
                self._looking = asyncio.create_task(self._look_up())
        # shielded: a waiter that goes away must not cancel the answer others wait for
        return await asyncio.shield(found)

    async def _look_up(self) -> None:
        """Looks up every copy asked about meanwhile in one query, until none is waiting (as
        the store's writer groups commits): a burst of hits makes a few reads, not one each."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                try:
                    found = await sent_copies(self._store, batch.keys())
                except Exception as exc:
                    for future in batch.values():
                        future.set_exception(exc)
                    continue
                for key, future in batch.items():
                    sent = found.get(key)
                    if sent is not None:
                        self._sent[key] = sent
                        if len(self._sent) > SENT_CACHE_SIZE:
                            self._sent.popitem(last=False)
                    future.set_result(sent)
        finally:
            self._looking = None
