"""Mailing lists (manual "Mailing Lists", mailgun-api.md §7): owns `mailing_lists`,
`list_members` and `list_sends`.

A list lives on a hosted domain and is named by its address; members are kept by the list's
stable id, so renaming a list moves no member. Addresses are kept lower-cased, as the
suppression lists keep them. Lists are few and read on every send and every message the MX
takes, so they are served from a cache reloaded when admin data changes (the admin_version
triggers); members are many and always read from the store.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from mta import tokens
from mta.accept.addresses import split_addresses, valid_addr_spec
from mta.config import ListsConfig
from mta.domains import Domains
from mta.store import Statement, Store
from mta.store.pages import Page, by_pivot

AccessLevel = Literal["readonly", "members", "everyone"]
ReplyPreference = Literal["list", "sender"]
ACCESS_LEVELS: dict[str, AccessLevel] = {
    "readonly": "readonly",
    "read-only": "readonly",  # the reference's table spells it so; responses say readonly
    "members": "members",
    "everyone": "everyone",
}
REPLY_PREFERENCES: tuple[ReplyPreference, ...] = ("list", "sender")
_LIST_COLUMNS = (
    "address, id, domain, name, description, access_level, reply_preference, created_at"
)
_MEMBER_COLUMNS = "address, name, vars, subscribed"
_UNSAFE = re.compile(r"[\r\n\0]")


class ListError(Exception):
    """A refused change, in the API's terms (status, Mailgun's message)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class MailingList:
    address: str
    id: str
    domain: str
    name: str = ""
    description: str = ""
    access_level: AccessLevel = "readonly"
    reply_preference: ReplyPreference = "list"
    created_at: float = 0.0


@dataclass(frozen=True)
class Member:
    address: str
    name: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    subscribed: bool = True


def _list(row: Any) -> MailingList:
    return MailingList(
        address=row["address"],
        id=row["id"],
        domain=row["domain"],
        name=row["name"],
        description=row["description"],
        access_level=row["access_level"],
        reply_preference=row["reply_preference"],
        created_at=row["created_at"],
    )


def _member(row: Any) -> Member:
    return Member(
        address=row["address"],
        name=row["name"],
        vars=orjson.loads(row["vars"]),
        subscribed=bool(row["subscribed"]),
    )


def parse_address(value: str) -> tuple[str, str] | None:
    """(name, lower-cased address) from `addr` or `Name <addr>`; None when it is not one
    address."""
    if "\r" in value or "\n" in value or "\0" in value:
        return None
    pairs = split_addresses(value.strip())
    if len(pairs) != 1 or not valid_addr_spec(pairs[0][1]):
        return None
    name, addr = pairs[0]
    return name, addr.lower()


def access_level(value: str) -> AccessLevel:
    found = ACCESS_LEVELS.get(value.strip().lower())
    if found is None:
        raise ListError("Invalid access level. Valid values are: readonly, members, everyone")
    return found


def reply_preference(value: str) -> ReplyPreference:
    lowered = value.strip().lower()
    if lowered not in REPLY_PREFERENCES:
        raise ListError("Invalid reply preference. Valid values are: list, sender")
    return lowered  # type: ignore[return-value]


