"""The Events API query: Mailgun's filter expressions, time range, and opaque page tokens.

A filter expression (`accepted OR delivered`, `NOT "foo bar"`, `>1000 <5000`, parentheses) is
parsed into a tree and turned into parameterised SQL; nothing is ever evaluated as code.
A page token carries the whole query plus the position, so following `paging.next` needs no
server-side state.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from mta.dates import parse_date
from mta.events import SEP
from mta.store import Store

MAX_LIMIT = 300
# Bounds on what one query may ask for, so that parsing stays shallow (the parser recurses)
# and the SQL stays within SQLite's expression depth and variable count
MAX_TERMS = 100  # terms in all the filters of a query
MAX_NESTING = 20  # parentheses and NOTs inside each other
_MAX_NUMBER_DIGITS = 15  # a size term (SQLite integers are 64-bit; int() refuses 4,300 digits)
_SHOWN = 60  # characters of a client's expression quoted back in an error

# filter field -> (column, how a term matches)
FIELDS: dict[str, tuple[str, str]] = {
    "event": ("event", "equal"),
    "severity": ("severity", "equal"),
    "message-id": ("message_id", "message-id"),
    "recipient": ("recipient", "address"),
    "recipients": ("recipients", "item"),
    "tags": ("tags", "item"),
    "tag": ("tags", "item"),
    "attachment": ("attachments", "contains"),
    "from": ("from_addr", "contains"),
    "to": ("to_addr", "contains"),
    "subject": ("subject", "contains"),
    "list": ("list", "item-or-equal"),
    "size": ("size", "number"),
}


class QueryError(Exception):
    """Bad query parameters; the text goes back to the client in a 400."""


# -- filter expressions -----------------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(\()|(\))|"([^"]*)"|([^\s()"]+))')


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos, terms = [], 0, 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise QueryError(f"invalid filter expression: {_shown(text)}")
        pos = match.end()
        lpar, rpar, phrase, word = match.groups()
        if lpar:
            tokens.append(("(", lpar))
        elif rpar:
            tokens.append((")", rpar))
        elif word in ("AND", "OR", "NOT"):
            tokens.append((word, word))
        else:
            terms += 1
            if terms > MAX_TERMS:
                raise QueryError(f"filters may have at most {MAX_TERMS} terms in all")
            tokens.append(("term", phrase if phrase is not None else word))
    return tokens


class _Parser:
    def __init__(self, field_name: str, text: str) -> None:
        self.field = field_name
        self.column, self.kind = FIELDS[field_name]
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0
        self.params: list[Any] = []

    def parse(self) -> str:
        if not self.tokens:
            raise QueryError(f"empty filter for '{self.field}'")
        sql = self._or()
        if self.pos != len(self.tokens):
            raise QueryError(f"invalid filter expression for '{self.field}'")
        return sql

    def _peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def _or(self) -> str:
        parts = [self._and()]
        while self._peek() == "OR":
            self.pos += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def _and(self) -> str:
        parts = [self._not()]
        while self._peek() in ("AND", "NOT", "(", "term"):
            if self._peek() == "AND":
                self.pos += 1
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def _deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise QueryError(
                f"filter for '{self.field}' nests parentheses and NOT more than {MAX_NESTING} deep"
            )

    def _not(self) -> str:
        if self._peek() == "NOT":
            self.pos += 1
            self._deeper()
            inner = self._not()
            self.depth -= 1
            return f"(NOT {inner})"
        return self._atom()

    def _atom(self) -> str:
        kind = self._peek()
        if kind == "(":
            self.pos += 1
            self._deeper()
            inner = self._or()
            if self._peek() != ")":
                raise QueryError(f"unbalanced parentheses in filter for '{self.field}'")
            self.pos += 1
            self.depth -= 1
            return inner
        if kind != "term":
            raise QueryError(f"invalid filter expression for '{self.field}'")
        term = self.tokens[self.pos][1]
        self.pos += 1
        return self._term(term)

    def _term(self, term: str) -> str:
        col, kind = self.column, self.kind
        if kind == "number":
            match = re.fullmatch(rf"([<>]?)(\d{{1,{_MAX_NUMBER_DIGITS}}})", term)
            if not match:
                raise QueryError(
                    f"'{self.field}' takes numbers of up to {_MAX_NUMBER_DIGITS} digits, >N or"
                    f" <N, got {_shown(term)}"
                )
            self.params.append(int(match.group(2)))
            return f"{col} {match.group(1) or '='} ?"
        if term[:1] in "<>" and term[1:].isdigit():
            raise QueryError(f"'{self.field}' is not a numeric field")
        lowered = term.lower()
        if kind == "equal":
            self.params.append(lowered)
            return f"{col} = ?"
        if kind == "message-id":
            self.params.append(term.strip("<>"))
            return f"{col} = ?"
        if kind == "address" and "@" in lowered:
            self.params.append(lowered)
            return f"{col} = ?"
        if kind == "item-or-equal" and "@" in lowered:
            # a list address: the column holds the one list an event is about (Event.columns)
            self.params.append(lowered)
            return f"{col} = ?"
        if kind == "item":
            self.params.append(SEP + lowered + SEP if "@" in lowered or col == "tags" else lowered)
            return f"instr({col}, ?) > 0"
        self.params.append(lowered)
        return f"instr(lower({col}), ?) > 0"


def filter_sql(field_name: str, expression: str) -> tuple[str, list[Any]]:
    if field_name not in FIELDS:
        raise QueryError(f"'{field_name}' is not a valid filter field")
    parser = _Parser(field_name, expression)
    return parser.parse(), parser.params


# -- the query and its pages --------------------------------------------------------------------


@dataclass
class EventQuery:
    filters: list[tuple[str, str]] = field(default_factory=list)
    ascending: bool = False
    begin: float | None = None
    end: float | None = None
    limit: int = 100
    # position: events strictly after (ascending) / before (descending) this (ts, seq)
    cursor: tuple[float, int] | None = None
    # a 'previous' page walks back from the cursor, then is shown in the query's order
    backwards: bool = False

    def token(self, cursor: tuple[float, int] | None, backwards: bool) -> str:
        data = asdict(self) | {"cursor": cursor, "backwards": backwards}
        return base64.urlsafe_b64encode(orjson.dumps(data)).decode("ascii").rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> EventQuery:
        """The query a page token carries. The client may have edited it: every field must
        have the type we wrote, or SQL and comparisons would fail on it later."""
        try:
            data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            cursor = data["cursor"]
            query = cls(
                filters=[(f, v) for f, v in data["filters"]],
                ascending=data["ascending"],
                begin=data["begin"],
                end=data["end"],
                limit=data["limit"],
                cursor=None if cursor is None else (cursor[0], cursor[1]),
                backwards=data["backwards"],
            )
            if len(cursor or ()) not in (0, 2) or not query._well_typed():
                raise ValueError
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
            raise QueryError("invalid page token") from None
        query.validate()
        return query

    def _well_typed(self) -> bool:
        times = [t for t in (self.begin, self.end) if t is not None]
        if self.cursor is not None:
            times.append(self.cursor[0])
            if not _integer(self.cursor[1]):
                return False
        return (
            all(isinstance(f, str) and isinstance(v, str) for f, v in self.filters)
            and isinstance(self.ascending, bool)
            and isinstance(self.backwards, bool)
            and _integer(self.limit)
            and all(_integer(t) or (isinstance(t, float) and math.isfinite(t)) for t in times)
        )

    @classmethod
    def from_params(cls, params: list[tuple[str, str]], limit: int) -> EventQuery:
        """The first page's query; `limit` is read by the caller like every API's limit."""
        query = cls(limit=limit)
        ascending: bool | None = None
        for name, value in params:
            if name == "begin":
                query.begin = _date(name, value)
            elif name == "end":
                query.end = _date(name, value)
            elif name == "ascending":
                lowered = value.strip().lower()
                if lowered not in _TRUE + _FALSE:
                    raise QueryError("'ascending' must be yes or no")
                ascending = lowered in _TRUE
            elif name in ("limit", "pretty"):
                continue
            else:
                query.filters.append((name, value))
        if query.begin is not None and query.end is not None:
            implied = query.begin <= query.end
            if ascending is not None and ascending != implied:
                raise QueryError("'ascending' disagrees with the order of 'begin' and 'end'")
            query.ascending = implied
        else:
            # begin alone reads forwards from it unless told otherwise
            query.ascending = ascending if ascending is not None else query.begin is not None
        query.validate()
        return query

    def validate(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError(f"'limit' must be between 1 and {MAX_LIMIT}")
        terms = 0
        for name, expression in self.filters:
            terms += len(filter_sql(name, expression)[1])  # one parameter a term
            if terms > MAX_TERMS:
                raise QueryError(f"filters may have at most {MAX_TERMS} terms in all")

    def _range(self, retention_days: float) -> tuple[float, float]:
        horizon = time.time() - retention_days * 86400
        if self.ascending:
            low = self.begin if self.begin is not None else horizon
            high = self.end if self.end is not None else float("inf")
        else:
            high = self.begin if self.begin is not None else float("inf")
            low = self.end if self.end is not None else horizon
        return low, high

    async def run(
        self, store: Store, domain: str, retention_days: float, since: float = 0.0
    ) -> tuple[list[dict[str, Any]], tuple[str, str]]:
        """One page of event payloads in the query's order, and the next/previous page tokens.
        `since` is when the domain was created: events of an earlier domain of the same name
        (removed, their retention not over) are not shown to whoever added it again."""
        low, high = self._range(retention_days)
        filters = [(name, *filter_sql(name, expression)) for name, expression in self.filters]
        # Looking for given message-ids, SQLite would still walk the domain's events by time
        # (two index columns beat one): `domain || ''` leaves it the message-id index. Not for
        # NOT, which that index cannot answer.
        by_message = any(n == "message-id" and "NOT" not in sql for n, sql, _ in filters)
        where = ["domain || '' = ?" if by_message else "domain = ?", "ts >= ?", "ts <= ?"]
        params: list[Any] = [domain, max(low, since, 0.0), min(high, _FAR_FUTURE)]
        for _, sql, values in filters:
            where.append(sql)
            params += values
        forwards = self.ascending != self.backwards
        if self.cursor is not None:
            where.append("(ts, seq) > (?, ?)" if forwards else "(ts, seq) < (?, ?)")
            params += list(self.cursor)
        order = "ASC" if forwards else "DESC"
        rows = await store.fetchall(
            f"SELECT ts, seq, payload FROM events WHERE {' AND '.join(where)}"
            f" ORDER BY ts {order}, seq {order} LIMIT ?",
            [*params, self.limit],
        )
        if self.backwards:
            rows.reverse()
        items = [orjson.loads(row["payload"]) for row in rows]
        if rows:
            first, last = (rows[0]["ts"], rows[0]["seq"]), (rows[-1]["ts"], rows[-1]["seq"])
            return items, (self.token(last, False), self.token(first, True))
        if self.cursor is None:
            # an empty first page: next re-reads it (a live tail when ascending); nothing is
            # before it
            edge = (0.0, 0) if self.ascending else (_FAR_FUTURE, 0)
            return items, (self.token(None, False), self.token(edge, True))
        # An empty page stays at its cursor in its own direction (a live tail). Turning back must
        # include the cursor's own event (the page that led here showed it, the cursor excludes
        # it), so the turned page starts one seq step beyond the cursor, on this page's side.
        ts, seq = self.cursor
        later = 1 if self.ascending else -1  # the seq step that moves later in the query's order
        if self.backwards:
            return items, (self.token((ts, seq - later), False), self.token(self.cursor, True))
        return items, (self.token(self.cursor, False), self.token((ts, seq + later), True))


_FAR_FUTURE = 1e12
_SQLITE_INTEGER = range(-(2**63), 2**63)


def _integer(value: Any) -> bool:
    """An int SQLite can take (JSON booleans are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value in _SQLITE_INTEGER
_TRUE = ("yes", "true", "1", "on")  # the boolean spellings clients send (Python SDK: True)
_FALSE = ("no", "false", "0", "off")


def _date(name: str, value: str) -> float:
    parsed = parse_date(value)
    if parsed is None:
        raise QueryError(f"'{name}' is not a valid date: {value!r} (RFC 2822 or epoch seconds)")
    return parsed


# -- one message, one event (the control panel's history and event pages) -------------------

HISTORY_LIMIT = 1000  # events of one message shown at once (a list send has one per member)
# The domain and time conditions are written so that no index can serve them (`|| ''`, `+ 0`,
# the same on both engines): else SQLite, without statistics, prefers events_domain_ts (an
# equality and a range) to the message-id index and walks the domain's whole history.
_OF_MESSAGE = "message_id = ? AND domain || '' = ? AND ts + 0 >= ?"


async def message_events(
    store: Store, domain: str, message_id: str, since: float = 0.0, limit: int = HISTORY_LIMIT
) -> list[dict[str, Any]]:
    """Every event of one message of `domain`, oldest first (at most `limit`), found by the
    message-id index; `since` as in EventQuery.run."""
    rows = await store.fetchall(
        f"SELECT payload FROM events WHERE {_OF_MESSAGE} ORDER BY ts, seq LIMIT ?",
        (message_id.strip().strip("<>"), domain, since, limit),
    )
    return [orjson.loads(row["payload"]) for row in rows]


async def message_event(
    store: Store, domain: str, message_id: str, event_id: str, since: float = 0.0
) -> dict[str, Any] | None:
    """One event's payload by its id, looked up under its message-id (indexed; ids are not)."""
    row = await store.fetchone(
        f"SELECT payload FROM events WHERE {_OF_MESSAGE} AND id = ?",
        (message_id.strip().strip("<>"), domain, since, event_id),
    )
    return None if row is None else orjson.loads(row["payload"])
