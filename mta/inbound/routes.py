"""Routes (mailgun-api.md §6.1): account-wide filter + actions pairs that decide what happens
to a received message. Owns the `routes` table.

Every route is parsed and compiled once (mta.inbound.expressions) into a table that is rebuilt
when admin data changes (`Store.admin_version`, as mta.domains does), reusing what was already
parsed. `evaluate` runs the table in priority order (lower first; equal priorities in creation
order): every matching route runs, `stop()` in a matched route ends the evaluation after it, and
`catch_all()` is true only when no earlier route matched. At most `inbound.max_routes_checked`
routes (the first ones in that order) are looked at.

Speed: most routes are one `match_recipient`. For those the evaluator first checks a literal
every match must contain (or start with), taken from the pattern, against the lower-cased
recipient, and runs the regex only when it is there (patterns in syntax only the `regex` package
reads get no such test); header values are prepared once per message, and only for the headers
some route asks about. Actions without captures are built once per table.

Time: every regex is given only the time left (mta.inbound.expressions, "Safety"); when it runs
out, the route being tried counts as not matched, no later route is tried, and a warning names it.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mta.config import Config
from mta.inbound.expressions import (
    Action,
    ActionError,
    Captures,
    Expression,
    ExpressionError,
    MatchInput,
    OutOfTime,
    ParsedAction,
    RouteSyntaxError,
    Term,
    check_references,
    clip,
    matching_clock,
    parse_action,
    parse_expression,
    timed_match,
)
from mta.store import Statement, Store

__all__ = [
    "Action",
    "ActionError",
    "ExpressionError",
    "MatchingTime",
    "Route",
    "RouteMatch",
    "RouteSyntaxError",
    "Routes",
    "RoutesOutOfTime",
]

log = logging.getLogger("mta.inbound.routes")

# Matching time one recipient may take (within the caller's MatchingTime for the message).
EVALUATION_BUDGET_S = 0.05


class MatchingTime:
    """What route matching may still take for one message, in matching_clock() seconds: each
    evaluation spends from it, and the waits between them do not count."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds


class RoutesOutOfTime(Exception):
    """Matching ran out of time before any route matched: the message should be tried again
    later (a temporary refusal), not taken for one that has no route."""
_RECIPIENT, _HEADER, _OTHER = 0, 1, 2
_COLUMNS = "id, priority, description, expression, actions, created_at"
MAX_PRIORITY = 2**63 - 1


@dataclass(frozen=True)
class Route:
    id: str
    priority: int
    description: str
    expression: str
    actions: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class RouteMatch:
    """A route that matched one message, with its actions for that message (captures in)."""

    route: Route
    actions: tuple[Action, ...]


@dataclass(frozen=True, eq=False)
class _Compiled:
    route: Route
    expression: Expression
    actions: tuple[ParsedAction, ...]
    fixed: tuple[Action, ...] | None  # the actions when none refers to a capture
    stops: bool

    def render(self, captures: Captures) -> tuple[Action, ...]:
        if self.fixed is not None:
            return self.fixed
        rendered = (a.render(captures) for a in self.actions)
        return tuple(a for a in rendered if a is not None)


def _compile(route: Route, expression: Expression, actions: tuple[ParsedAction, ...]) -> _Compiled:
    fixed: tuple[Action, ...] | None = None
    statics = [a.static for a in actions]
    if not any(a.refs for a in actions):
        fixed = tuple(a for a in statics if a is not None)
    return _Compiled(
        route=route,
        expression=expression,
        actions=actions,
        fixed=fixed,
        stops=any(a.kind == "stop" for a in actions),
    )


