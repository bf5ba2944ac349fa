"""Bulk uploads of list members: parsing shared by the API (`members.json`, `members.csv`)
and `mta list import`, and writing them a chunk at a time with their events.

Parsing reads incrementally: a JSON array one entry at a time (`json_entries`), a CSV file one
row at a time (`csv_entries`). Each entry becomes a `Member` (through Lists.checked_member, so
an upload accepts exactly what a single add accepts) or a `Malformed` with its row: the 1-based
position in a JSON array, the line number in a CSV file. A malformed entry does not stop an
upload; what cannot be read past (not a JSON array, broken JSON syntax, a CSV without an
`address` column) raises `ImportFailure`.

`Upload` writes entries in chunks of `lists.upload_chunk`, one transaction each, with the
events of the entries in that chunk (mailgun-api.md §4.4): `list_member_uploaded` for each
member written, `list_member_upload_error` for each entry that was not (malformed, already a
member while upsert is off, or the list full), and `list_uploaded` with the counts in the last
chunk's transaction, all on the list's domain.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import orjson

from mta import tokens
from mta.events import Event, MailingList, event_statements
from mta.events.model import ListUpload, UploadedMember
from mta.lists import ListError, Lists, Member
from mta.lists import MailingList as List
from mta.store import Statement, Store

Format = Literal["json", "csv"]
REPORTED = 10  # failures kept (with their row) for the reply; the rest are only counted
DESCRIBED_CHARS = 200  # of an entry quoted back in an error event or a reply
_READ_CHARS = 64 * 1024
_IN_BATCH = 500  # addresses per `IN (...)` when looking for existing members
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# files are read with errors="surrogateescape": a byte that is not UTF-8 becomes one of these,
# which makes its entry malformed (never stored, never replaced by a guess)
_SURROGATE = re.compile("[\ud800-\udfff]")


class ImportFailure(Exception):
    """The upload cannot be read (further): not a JSON array, broken syntax, no address column."""


@dataclass(frozen=True)
class Malformed:
    row: int
    entry: str  # the entry as sent, shortened
    message: str


Parsed = tuple[int, Member | Malformed]


def described(text: str) -> str:
    """An entry quoted back: shortened, and bytes that were not UTF-8 shown as U+FFFD."""
    text = text if len(text) <= DESCRIBED_CHARS else text[:DESCRIBED_CHARS] + "..."
    return _SURROGATE.sub("\ufffd", text)


def _boolean(value: Any, default: bool) -> bool:
    """yes/no/true/false/1/0 (any case), a JSON boolean or 0/1; the default when absent."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("yes", "true", "1"):
            return True
        if lowered in ("no", "false", "0"):
            return False
    raise ListError(f"'subscribed' must be yes or no, got {described(repr(value))}")


def entry_member(lists: Lists, value: Any, *, subscribed: bool = True) -> Member:
    """A member from one JSON entry (`"a@b"`, `"Name <a@b>"` or an object with `address`,
    `name`, `vars`, `subscribed`); ListError when it is not one."""
    if isinstance(value, dict):
        return checked(
            lists,
            value.get("address"),
            subscribed=_boolean(value.get("subscribed"), subscribed),
            name=value.get("name"),
            variables=value.get("vars"),
        )
    if not isinstance(value, str):
        raise ListError("an entry must be an address or an object with an 'address'")
    return checked(lists, value, subscribed=subscribed)


def checked(
    lists: Lists, value: Any, *, subscribed: bool = True, name: Any = None, variables: Any = None
) -> Member:
    """Lists.checked_member for values from a parsed entry, whatever their types."""
    if value is None or value == "":
        raise ListError("'address' parameter is missing")
    # a name and an address fit well within this; anything longer is not one address
    if not isinstance(value, str) or len(value) > lists.config.max_name_chars + 1024:
        raise ListError("'address' parameter is not a valid email address")
    if name is not None and not isinstance(name, str):
        raise ListError("'name' must be a string")
    if name is not None and "\0" in name:  # no store keeps NUL in text
        raise ListError("name must not contain NUL characters")
    if _SURROGATE.search(value) or (name and _SURROGATE.search(name)):
        raise ListError("the entry is not valid UTF-8")
    try:
        return lists.checked_member(value, name or None, variables, subscribed)
    except (TypeError, ValueError, RecursionError):  # vars orjson cannot write (a huge int)
        raise ListError("'vars' cannot be stored: text must be UTF-8, integers 64-bit") from None


