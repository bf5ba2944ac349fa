"""The Events API query: Mailgun's filter expressions, time range, and opaque page tokens.

A filter expression (`accepted OR delivered`, `NOT "foo bar"`, `>1000 <5000`, parentheses) is
parsed into a tree and turned into parameterised SQL; nothing is ever evaluated as code.
A page token carries the whole query plus the position, so following `paging.next` needs no
server-side state.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from mta.dates import parse_date
from mta.events import SEP
from mta.store import Store

MAX_LIMIT = 300

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


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise QueryError(f"invalid filter expression: {text!r}")
        pos = match.end()
        lpar, rpar, phrase, word = match.groups()
        if lpar:
            tokens.append(("(", lpar))
        elif rpar:
            tokens.append((")", rpar))
        elif phrase is not None:
            tokens.append(("term", phrase))
        elif word in ("AND", "OR", "NOT"):
            tokens.append((word, word))
        else:
            tokens.append(("term", word))
    return tokens


class _Parser:
    def __init__(self, field_name: str, text: str) -> None:
        self.field = field_name
        self.column, self.kind = FIELDS[field_name]
        self.tokens = _tokenize(text)
        self.pos = 0
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

    def _not(self) -> str:
        if self._peek() == "NOT":
            self.pos += 1
            return f"(NOT {self._not()})"
        return self._atom()

    def _atom(self) -> str:
        kind = self._peek()
        if kind == "(":
            self.pos += 1
            inner = self._or()
            if self._peek() != ")":
                raise QueryError(f"unbalanced parentheses in filter for '{self.field}'")
            self.pos += 1
            return inner
        if kind != "term":
            raise QueryError(f"invalid filter expression for '{self.field}'")
        term = self.tokens[self.pos][1]
        self.pos += 1
        return self._term(term)

    def _term(self, term: str) -> str:
        col, kind = self.column, self.kind
        if kind == "number":
            match = re.fullmatch(r"([<>]?)(\d+)", term)
            if not match:
                raise QueryError(f"'{self.field}' takes numbers, >N or <N, got {term!r}")
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
        if kind == "item" or (kind == "item-or-equal" and "@" in lowered):
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
        try:
            data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            query = cls(
                filters=[(str(f), str(v)) for f, v in data["filters"]],
                ascending=bool(data["ascending"]),
                begin=data["begin"],
                end=data["end"],
                limit=int(data["limit"]),
                cursor=tuple(data["cursor"]) if data["cursor"] else None,  # type: ignore[arg-type]
                backwards=bool(data["backwards"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise QueryError("invalid page token") from None
        query.validate()
        return query

    @classmethod
    def from_params(cls, params: list[tuple[str, str]], default_limit: int) -> EventQuery:
        query = cls(limit=default_limit)
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
            elif name == "limit":
                if not value.strip().isdigit():
                    raise QueryError("'limit' must be a whole number")
                query.limit = int(value)
            elif name == "pretty":
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
        for name, expression in self.filters:
            filter_sql(name, expression)

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
        self, store: Store, domain: str, retention_days: float
    ) -> tuple[list[dict[str, Any]], tuple[str, str]]:
        """One page of event payloads in the query's order, and the next/previous page tokens."""
        low, high = self._range(retention_days)
        where = ["domain = ?", "ts >= ?", "ts <= ?"]
        params: list[Any] = [domain, max(low, 0.0), min(high, _FAR_FUTURE)]
        for name, expression in self.filters:
            sql, values = filter_sql(name, expression)
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
_TRUE = ("yes", "true", "1", "on")  # the boolean spellings clients send (Python SDK: True)
_FALSE = ("no", "false", "0", "off")


def _date(name: str, value: str) -> float:
    parsed = parse_date(value)
    if parsed is None:
        raise QueryError(f"'{name}' is not a valid date: {value!r} (RFC 2822 or epoch seconds)")
    return parsed