class RouteTable:
    """The compiled routes in evaluation order; `evaluate` is synchronous and does no I/O."""

    def __init__(self, entries: list[_Compiled], input_bytes: int) -> None:
        self._entries = entries
        self._input_bytes = input_bytes
        names: set[str] = set()
        # one flat tuple per route, so the loop does not chase attributes
        self._plan: list[tuple[int, str, bool, bool, Any, str, _Compiled]] = []
        for entry in entries:
            names |= entry.expression.header_names
            term = entry.expression.root
            if isinstance(term, Term) and term.compiled is not None:
                kind = _RECIPIENT if term.kind == "recipient" else _HEADER
                self._plan.append(
                    (
                        kind,
                        term.needle,
                        term.prefix,
                        term.fold,
                        term.compiled,
                        term.header,
                        entry,
                    )
                )
            else:
                self._plan.append((_OTHER, "", False, False, None, "", entry))
        self._header_names = frozenset(names)

    def __len__(self) -> int:
        return len(self._entries)

    def evaluate(
        self, recipient: str, headers: Sequence[tuple[str, str]], budget: MatchingTime | None = None
    ) -> list[RouteMatch]:
        """`budget` bounds a whole message's recipients together. RoutesOutOfTime when time ran
        out before any route matched."""
        started = matching_clock()
        own = EVALUATION_BUDGET_S if budget is None else min(EVALUATION_BUDGET_S, budget.left)
        try:
            matches, ran_out = self._evaluate(recipient, headers, started + own)
        finally:
            if budget is not None:
                budget.left -= matching_clock() - started
        if ran_out and not matches:
            raise RoutesOutOfTime(recipient)
        return matches

    def _evaluate(
        self, recipient: str, headers: Sequence[tuple[str, str]], deadline: float
    ) -> tuple[list[RouteMatch], bool]:
        rcpt = clip(recipient, self._input_bytes)
        folded = rcpt.lower() if rcpt.isascii() else None
        view: MatchInput | None = None
        matches: list[RouteMatch] = []
        for kind, needle, prefix, fold, pattern, header, entry in self._plan:
            if kind == _RECIPIENT:  # one match_recipient (fold: always), Term.search inlined
                if needle and folded is not None:
                    if prefix:
                        if not folded.startswith(needle):
                            continue
                    elif needle not in folded:
                        continue
                try:
                    found = timed_match(pattern, rcpt, deadline)
                except OutOfTime:
                    self._out_of_time(recipient, entry, len(matches))
                    return matches, True
                if found is None:
                    continue
            else:
                if view is None:
                    view = MatchInput(
                        rcpt, list(headers), self._input_bytes, deadline, self._header_names
                    )
                if kind == _HEADER:  # one match_header, Term.test inlined
                    found = None
                    try:
                        for value, lowered in view.headers.get(header, ()):
                            probe = lowered if fold else value
                            if needle and probe is not None:
                                if prefix:
                                    if not probe.startswith(needle):
                                        continue
                                elif needle not in probe:
                                    continue
                            found = timed_match(pattern, value, deadline)
                            if found is not None:
                                break
                    except OutOfTime:
                        self._out_of_time(recipient, entry, len(matches))
                        return matches, True
                    if found is None:
                        continue
                else:
                    view.matched_before = bool(matches)
                    try:
                        captures = entry.expression.evaluate(view)
                    except OutOfTime:
                        self._out_of_time(recipient, entry, len(matches))
                        return matches, True
                    if captures is None:
                        continue
                    matches.append(RouteMatch(entry.route, entry.render(captures)))
                    if entry.stops:
                        break
                    continue
            if entry.fixed is not None:
                actions = entry.fixed
            else:
                actions = entry.render(Captures(entry.expression, [found]))
            matches.append(RouteMatch(entry.route, actions))
            if entry.stops:
                break
        return matches, False

    def _out_of_time(self, recipient: str, entry: _Compiled, matched: int) -> None:
        log.warning(
            "routes for <%s>: matching time ran out at route %s (priority %d), which counts as "
            "not matched; later routes were not tried, %d route(s) matched before",
            recipient[:200],
            entry.route.id,
            entry.route.priority,
            matched,
        )


def _row_to_route(row: sqlite3.Row) -> Route:
    return Route(
        id=row["id"],
        priority=row["priority"],
        description=row["description"],
        expression=row["expression"],
        actions=tuple(orjson.loads(row["actions"])),
        created_at=row["created_at"],
    )