# -- JSON -----------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def json_values(stream: TextIO, max_entry_chars: int) -> Iterator[Any]:
    """The elements of the JSON array in `stream`, read a block at a time (an element longer
    than `max_entry_chars` is refused, so memory stays bounded whatever the file's size)."""
    buf, pos, eof = "", 0, False

    def fill() -> None:
        nonlocal buf, pos, eof
        more = stream.read(_READ_CHARS)
        if more:
            buf, pos = buf[pos:] + more, 0
        else:
            eof = True

    def skip_space() -> None:
        nonlocal pos
        while True:
            pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf) or eof:
                return
            fill()

    skip_space()
    if buf[pos : pos + 1] != "[":
        raise ImportFailure("the members must be a JSON array")
    pos += 1
    skip_space()
    if buf[pos : pos + 1] == "]":
        pos += 1
    else:
        number = 0
        while True:
            number += 1
            while True:
                try:
                    value, end = _DECODER.raw_decode(buf, pos)
                except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
                    if eof or len(buf) - pos > max_entry_chars:
                        reason = getattr(exc, "msg", None) or str(exc) or "too deeply nested"
                        raise ImportFailure(
                            f"entry {number} is not valid JSON: {reason}"
                        ) from None
                    fill()
                    continue
                if end == len(buf) and not eof:  # a number may go on in the next block
                    fill()
                    continue
                break
            if end - pos > max_entry_chars:
                raise ImportFailure(f"entry {number} is longer than {max_entry_chars} characters")
            pos = end
            yield value
            skip_space()
            separator = buf[pos : pos + 1]
            pos += 1
            if separator == "]":
                break
            if separator != ",":
                raise ImportFailure(f"expected ',' or ']' after entry {number}")
            skip_space()
    skip_space()
    if pos < len(buf):
        raise ImportFailure("unexpected text after the JSON array")


def max_entry_chars(lists: Lists) -> int:
    """The longest JSON entry worth reading: vars at their limit, escaped, and a name."""
    config = lists.config
    return 8 * config.max_vars_bytes + 4 * config.max_name_chars + 4096


def json_entries(lists: Lists, stream: TextIO) -> Iterator[Parsed]:
    """(position, Member or Malformed) for each element of a JSON array of members."""
    for number, value in enumerate(json_values(stream, max_entry_chars(lists)), start=1):
        try:
            yield number, entry_member(lists, value)
        except ListError as exc:
            text = value if isinstance(value, str) else _json_text(value)
            yield number, Malformed(number, described(text), exc.message)


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, ValueError):
        return json.dumps(value)


# -- CSV ------------------------------------------------------------------------------------------


def csv_entries(lists: Lists, stream: TextIO, *, subscribed: bool = True) -> Iterator[Parsed]:
    """(line, Member or Malformed) for each row of a CSV file whose header row names the
    columns: `address` (required), `name`, `vars` (a JSON object), `subscribed` (else
    `subscribed`); other columns are ignored, blank lines skipped. The header is read at the
    first step, so a file without an `address` column fails before any row is used."""
    reader = csv.reader(stream)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportFailure(f"the CSV header row cannot be read: {exc}") from None
    if header is None:
        raise ImportFailure("the CSV file is empty: expected a header row with 'address'")
    names = [name.strip().lower() for name in header]
    if "address" not in names:
        raise ImportFailure("the CSV header row has no 'address' column")
    at = {name: names.index(name) for name in ("address", "name", "vars", "subscribed")
          if name in names}
    return _csv_rows(lists, reader, at, subscribed)


def _csv_rows(
    lists: Lists, reader: Any, at: dict[str, int], subscribed: bool
) -> Iterator[Parsed]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a field over the size limit, a stray quote: this row only
            yield reader.line_num, Malformed(reader.line_num, "", f"unreadable CSV row: {exc}")
            continue
        if not row or not any(cell.strip() for cell in row):
            continue
        line = reader.line_num

        def cell(name: str, row: list[str] = row) -> str | None:
            index = at.get(name)
            return row[index] if index is not None and index < len(row) else None

        try:
            member = checked(
                lists,
                (cell("address") or "").strip(),
                subscribed=_boolean(cell("subscribed"), subscribed),
                name=cell("name") or None,
                variables=cell("vars"),
            )
        except ListError as exc:
            yield line, Malformed(line, described(",".join(row)), exc.message)
        else:
            yield line, member


# -- writing --------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What an upload did. `errors` and `malformed_rows` keep the first REPORTED."""

    task_id: str
    created: int = 0
    updated: int = 0
    skipped: int = 0  # already members while upsert was off: left as they were
    refused: int = 0  # the list was full
    malformed: int = 0
    errors: list[Malformed] = field(default_factory=list)  # of every kind
    malformed_rows: list[Malformed] = field(default_factory=list)  # malformed entries only

    @property
    def upserted(self) -> int:
        return self.created + self.updated

    @property
    def failed(self) -> int:
        return self.skipped + self.refused + self.malformed


