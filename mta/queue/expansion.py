"""Sends to mailing lists, expanded into their members' recipient rows after the accepting
commit: a 100,000-member list is one stored message and one `list_sends` row when the sender
gets its 200 / 250, not 100,000 rows written while it waits.

A node leases a due list send and queues the list's subscribed members a chunk at a time, in
address order. Each chunk's recipient rows, their `accepted` events (with `mailing-list`) and
the move of the send's cursor are one transaction, so a crash resumes after the last chunk
committed; the last chunk removes the send. Each member's row keeps the member's name and vars
(`Personal`), so the copy rendered at delivery is theirs even if the member changes later.
Members who unsubscribed before their chunk was queued are not sent to.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import orjson

from mta.accept.template import Personal, personalised_variables
from mta.config import ListsConfig
from mta.domains import Domain, Domains
from mta.events import Event, Reject, event_statements
from mta.lists import Member
from mta.queue import (
    Delivery,
    Message,
    NewRecipient,
    delivery_event,
    enqueue_recipients,
)
from mta.store import Statement, Store

log = logging.getLogger("mta.queue")

# the next subscribed members of a list after an address, in address order
MembersAfter = Callable[[str, str, int], Awaitable[list[Member]]]

_CLAIM = (
    "UPDATE list_sends SET lease_until = ?1, lease_node = ?2"
    " WHERE id IN (SELECT id FROM list_sends WHERE due_at <= ?3 AND lease_until < ?3"
    " ORDER BY id LIMIT ?4{lock})"
    " RETURNING id, message_key, list_id, list_address, after, queued"
)
_CLAIM_SQL = {
    "sqlite": _CLAIM.format(lock=""),
    "postgresql": _CLAIM.format(lock=" FOR UPDATE SKIP LOCKED"),
}
_SENDS_AT_ONCE = 4
SANDBOX_REFUSAL = (
    "Sandbox subdomains are for test purposes only. Please add your own domain or add the"
    " address to authorized recipients"
)


class _Send(NamedTuple):
    id: int
    message_key: str
    list_id: str
    list_address: str
    after: str
    queued: int


class Expander:
    def __init__(
        self, store: Store, domains: Domains, members_after: MembersAfter, config: ListsConfig
    ) -> None:
        self._store = store
        self._domains = domains
        self._members_after = members_after
        self._config = config
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # this node's leases from a run that crashed: taken up again at once
        await self._store.write(
            Statement("UPDATE list_sends SET lease_until = 0 WHERE lease_node = ?",
                      [(self._store.node_id,)])
        )
        self._task = asyncio.create_task(self._loop(), name="list-expansion")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                expanded = await self.run_once()
            except Exception:
                log.exception("expanding list sends failed; trying again")
                expanded = 0
            if not expanded:
                await asyncio.sleep(self._config.expansion_poll_s)

    async def run_once(self) -> int:
        """Expand the list sends that are due (a few at a time); returns how many."""
        now = time.time()
        rows = await self._store.write_returning(
            _CLAIM_SQL[self._store.dialect],
            (now + self._config.expansion_lease_s, self._store.node_id, now, _SENDS_AT_ONCE),
        )
        for row in rows:
            await self._expand(_Send(row["id"], row["message_key"], row["list_id"],
                                     row["list_address"], row["after"], row["queued"]))
        return len(rows)

    async def _expand(self, send: _Send) -> None:
        row = await self._store.fetchone(
            "SELECT key, domain, sender, created_at, options, length(mime) AS size"
            " FROM messages WHERE key = ?",
            (send.message_key,),
        )
        domain = None if row is None else await self._domains.get(row["domain"])
        if row is None or domain is None:
            log.warning("dropping the send of <%s> to list <%s>: its message or domain is gone",
                        send.message_key, send.list_address)
            await self._store.write(self._done(send))
            return
        message = Message(key=row["key"], domain=row["domain"], sender=row["sender"],
                          created_at=row["created_at"], options=orjson.loads(row["options"]),
                          mime=None)
        after, queued = send.after, send.queued
        chunk = self._config.expansion_chunk
        while True:
            members = await self._members_after(send.list_id, after, chunk)
            last = len(members) < chunk
            statements = self._chunk(domain, message, row["size"], send, members)
            if members:
                after, queued = members[-1].address, queued + len(members)
            statements.append(
                self._done(send) if last else Statement(
                    "UPDATE list_sends SET after = ?, queued = ?, lease_until = ? WHERE id = ?",
                    [(after, queued, time.time() + self._config.expansion_lease_s, send.id)],
                )
            )
            await self._store.write(*statements)
            if last:
                log.info("queued <%s> for %d member(s) of list <%s>",
                         message.message_id, queued, send.list_address)
                return
            await asyncio.sleep(0)  # other work of the loop goes on between chunks

    def _chunk(
        self, domain: Domain, message: Message, size: int, send: _Send, members: list[Member]
    ) -> list[Statement]:
        """One chunk's recipient rows and their events (accepted; rejected for members a
        sandbox domain may not send to)."""
        variables = message.options.get("user-variables") or {}
        due = message.first_due
        rows: list[NewRecipient] = []
        events: list[Event] = []
        for member in members:
            personal = Personal(member.name, member.address, member.vars, keeps_to=True)
            own = personalised_variables(variables, personal.substituter()) if variables else {}
            delivery = Delivery(id=0, message=message, address=member.address, attempts=0,
                                to_header=None, user_variables=own, personal=personal,
                                mailing_list=send.list_address)
            if domain.is_sandbox and member.address not in domain.authorized_recipients:
                events.append(_sandbox_refusal(delivery, size))
                continue
            rows.append(NewRecipient(member.address, orjson.dumps(own) if own else None, None,
                                     personal.dump(), due, send.list_address))
            events.append(_accepted(delivery, size))
        statements = event_statements(domain.name, events) if events else []
        if rows:
            statements.insert(0, enqueue_recipients(message.key, rows))
        return statements

    @staticmethod
    def _done(send: _Send) -> Statement:
        return Statement("DELETE FROM list_sends WHERE id = ?", [(send.id,)])


def _accepted(d: Delivery, size: int) -> Event:
    """The member's `accepted` event; the stored template's size stands for the copy's."""
    event = delivery_event(d, "accepted", None, mail_from=None)
    assert event.message is not None
    return dataclasses.replace(event, message=dataclasses.replace(event.message, size=size))


def _sandbox_refusal(d: Delivery, size: int) -> Event:
    return dataclasses.replace(
        _accepted(d, size),
        kind="rejected",
        reject=Reject("invalid", f"Domain {d.message.domain} is not allowed to send:"
                                 f" {SANDBOX_REFUSAL}: {d.address}"),
    )