class Lists:
    def __init__(self, store: Store, domains: Domains, config: ListsConfig) -> None:
        self._store = store
        self._domains = domains
        self._config = config
        self._cache: dict[str, MailingList] = {}
        self._cache_version = -1

    @property
    def config(self) -> ListsConfig:
        return self._config

    async def _refresh(self) -> None:
        version = self._store.admin_version()
        if version == self._cache_version:
            return
        rows = await self._store.fetchall(f"SELECT {_LIST_COLUMNS} FROM mailing_lists")
        self._cache = {row["address"]: _list(row) for row in rows}
        self._cache_version = version

    # -- lists -----------------------------------------------------------------------------------

    async def get(self, address: str) -> MailingList | None:
        await self._refresh()
        return self._cache.get(address.strip().lower())

    async def all(self) -> list[MailingList]:
        """Every list, in address order (the order both paging styles use)."""
        await self._refresh()
        return sorted(self._cache.values(), key=lambda lst: lst.address)

    async def any_of(self, addresses: Iterable[str]) -> dict[str, MailingList]:
        """The lists among `addresses` (lower-cased address -> list): no store read."""
        await self._refresh()
        found = {}
        for address in addresses:
            lst = self._cache.get(address.lower())
            if lst is not None:
                found[lst.address] = lst
        return found

    async def create(
        self,
        address: str,
        *,
        name: str = "",
        description: str = "",
        access: str = "readonly",
        reply: str | None = None,
    ) -> MailingList:
        parsed = parse_address(address)
        if parsed is None:
            raise ListError("'address' parameter is not a valid email address")
        display, addr = parsed
        domain = addr.rpartition("@")[2]
        if await self._domains.get(domain) is None:
            raise ListError(f"Domain not found: {domain}")
        level = access_level(access)
        preference = reply_preference(reply) if reply is not None else "list"
        self._check_text(name or display, description)
        if await self.get(addr) is not None:
            raise ListError(f"Duplicate object: Mailing list {addr} already exists")
        lst = MailingList(addr, tokens.token_hex(12), domain, name or display, description,
                          level, preference, time.time())
        await self._store.write(
            Statement(
                f"INSERT INTO mailing_lists ({_LIST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(lst.address, lst.id, lst.domain, lst.name, lst.description, lst.access_level,
                  lst.reply_preference, lst.created_at)],
            )
        )
        return lst

    async def update(
        self,
        lst: MailingList,
        *,
        address: str | None = None,
        name: str | None = None,
        description: str | None = None,
        access: str | None = None,
        reply: str | None = None,
    ) -> MailingList:
        """Only what is given changes; a new address must be on a hosted domain and free."""
        new_address, domain = lst.address, lst.domain
        if address is not None:
            parsed = parse_address(address)
            if parsed is None:
                raise ListError("'address' parameter is not a valid email address")
            new_address = parsed[1]
            domain = new_address.rpartition("@")[2]
            if await self._domains.get(domain) is None:
                raise ListError(f"Domain not found: {domain}")
            if new_address != lst.address and await self.get(new_address) is not None:
                raise ListError(f"Duplicate object: Mailing list {new_address} already exists")
        level = access_level(access) if access is not None else lst.access_level
        preference = reply_preference(reply) if reply is not None else lst.reply_preference
        updated = MailingList(
            new_address, lst.id, domain,
            lst.name if name is None else name,
            lst.description if description is None else description,
            level, preference, lst.created_at,
        )
        self._check_text(updated.name, updated.description)
        await self._store.write(
            Statement(
                "UPDATE mailing_lists SET address = ?, domain = ?, name = ?, description = ?,"
                " access_level = ?, reply_preference = ? WHERE id = ?",
                [(updated.address, updated.domain, updated.name, updated.description,
                  updated.access_level, updated.reply_preference, lst.id)],
            )
        )
        return updated

    async def delete(self, lst: MailingList) -> None:
        """The list and its members (a trigger), in one transaction."""
        await self._store.write(
            Statement("DELETE FROM mailing_lists WHERE id = ?", [(lst.id,)])
        )

    async def members_counts(self, lists: Sequence[MailingList]) -> dict[str, int]:
        """Members of each list (by list id), in one read."""
        if not lists:
            return {}
        marks = ",".join("?" * len(lists))
        rows = await self._store.fetchall(
            f"SELECT list_id, count(*) AS n FROM list_members WHERE list_id IN ({marks})"
            " GROUP BY list_id",
            [lst.id for lst in lists],
        )
        counts = {row["list_id"]: int(row["n"]) for row in rows}
        return {lst.id: counts.get(lst.id, 0) for lst in lists}

    def _check_text(self, name: str, description: str) -> None:
        if _UNSAFE.search(name) or _UNSAFE.search(description):
            raise ListError("name and description must not contain CR, LF or NUL")
        if not _encodable(name) or not _encodable(description):
            raise ListError("name and description must be valid UTF-8 text")
        limit = self._config.max_name_chars
        if len(name) > limit or len(description) > limit:
            raise ListError(f"name and description are limited to {limit} characters")

    # -- members ---------------------------------------------------------------------------------

    async def member(self, lst: MailingList, address: str) -> Member | None:
        row = await self._store.fetchone(
            f"SELECT {_MEMBER_COLUMNS} FROM list_members WHERE list_id = ? AND address = ?",
            (lst.id, address.strip().lower()),
        )
        return None if row is None else _member(row)

    async def is_subscribed(self, lst: MailingList, address: str) -> bool:
        row = await self._store.fetchone(
            "SELECT 1 FROM list_members WHERE list_id = ? AND address = ? AND subscribed = 1",
            (lst.id, address.strip().lower()),
        )
        return row is not None

    def checked_member(
        self,
        address: str,
        name: str | None = None,
        variables: Any = None,
        subscribed: bool = True,
    ) -> Member:
        """A member from client input: one valid address (`Name <addr>` gives the name when
        `name` is not given), vars a JSON object (or its text) within the size limit."""
        parsed = parse_address(address)
        if parsed is None:
            raise ListError("'address' parameter is not a valid email address")
        display, addr = parsed
        if isinstance(variables, (str, bytes)):
            text = variables.strip() or "{}"
            try:
                variables = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ListError("Failed to parse 'vars' as JSON object") from None
        if variables is None:
            variables = {}
        if not isinstance(variables, dict):
            raise ListError("'vars' must be a JSON object")
        try:
            encoded = orjson.dumps(variables)
        except orjson.JSONEncodeError:  # integers beyond 64 bits, lone surrogates
            raise ListError("'vars' must be a JSON object of storable values") from None
        if len(encoded) > self._config.max_vars_bytes:
            raise ListError(f"'vars' is limited to {self._config.max_vars_bytes} bytes")
        # values stand in headers of members' copies (%recipient.x%, %recipient_name%)
        if any(isinstance(v, str) and _UNSAFE.search(v) for v in variables.values()):
            raise ListError("'vars' values must not contain CR, LF or NUL")
        name = display if name is None else name
        if not _encodable(name) or not _encodable(addr):
            raise ListError("address and name must be valid UTF-8 text")
        if _UNSAFE.search(name):
            raise ListError("name must not contain CR, LF or NUL")
        if len(name) > self._config.max_name_chars:
            raise ListError(f"name is limited to {self._config.max_name_chars} characters")
        return Member(addr, name, variables, subscribed)

    async def add_member(self, lst: MailingList, member: Member, *, upsert: bool) -> Member:
        existing = await self.member(lst, member.address)
        if existing is not None and not upsert:
            raise ListError(f"Address already exists '{member.address}'")
        if existing is None:
            await self._check_room(lst, 1)
        await self._store.write(self.upsert_statement(lst, [member], upsert=True))
        return member

    async def update_member(
        self,
        lst: MailingList,
        current: Member,
        *,
        address: str | None = None,
        name: str | None = None,
        variables: Any = None,
        subscribed: bool | None = None,
    ) -> Member:
        """Only what is given changes."""
        changed = self.checked_member(
            address if address is not None else current.address,
            current.name if name is None and address is None else name,
            current.vars if variables is None else variables,
            current.subscribed if subscribed is None else subscribed,
        )
        if name is None and address is not None and not changed.name:
            changed = Member(changed.address, current.name, changed.vars, changed.subscribed)
        if changed.address != current.address and await self.member(lst, changed.address):
            raise ListError(f"Address already exists '{changed.address}'")
        await self._store.write(
            Statement(
                "UPDATE list_members SET address = ?, name = ?, vars = ?, subscribed = ?"
                " WHERE list_id = ? AND address = ?",
                [(changed.address, changed.name, orjson.dumps(changed.vars).decode(),
                  int(changed.subscribed), lst.id, current.address)],
            )
        )
        return changed

    async def delete_member(self, lst: MailingList, address: str) -> bool:
        rows = await self._store.write_returning(
            "DELETE FROM list_members WHERE list_id = ? AND address = ? RETURNING address",
            (lst.id, address.strip().lower()),
        )
        return bool(rows)

    def upsert_statement(
        self, lst: MailingList, members: Sequence[Member], *, upsert: bool
    ) -> Statement:
        """Members added in bulk: with `upsert` an existing member takes the new values, else
        it is left as it is (members.json's upsert=no)."""
        now = time.time()
        conflict = (
            " DO UPDATE SET name = excluded.name, vars = excluded.vars,"
            " subscribed = excluded.subscribed"
            if upsert
            else " DO NOTHING"
        )
        # a list deleted meanwhile takes no members (nothing would ever remove them)
        return Statement(
            "INSERT INTO list_members (list_id, address, name, vars, subscribed, created_at)"
            " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM mailing_lists WHERE id = ?)"
            " ON CONFLICT (list_id, address)" + conflict,
            [(lst.id, m.address, m.name, orjson.dumps(m.vars).decode(), int(m.subscribed), now,
              lst.id) for m in members],
        )

    async def check_room(self, lst: MailingList, adding: int) -> None:
        """A 400 when `adding` more members would pass the list's limit (counted as new)."""
        await self._check_room(lst, adding)

    async def _check_room(self, lst: MailingList, adding: int) -> None:
        count = (await self.members_counts([lst]))[lst.id]
        if count + adding > self._config.max_members:
            raise ListError(
                f"Mailing list {lst.address} may have at most {self._config.max_members} members"
            )

    async def members_page(
        self,
        lst: MailingList,
        which: Page,
        pivot: str,
        limit: int,
        subscribed: bool | None = None,
    ) -> list[Member]:
        """One page in address order (paging scheme B, pivot `address`)."""
        select = f"SELECT {_MEMBER_COLUMNS} FROM list_members WHERE list_id = ?"
        params: tuple[Any, ...] = (lst.id,)
        if subscribed is not None:
            select += " AND subscribed = ?"
            params = (lst.id, int(subscribed))
        rows = await by_pivot(self._store, select, params, "address", which, pivot.lower(),
                              limit)
        return [_member(row) for row in rows]

    async def members_skip(
        self, lst: MailingList, skip: int, limit: int, subscribed: bool | None = None
    ) -> tuple[int, list[Member]]:
        """(total, members) for the legacy skip/limit paging."""
        condition, params = "", ()
        if subscribed is not None:
            condition, params = " AND subscribed = ?", (int(subscribed),)
        total = await self._store.fetchone(
            f"SELECT count(*) AS n FROM list_members WHERE list_id = ?{condition}",
            (lst.id, *params),
        )
        rows = await self._store.fetchall(
            f"SELECT {_MEMBER_COLUMNS} FROM list_members WHERE list_id = ?{condition}"
            " ORDER BY address LIMIT ? OFFSET ?",
            (lst.id, *params, limit, skip),
        )
        return (int(total["n"]) if total else 0), [_member(row) for row in rows]

    async def subscribed_after(self, list_id: str, after: str, limit: int) -> list[Member]:
        """The next `limit` subscribed members after `after`, in address order (expansion)."""
        rows = await self._store.fetchall(
            f"SELECT {_MEMBER_COLUMNS} FROM list_members"
            " WHERE list_id = ? AND subscribed = 1 AND address > ? ORDER BY address LIMIT ?",
            (list_id, after, limit),
        )
        return [_member(row) for row in rows]


def unsubscribe_statement(list_address: str, member: str) -> Statement:
    """A member clicked %mailing_list_unsubscribe_url%: they stay, flagged unsubscribed."""
    return Statement(
        "UPDATE list_members SET subscribed = 0 WHERE address = ?"
        " AND list_id = (SELECT id FROM mailing_lists WHERE address = ?)",
        [(member.strip().lower(), list_address.strip().lower())],
    )


def _encodable(text: str) -> bool:
    """No lone surrogates (what a file read with surrogateescape holds for bad bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