class Upload:
    """One bulk upload to `lst`: `add` entries, then `finish`. Entries are written in chunks
    of lists.upload_chunk, each chunk in one transaction with its events; the last chunk's
    transaction also holds `list_uploaded`. The list's limit is counted from its size at the
    first write plus what this upload added."""

    def __init__(
        self,
        lists: Lists,
        store: Store,
        lst: List,
        *,
        upsert: bool,
        format: Format,
        subscribed: bool | None = None,
    ) -> None:
        self._lists = lists
        self._store = store
        self._list = lst
        self._upsert = upsert
        self._format: Format = format
        self._subscribed = subscribed
        self._chunk = lists.config.upload_chunk
        self._pending: list[Parsed] = []
        self._count: int | None = None
        self._mailing_list = MailingList(address=lst.address, list_id=lst.id)
        self.summary = Summary(tokens.token_hex(16))

    @property
    def task_id(self) -> str:
        return self.summary.task_id

    async def add(self, entry: Parsed) -> None:
        """Queue one entry; a chunk is written once the next one starts (so the last chunk,
        written by `finish`, is never empty unless the whole upload is)."""
        self._pending.append(entry)
        if len(self._pending) > self._chunk:
            chunk, self._pending = self._pending[: self._chunk], self._pending[self._chunk :]
            await self._write(chunk, final=False)

    async def finish(self, *, complete: bool = True) -> Summary:
        """Write what is left; with `complete` (the whole input was read) also the
        `list_uploaded` event."""
        chunk, self._pending = self._pending, []
        if chunk or complete:
            await self._write(chunk, final=complete)
        return self.summary

    def _failed(self, row: int, entry: str, message: str, events: list[Event]) -> None:
        summary = self.summary
        if len(summary.errors) < REPORTED:
            summary.errors.append(Malformed(row, entry, message))
        events.append(
            Event(
                "list_member_upload_error",
                mailing_list=self._mailing_list,
                upload=ListUpload(
                    task_id=self.task_id, format=self._format, member_description=entry,
                    error=message,
                ),
            )
        )

    async def _existing(self, addresses: list[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(addresses))
        for start in range(0, len(unique), _IN_BATCH):
            batch = unique[start : start + _IN_BATCH]
            rows = await self._store.fetchall(
                "SELECT address FROM list_members WHERE list_id = ? AND address IN"
                f" ({','.join('?' * len(batch))})",
                [self._list.id, *batch],
            )
            found.update(row["address"] for row in rows)
        return found

    async def _write(self, chunk: list[Parsed], *, final: bool) -> None:
        lists, summary = self._lists, self.summary
        if self._count is None:
            self._count = (await lists.members_counts([self._list]))[self._list.id]
        limit = lists.config.max_members
        members = [item for _, item in chunk if isinstance(item, Member)]
        existing = await self._existing([m.address for m in members]) if members else set()
        written: list[Member] = []
        events: list[Event] = []
        for row, item in chunk:
            if isinstance(item, Malformed):
                summary.malformed += 1
                if len(summary.malformed_rows) < REPORTED:
                    summary.malformed_rows.append(item)
                self._failed(row, item.entry, item.message, events)
                continue
            known = item.address in existing
            if known and not self._upsert:
                summary.skipped += 1
                self._failed(row, _member_text(item),
                             f"Address already exists '{item.address}'", events)
                continue
            if not known and self._count >= limit:
                summary.refused += 1
                self._failed(row, _member_text(item),
                             f"Mailing list {self._list.address} may have at most {limit}"
                             " members", events)
                continue
            if known:
                summary.updated += 1
            else:
                summary.created += 1
                self._count += 1
                existing.add(item.address)  # a second entry for it updates (or is skipped)
            written.append(item)
            events.append(
                Event(
                    "list_member_uploaded",
                    mailing_list=self._mailing_list,
                    upload=ListUpload(
                        task_id=self.task_id, format=self._format,
                        member=UploadedMember(
                            address=item.address, name=item.name, subscribed=item.subscribed
                        ),
                    ),
                )
            )
        if final:
            events.append(
                Event(
                    "list_uploaded",
                    mailing_list=self._mailing_list,
                    upload=ListUpload(
                        task_id=self.task_id, format=self._format, is_upsert=self._upsert,
                        upserted_count=summary.upserted, failed_count=summary.failed,
                        subscribed=self._subscribed,
                    ),
                )
            )
        statements: list[Statement] = []
        if written:
            statements.append(lists.upsert_statement(self._list, written, upsert=self._upsert))
        if events:
            statements += event_statements(self._list.domain, events)
        if statements:
            await self._store.write(*statements)


def _member_text(member: Member) -> str:
    return described(f"{member.name} <{member.address}>" if member.name else member.address)