class Routes:
    """Owns the routes table; reads are served from a cache reloaded when admin data changed
    (in this process or through another one)."""

    def __init__(self, store: Store, config: Config) -> None:
        self._store = store
        self._input_bytes = max(1, config.inbound.regex_input_bytes)
        self._max_checked = max(0, config.inbound.max_routes_checked)
        self._routes: list[Route] = []  # evaluation order
        self._by_id: dict[str, Route] = {}
        self._table = RouteTable([], self._input_bytes)
        self._version = -1
        self._expressions: dict[str, Expression] = {}
        self._actions: dict[str, ParsedAction] = {}

    # -- parsing ----------------------------------------------------------------------------------

    def parse(
        self, expression: str, actions: Sequence[str]
    ) -> tuple[Expression, tuple[ParsedAction, ...]]:
        """Check an expression and its actions together; raises ExpressionError/ActionError."""
        parsed = parse_expression(expression)
        if not actions:
            raise ActionError("Invalid action: a route needs at least one action")
        parsed_actions = tuple(parse_action(a) for a in actions)
        check_references(parsed, list(parsed_actions))
        return parsed, parsed_actions

    # -- cache ------------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        version = self._store.admin_version()
        if version == self._version:
            return
        rows = await self._store.fetchall(f"SELECT {_COLUMNS} FROM routes ORDER BY priority, rowid")
        routes = [_row_to_route(row) for row in rows]
        self._rebuild(routes)
        self._version = version

    def _rebuild(self, routes: list[Route]) -> None:
        expressions: dict[str, Expression] = {}
        actions: dict[str, ParsedAction] = {}
        entries: list[_Compiled] = []
        for route in routes[: self._max_checked]:
            try:
                expression = expressions.get(route.expression) or self._expressions.get(
                    route.expression
                )
                if expression is None:
                    expression = parse_expression(route.expression)
                expressions[route.expression] = expression
                parsed: list[ParsedAction] = []
                for source in route.actions:
                    action = actions.get(source) or self._actions.get(source)
                    if action is None:
                        action = parse_action(source)
                    actions[source] = action
                    parsed.append(action)
                check_references(expression, parsed)
            except RouteSyntaxError as exc:  # e.g. written by hand
                log.error("route %s is not evaluated: %s", route.id, exc)
                continue
            entries.append(_compile(route, expression, tuple(parsed)))
        if len(routes) > self._max_checked:
            log.warning(
                "%d routes, only the first %d are evaluated (inbound.max_routes_checked)",
                len(routes),
                self._max_checked,
            )
        self._expressions, self._actions = expressions, actions
        self._routes = routes
        self._by_id = {r.id: r for r in routes}
        self._table = RouteTable(entries, self._input_bytes)

    async def table(self) -> RouteTable:
        """The current compiled routes (for callers that evaluate many messages at once)."""
        await self._refresh()
        return self._table

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, route_id: str) -> Route | None:
        await self._refresh()
        return self._by_id.get(route_id.strip().lower())

    async def list(self, skip: int = 0, limit: int = 100) -> tuple[int, list[Route]]:
        """(total, one page) in evaluation order."""
        await self._refresh()
        return len(self._routes), self._routes[skip : skip + limit]

    async def evaluate(
        self, recipient: str, headers: Sequence[tuple[str, str]], budget: MatchingTime | None = None
    ) -> list[RouteMatch]:
        """The routes that match a message for one recipient, in order, with their actions."""
        await self._refresh()
        return self._table.evaluate(recipient, headers, budget)

    # -- writes -----------------------------------------------------------------------------------

    async def create(
        self, priority: int, description: str, expression: str, actions: Sequence[str]
    ) -> Route:
        _check_priority(priority)
        expression = expression.strip()
        actions = tuple(a.strip() for a in actions)
        self.parse(expression, actions)
        route = Route(
            id=secrets.token_hex(12),
            priority=priority,
            description=description,
            expression=expression,
            actions=actions,
            created_at=time.time(),
        )
        await self._store.write(
            Statement(
                f"INSERT INTO routes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        route.id,
                        route.priority,
                        route.description,
                        route.expression,
                        orjson.dumps(list(route.actions)),
                        route.created_at,
                    )
                ],
            )
        )
        return route

    async def update(
        self,
        route_id: str,
        priority: int | None = None,
        description: str | None = None,
        expression: str | None = None,
        actions: Sequence[str] | None = None,
    ) -> Route | None:
        """Change the given fields (`actions` replaces them all); None when there is no such
        route. The expression and the actions are checked together, as on create."""
        current = await self.get(route_id)
        if current is None:
            return None
        if priority is not None:
            _check_priority(priority)
        route = Route(
            id=current.id,
            priority=current.priority if priority is None else priority,
            description=current.description if description is None else description,
            expression=current.expression if expression is None else expression.strip(),
            actions=current.actions if actions is None else tuple(a.strip() for a in actions),
            created_at=current.created_at,
        )
        if route == current:
            return current
        self.parse(route.expression, route.actions)
        await self._store.write(
            Statement(
                "UPDATE routes SET priority = ?, description = ?, expression = ?, actions = ?"
                " WHERE id = ?",
                [
                    (
                        route.priority,
                        route.description,
                        route.expression,
                        orjson.dumps(list(route.actions)),
                        route.id,
                    )
                ],
            )
        )
        return await self.get(route.id)

    async def delete(self, route_id: str) -> bool:
        route = await self.get(route_id)
        if route is None:
            return False
        await self._store.write(Statement("DELETE FROM routes WHERE id = ?", [(route.id,)]))
        return True


def _check_priority(priority: int) -> None:
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")
