"""Route expressions and actions (mailgun-api.md §6.1): parsed by hand, never eval'd.

Grammar (names and keywords in any case; spaces and line breaks anywhere between tokens):

    expression  := conjunction ("or" conjunction)*          "and" binds tighter than "or"
    conjunction := factor ("and" factor)*
    factor      := "(" expression ")" | filter
    filter      := match_recipient(STRING) | match_header(STRING, STRING)
                 | catch_all() | catchall()
    action      := forward(STRING[, STRING ...]) | store() | store(notify=STRING) | stop()

A STRING is single- or double-quoted. A backslash keeps the next character inside the string;
in a pattern it is kept as written, so `"^chris\\+(.*)@example.com$"` is the regex
`^chris\\+(.*)@example.com$` and `"a\\"b"` is `a\\"b` (which the regex reads as `a"b`).

Matching:
- A pattern is a regular expression in the syntax of the `regex` package (Python's `re` syntax,
  which Mailgun's examples use, plus additions such as `\\p{L}`), applied with `match`:
  anchored at the start, not at the end (write `$` for a whole match), as in Mailgun's examples.
  `match_recipient` ignores case (addresses are compared without case in practice);
  `match_header`'s pattern is case-sensitive unless it says `(?i)`, its header name is not, and
  it matches when any value of that header matches (folded values are unfolded first).
- Only the first `inbound.regex_input_bytes` bytes of the recipient or of a header value are
  matched (a `$` then sees the end of that prefix).
- `catch_all()` is true when no earlier route matched the message.
- `or` and `and` stop at the first term that decides the result.

Captures: the groups of all the patterns of an expression are numbered one after another, in
the order the patterns are written, as if they were one regex: in
`match_recipient("(.*)@(.*)") and match_header("subject", "(\\d+)")` the subject's group is `\\3`.
A group of a pattern that did not take part (the other side of an `or`) is empty. A named group
`(?P<n>...)` is `\\g<n>`; when several patterns name a group alike, the first one (as written)
that captured something gives the value. In actions, `\\1`..`\\9`, `\\g<number>` and
`\\g<name>` are replaced; `\\\\`, `\\"` and `\\'` stand for the character; any other backslash is
kept. A value put into a URL is percent-encoded (`+` becomes `%2B`, `/` `%2F`; `@` is kept), so a
capture cannot change where a URL points; a value put into an address is checked again after the
substitution and the destination is dropped when the result is no address.

Safety: a hostile or careless pattern must not stall the server (matching runs on the event
loop). Every match is run by the `regex` package with `timeout=` set to the time left in the
matching budget (mta.inbound.routes: EVALUATION_BUDGET_S for one recipient, within the
message's `MatchingTime`), counted in the loop thread's CPU
time (`matching_clock`), so waits between recipients and a busy machine do not eat it. A match
that runs out of it is stopped by `regex` (at most ~0.2 ms late, measured) and counts as not
matched, and no further match is started (OutOfTime): the routes matched so far are the result
and a warning names the route; when none had matched, the message gets a temporary refusal.
So, whatever the patterns, header values and routes, a recipient costs the loop at most its
budget and a message at most its whole budget, plus that. `regex` counts the process's CPU
time: a match is stopped sooner while other threads of the process run. Matching keeps the GIL
(no `concurrent=True`): it is bounded anyway, and a loop that gave the GIL up for a match had
to wait behind a busy thread to get it back (measured: a 40 ms match took 134 ms that way,
47 ms keeping it). Parsing is bounded too:
each pattern is at most MAX_PATTERN_CHARS long and is compiled when the expression is parsed (a
bad regex is an ExpressionError naming it) -- but first refused when it would compile to more
than MAX_PATTERN_SIZE items, because `regex` writes out the required copies of a counted
repetition (`((a{999}){999}){999}` would take gigabytes). Not guaranteed: that a slow pattern
matches -- one that backtracks catastrophically on a text simply does not match it.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any
from urllib.parse import quote, urlsplit

import regex

from mta.accept import valid_addr_spec

MAX_EXPRESSION_CHARS = 8192
MAX_PATTERN_CHARS = 1000
MAX_TERMS = 32
MAX_NESTING = 16
MAX_ACTION_CHARS = 8192
MAX_DESTINATIONS = 50
MAX_PATTERN_SIZE = 10_000  # see _size: a few tens of ms and a few MB to compile at most

_EXPRESSION = "Invalid expression"
FILTERS = ("match_recipient", "match_header", "catch_all")
ACTIONS = ("forward", "store", "stop")


class RouteSyntaxError(ValueError):
    """A refused expression or action; the text names the problem and is shown to clients."""


class ExpressionError(RouteSyntaxError):
    pass


class ActionError(RouteSyntaxError):
    pass


class OutOfTime(Exception):
    """The matching time is spent: a match ran out of it, or none was left to start one."""


# -- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "name", "string", "(", ")", ",", "=", "end", "char" (anything else)
    text: str  # the name, or a string's content between its quotes (escapes kept)
    pos: int  # offset in the source, from 0


def _tokenize(source: str, error: type[RouteSyntaxError], what: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
        elif ch in "(),=":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch in "\"'":
            j = i + 1
            while j < n and source[j] != ch:
                j += 2 if source[j] == "\\" else 1
            if j >= n:
                raise error(f"{what}: unterminated string starting at position {i + 1}")
            tokens.append(_Token("string", source[i + 1 : j], i))
            i = j + 1
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            j = i + 1
            while j < n and source[j].isascii() and (source[j].isalnum() or source[j] == "_"):
                j += 1
            tokens.append(_Token("name", source[i:j], i))
            i = j
        else:  # left to the parser, which says what it expected there
            tokens.append(_Token("char", ch, i))
            i += 1
    tokens.append(_Token("end", "", n))
    return tokens


def _describe(token: _Token, end: str) -> str:
    if token.kind == "end":
        return end
    if token.kind == "string":
        return "a string"
    return repr(token.text) if token.kind == "char" else f"'{token.text}'"


class _Cursor:
    def __init__(
        self, tokens: list[_Token], error: type[RouteSyntaxError], what: str, noun: str
    ) -> None:
        self.tokens = tokens
        self.index = 0
        self.error = error
        self.what = what  # the start of every message, e.g. "Invalid expression"
        self.noun = noun

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def fail(self, token: _Token, expected: str) -> RouteSyntaxError:
        found = _describe(token, f"the end of the {self.noun}")
        return self.error(
            f"{self.what}: expected {expected} at position {token.pos + 1}, found {found}"
        )

    def expect(self, kind: str, expected: str) -> _Token:
        token = self.take()
        if token.kind != kind:
            raise self.fail(token, expected)
        return token

    def call_arguments(self) -> list[tuple[str | None, _Token]]:
        """`( [name=]STRING, ... )` after a function name: (keyword or None, string token)."""
        self.expect("(", "'('")
        args: list[tuple[str | None, _Token]] = []
        if self.peek().kind == ")":
            self.take()
            return args
        while True:
            token = self.take()
            keyword = None
            if token.kind == "name" and self.peek().kind == "=":
                self.take()
                keyword = token.text.lower()
                token = self.take()
            if token.kind != "string":
                raise self.fail(token, "a quoted string")
            args.append((keyword, token))
            after = self.take()
            if after.kind == ")":
                return args
            if after.kind != ",":
                raise self.fail(after, "',' or ')'")


# -- patterns -------------------------------------------------------------------------------------


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _regex_error(pattern: str, exc: regex.error) -> str:
    at = f" at position {exc.pos + 1} of the pattern" if exc.pos is not None else ""
    return f"{_shorten(pattern)!r} is not a valid regular expression: {exc.msg}{at}"


_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
_COUNT = re.compile(r"\{(\d*)(?:,\d*)?\}")


def _inner(op: Any, av: Any) -> list[Any]:
    """The sequences a node of `re`'s parse holds (a set's members are not one)."""
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op in _REPEATS:
        return [av[2]]
    if op is sre.BRANCH:
        return list(av[1])
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    if op is sre.GROUPREF_EXISTS:
        return [av[1]] if av[2] is None else [av[1], av[2]]
    return []


def _reads_alike(items: Any) -> bool:
    """Whether `regex` reads the pattern `re` parsed into `items` as `re` does. They differ
    where `regex` added syntax that `re` takes for literal text: `{...}` after an item (fuzzy
    matching, `x{e<=1}`) and `[:name:]` inside a set (`re` ends `[a[:digit:]]` at the first
    `]`); so a pattern with a literal `{` or `]` is not taken to be read alike."""
    for op, av in items:
        if op is sre.LITERAL and av in (ord("{"), ord("]")):
            return False
        if not all(_reads_alike(sub) for sub in _inner(op, av)):
            return False
    return True


def _re_parse(pattern: str, flags: int) -> Any | None:
    """`re`'s parse of a pattern when `regex` reads it alike, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Possible nested set": see _reads_alike
            tree = sre_parse.parse(pattern, flags)
        return tree if _reads_alike(tree) else None
    except (re.error, RecursionError, OverflowError, ValueError):
        return None


def _size(items: Any) -> int:
    """About how much work `regex` does to compile a parsed pattern: it writes out the required
    copies of a counted repetition, so nested counts multiply. Counting `x{n}` as n + 1 times
    `x` follows the measured time (patterns of size 10,000 compile in 3-20 ms here)."""
    total = 0
    for op, av in items:
        inner = sum(_size(sub) for sub in _inner(op, av))
        total += 1 + ((av[0] + 1) * inner if op in _REPEATS else inner)
    return total


def _coarse_size(pattern: str) -> int:
    """A bound of the same without a parse: every character repeated by every count."""
    size = len(pattern)
    for count in _COUNT.finditer(pattern):
        size *= int(count.group(1) or 0) + 1
        if size > MAX_PATTERN_SIZE:
            break
    return size


# -- literals every match contains (a cheap test before the regex) --------------------------------


def _needle(prefix: str, runs: list[str]) -> tuple[str, bool]:
    """The literal to test first, and whether it is a prefix. A long prefix is the most
    selective; otherwise a run with '@' and more (the domain: `.*@d3.example` is looked up as
    '@d3', not 'example'), otherwise the longest run."""
    if len(prefix) >= 3:
        return prefix, True
    best = max(runs, key=lambda r: len(r) + (100 if "@" in r and len(r) > 1 else 0), default="")
    if prefix and len(prefix) >= len(best):
        return prefix, True
    return best, False


def _literal_runs(tree: Any, fold: bool) -> tuple[str, list[str]]:
    """(prefix, runs): text every match of a parsed pattern starts with / contains, lower-cased
    when `fold` (then compared with the lower-cased text, ASCII only)."""
    runs: list[str] = []
    current: list[str] = []
    state = {"prefix": None, "consumed": False}

    def close() -> None:
        if current:
            runs.append("".join(current))
            if state["prefix"] is None and not state["consumed"]:
                state["prefix"] = runs[-1]
            current.clear()
        state["consumed"] = True

    def walk(items: Any, item_flags: int) -> None:
        for op, av in items:
            if op is sre.LITERAL:
                ch = chr(av)
                ignorecase = bool(item_flags & sre.SRE_FLAG_IGNORECASE)
                if fold and ch.isascii():
                    current.append(ch.lower())
                elif not fold and not ignorecase:
                    current.append(ch)
                else:
                    close()
            elif op is sre.SUBPATTERN:
                _group, add, remove, inner = av
                walk(inner, (item_flags | add) & ~remove)
            elif op is sre.AT and av in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
                continue
            else:
                close()

    walk(tree, int(tree.state.flags))
    close()
    return state["prefix"] or "", runs


# -- expressions ---------------------------------------------------------------------------------


def matching_clock() -> float:
    """The clock matching budgets run on: this thread's CPU time. The clock on the wall would
    also count what other sessions do on the loop and other processes on the CPU, and a
    server under load would find every message out of time before it started matching."""
    return time.thread_time()


def timed_match(pattern: regex.Pattern[str], text: str, deadline: float) -> regex.Match[str] | None:
    """`pattern.match(text)` given only the time left until `deadline` (matching_clock());
    OutOfTime when there is none or the match runs out of it."""
    left = deadline - matching_clock()
    if left <= 0:  # and never pass one below 0: regex takes a negative timeout for none at all
        raise OutOfTime
    try:
        return pattern.match(text, timeout=left)
    except TimeoutError:
        raise OutOfTime from None


@dataclass(eq=False)
class Term:
    """One filter of an expression. `index` is its place among the expression's terms."""

    kind: str  # "recipient", "header", "catch_all"
    index: int
    header: str = ""  # lower-cased
    pattern: str = ""
    compiled: regex.Pattern[str] | None = None
    needle: str = ""  # text every match contains (lower-cased when `fold`)
    prefix: bool = False  # ... at its start
    fold: bool = False

    def search(self, text: str, folded: str | None, deadline: float) -> regex.Match[str] | None:
        needle = self.needle
        if needle:
            probe = folded if self.fold else text
            if probe is not None:
                if self.prefix:
                    if not probe.startswith(needle):
                        return None
                elif needle not in probe:
                    return None
        assert self.compiled is not None
        return timed_match(self.compiled, text, deadline)

    def test(self, view: MatchInput, found: list[regex.Match[str] | None]) -> bool:
        if self.kind == "recipient":
            match = self.search(view.recipient, view.recipient_folded, view.deadline)
        elif self.kind == "header":
            match = None
            for value, folded in view.headers.get(self.header, ()):
                match = self.search(value, folded, view.deadline)
                if match is not None:
                    break
        else:
            return not view.matched_before
        if match is None:
            return False
        found[self.index] = match
        return True


@dataclass(eq=False)
class _All:
    parts: tuple[Node, ...]
    indexes: tuple[int, ...]

    def test(self, view: MatchInput, found: list[regex.Match[str] | None]) -> bool:
        for part in self.parts:
            if not part.test(view, found):
                for index in self.indexes:  # a failed conjunction leaves no captures behind
                    found[index] = None
                return False
        return True


@dataclass(eq=False)
class _Any:
    parts: tuple[Node, ...]

    def test(self, view: MatchInput, found: list[regex.Match[str] | None]) -> bool:
        return any(part.test(view, found) for part in self.parts)


Node = Term | _All | _Any


def clip(text: str, limit: int) -> str:
    """The longest prefix of `text` that is at most `limit` bytes in UTF-8."""
    if len(text) <= limit // 4:
        return text
    if text.isascii():
        return text[:limit]
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


class MatchInput:
    """One message as the filters see it, prepared once per recipient: the clipped recipient,
    and the clipped, unfolded values of the headers some route asks about, by lower-cased name
    (each with its lower-cased form when ASCII, for the literal pre-test)."""

    __slots__ = ("deadline", "headers", "matched_before", "recipient", "recipient_folded")

    def __init__(
        self,
        recipient: str,
        headers: list[tuple[str, str]],
        input_bytes: int,
        deadline: float,
        wanted: frozenset[str] | None = None,
    ) -> None:
        self.deadline = deadline  # matching_clock() at which matching time is spent
        self.recipient = clip(recipient, input_bytes)
        self.recipient_folded = self.recipient.lower() if self.recipient.isascii() else None
        self.matched_before = False
        self.headers: dict[str, list[tuple[str, str | None]]] = {}
        for name, value in headers:
            key = name.strip().lower()
            if wanted is not None and key not in wanted:
                continue
            if "\n" in value:
                value = value.replace("\r\n", "").replace("\n", "")
            value = clip(value, input_bytes)
            self.headers.setdefault(key, []).append(
                (value, value.lower() if value.isascii() else None)
            )


@dataclass(eq=False)
class Expression:
    """A parsed route expression."""

    source: str
    root: Node
    terms: tuple[Term, ...]
    group_count: int
    group_names: frozenset[str]
    header_names: frozenset[str]
    _numbers: tuple[tuple[int, int], ...] = field(repr=False)  # group -> (term, its group)
    _names: dict[str, tuple[int, ...]] = field(repr=False)  # name -> terms defining it

    def evaluate(self, view: MatchInput) -> Captures | None:
        found: list[regex.Match[str] | None] = [None] * len(self.terms)
        if not self.root.test(view, found):
            return None
        return Captures(self, found)


class Captures:
    """The groups of a matched expression, numbered expression-wide (see the module doc)."""

    __slots__ = ("_expression", "_found")

    def __init__(self, expression: Expression, found: list[regex.Match[str] | None]) -> None:
        self._expression = expression
        self._found = found

    def number(self, number: int) -> str:
        numbers = self._expression._numbers
        if not 1 <= number <= len(numbers):
            return ""
        term, local = numbers[number - 1]
        match = self._found[term]
        return (match.group(local) or "") if match is not None else ""

    def name(self, name: str) -> str:
        for term in self._expression._names.get(name, ()):
            match = self._found[term]
            if match is not None:
                value = match.group(name)
                if value is not None:
                    return value
        return ""


class _ExpressionParser:
    def __init__(self, source: str) -> None:
        tokens = _tokenize(source, ExpressionError, _EXPRESSION)
        self.cursor = _Cursor(tokens, ExpressionError, _EXPRESSION, "expression")
        self.terms: list[Term] = []
        self.depth = 0

    def parse(self) -> Node:
        if self.cursor.peek().kind == "end":
            raise ExpressionError(
                f"{_EXPRESSION}: it is empty; expected a filter such as "
                'match_recipient("..."), match_header("...", "...") or '
                "catch_all()"
            )
        node = self.disjunction()
        token = self.cursor.peek()
        if token.kind != "end":
            raise self.cursor.fail(token, "'and', 'or' or the end of the expression")
        return node

    def _keyword(self, word: str) -> bool:
        token = self.cursor.peek()
        if token.kind == "name" and token.text.lower() == word:
            self.cursor.take()
            return True
        return False

    def disjunction(self) -> Node:
        parts = [self.conjunction()]
        while self._keyword("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else _Any(tuple(parts))

    def conjunction(self) -> Node:
        start = len(self.terms)
        parts = [self.factor()]
        while self._keyword("and"):
            parts.append(self.factor())
        if len(parts) == 1:
            return parts[0]
        return _All(tuple(parts), tuple(range(start, len(self.terms))))

    def factor(self) -> Node:
        token = self.cursor.take()
        if token.kind == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise ExpressionError(
                    f"{_EXPRESSION}: parentheses nested more than {MAX_NESTING} deep at position "
                    f"{token.pos + 1}"
                )
            node = self.disjunction()
            self.cursor.expect(")", "')'")
            self.depth -= 1
            return node
        if token.kind != "name" or token.text.lower() in ("and", "or"):
            expected = "a filter (match_recipient, match_header, catch_all) or '('"
            raise self.cursor.fail(token, expected)
        return self.filter(token)

    def filter(self, token: _Token) -> Term:
        name = token.text.lower()
        if name == "catchall":
            name = "catch_all"
        if name not in FILTERS:
            raise ExpressionError(
                f"{_EXPRESSION}: unknown filter '{token.text}' at position {token.pos + 1}; "
                "expected match_recipient, match_header or catch_all"
            )
        args = self.cursor.call_arguments()
        wanted = {"match_recipient": 1, "match_header": 2, "catch_all": 0}[name]
        usage = {
            "match_recipient": 'match_recipient("pattern")',
            "match_header": 'match_header("header", "pattern")',
            "catch_all": "catch_all()",
        }[name]
        if any(keyword is not None for keyword, _t in args):
            raise ExpressionError(
                f"{_EXPRESSION}: {name} at position {token.pos + 1} takes no named arguments; "
                f"write {usage}"
            )
        if len(args) != wanted:
            raise ExpressionError(
                f"{_EXPRESSION}: {name} at position {token.pos + 1} takes {wanted} argument"
                f"{'' if wanted == 1 else 's'}, got {len(args)}; write {usage}"
            )
        if len(self.terms) >= MAX_TERMS:
            raise ExpressionError(f"{_EXPRESSION}: more than {MAX_TERMS} filters")
        index = len(self.terms)
        if name == "catch_all":
            term = Term("catch_all", index)
        elif name == "match_recipient":
            term = self.regex_term("recipient", index, "", args[0][1], ignorecase=True)
        else:
            header = args[0][1].text.strip()
            if not header or not all(33 <= ord(c) <= 126 and c != ":" for c in header):
                raise ExpressionError(
                    f"{_EXPRESSION}: {header!r} at position {args[0][1].pos + 1} is not a header "
                    "name (printable ASCII without spaces or ':')"
                )
            term = self.regex_term("header", index, header.lower(), args[1][1], ignorecase=False)
        self.terms.append(term)
        return term

    def regex_term(
        self, kind: str, index: int, header: str, token: _Token, *, ignorecase: bool
    ) -> Term:
        pattern = token.text
        if len(pattern) > MAX_PATTERN_CHARS:
            raise ExpressionError(
                f"{_EXPRESSION}: the pattern at position {token.pos + 1} is {len(pattern)} "
                f"characters long; the limit is {MAX_PATTERN_CHARS}"
            )
        tree = _re_parse(pattern, re.IGNORECASE if ignorecase else 0)
        try:
            size = _coarse_size(pattern) if tree is None else _size(tree)
        except RecursionError:
            size = _coarse_size(pattern)
        if size > MAX_PATTERN_SIZE:
            raise ExpressionError(
                f"{_EXPRESSION}: pattern {_shorten(pattern)!r} repeats too much: it would compile "
                f"to about {size:.1e} items (the limit is {MAX_PATTERN_SIZE}); counted "
                "repetitions like '{100}' multiply when nested"
            )
        try:
            compiled = regex.compile(pattern, regex.IGNORECASE if ignorecase else 0)
        except regex.error as exc:
            raise ExpressionError(
                f"{_EXPRESSION}: {_regex_error(pattern, exc)} (the string at position "
                f"{token.pos + 1} of the expression)"
            ) from None
        except (RecursionError, OverflowError, ValueError) as exc:
            raise ExpressionError(
                f"{_EXPRESSION}: pattern {_shorten(pattern)!r} cannot be compiled: {exc}"
            ) from None
        if tree is None:  # only regex reads it: no literal pre-test
            return Term(kind, index, header, pattern, compiled)
        fold = bool(tree.state.flags & sre.SRE_FLAG_IGNORECASE)
        needle, at_start = _needle(*_literal_runs(tree, fold))
        return Term(kind, index, header, pattern, compiled, needle, at_start, fold)


def parse_expression(source: str) -> Expression:
    """Parse and check a route expression; raises ExpressionError naming the problem."""
    text = source.strip()
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"{_EXPRESSION}: it is {len(text)} characters long; the limit is {MAX_EXPRESSION_CHARS}"
        )
    parser = _ExpressionParser(source)  # positions as the client wrote them
    root = parser.parse()
    terms = tuple(parser.terms)
    numbers: list[tuple[int, int]] = []
    names: dict[str, list[int]] = {}
    for term in terms:
        if term.compiled is None:
            continue
        numbers += [(term.index, local) for local in range(1, term.compiled.groups + 1)]
        for name in term.compiled.groupindex:
            names.setdefault(name, []).append(term.index)
    return Expression(
        source=text,
        root=root,
        terms=terms,
        group_count=len(numbers),
        group_names=frozenset(names),
        header_names=frozenset(t.header for t in terms if t.kind == "header"),
        _numbers=tuple(numbers),
        _names={name: tuple(indexes) for name, indexes in names.items()},
    )


# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """An action of a matched route, captures substituted: forward to `destinations` (URLs and
    addresses), store (and POST a notification to `notify`), or stop the evaluation."""

    kind: str  # "forward", "store", "stop"
    destinations: tuple[str, ...] = ()
    notify: str | None = None


@dataclass(frozen=True, slots=True)
class _Ref:
    number: int = 0
    name: str = ""

    def __str__(self) -> str:
        return f"\\g<{self.name}>" if self.name else f"\\{self.number}"


_GROUP_REF = re.compile(r"g<([^<>]*)>")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Template:
    """A destination or notify URL with its capture references."""

    pieces: tuple[str | _Ref, ...]
    url: bool

    @property
    def refs(self) -> tuple[_Ref, ...]:
        return tuple(p for p in self.pieces if isinstance(p, _Ref))

    def render(self, captures: Captures | None) -> str:
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            if captures is None:
                value = ""
            elif piece.name:
                value = captures.name(piece.name)
            else:
                value = captures.number(piece.number)
            out.append(quote(value, safe="@") if self.url else value)
        return "".join(out)


def _template(raw: str, what: str) -> tuple[str | _Ref, ...]:
    pieces: list[str | _Ref] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            pieces.append("".join(text))
            text.clear()

    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\" or i + 1 == len(raw):
            text.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt in "123456789":
            flush()
            pieces.append(_Ref(number=int(nxt)))
            i += 2
        elif nxt == "g":
            found = _GROUP_REF.match(raw, i + 1)
            inner = found.group(1) if found else ""
            if found is None or not (_NAME.fullmatch(inner) or (inner.isdigit() and int(inner))):
                raise ActionError(
                    f"{what}: bad group reference {raw[i : i + 12]!r}; write \\g<name> or "
                    "\\g<number>, or \\1 to \\9"
                )
            flush()
            pieces.append(_Ref(number=int(inner)) if inner.isdigit() else _Ref(name=inner))
            i = found.end()
        elif nxt in "\\\"'":
            text.append(nxt)
            i += 2
        else:
            text.append(ch + nxt)
            i += 2
    flush()
    return tuple(pieces)


def is_url(text: str) -> bool:
    if not text or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _looks_like_url(text: str) -> bool:
    return "://" in text or text.lower().startswith(("http:", "https:"))


def _checked_template(raw: str, what: str, *, url_only: bool) -> Template:
    raw = raw.strip()
    pieces = _template(raw, what)
    url = url_only or _looks_like_url(raw)
    probe = "".join(p if isinstance(p, str) else "x" for p in pieces)
    if url:
        if not is_url(probe):
            raise ActionError(f"{what}: {raw!r} is not an http:// or https:// URL")
    elif not valid_addr_spec(probe):
        raise ActionError(
            f"{what}: destination {raw!r} is neither an http(s) URL nor an email address"
        )
    return Template(pieces, url)


@dataclass(frozen=True, eq=False)
class ParsedAction:
    source: str
    kind: str
    destinations: tuple[Template, ...] = ()
    notify: Template | None = None

    @property
    def refs(self) -> tuple[_Ref, ...]:
        refs = [r for t in self.destinations for r in t.refs]
        if self.notify is not None:
            refs += self.notify.refs
        return tuple(refs)

    @property
    def static(self) -> Action | None:
        """The action itself when it refers to no capture (the same for every message)."""
        if self.refs:
            return None
        return self.render(None)

    def render(self, captures: Captures | None) -> Action | None:
        """The action for one match; a destination that is no URL or address once the
        captures are in is dropped (and a forward left with none is None)."""
        if self.kind == "stop":
            return Action("stop")
        if self.kind == "store":
            notify = self.notify.render(captures) if self.notify is not None else None
            return Action("store", notify=notify if notify is None or is_url(notify) else None)
        destinations = []
        for template in self.destinations:
            target = template.render(captures)
            if is_url(target) if template.url else valid_addr_spec(target):
                destinations.append(target)
        return Action("forward", tuple(destinations)) if destinations else None


def parse_action(source: str) -> ParsedAction:
    """Parse and check one action; raises ActionError naming the problem."""
    text = source.strip()
    what = f"Invalid action {_shorten(text)!r}"
    if not text:
        raise ActionError('Invalid action: it is empty; expected forward("..."), store() or stop()')
    if len(text) > MAX_ACTION_CHARS:
        raise ActionError(f"{what}: longer than {MAX_ACTION_CHARS} characters")
    cursor = _Cursor(_tokenize(source, ActionError, what), ActionError, what, "action")
    token = cursor.take()
    if token.kind != "name":
        raise cursor.fail(token, "forward, store or stop")
    name = token.text.lower()
    if name not in ACTIONS:
        raise ActionError(
            f"{what}: unknown action '{token.text}' at position {token.pos + 1}; expected "
            "forward, store or stop"
        )
    args = cursor.call_arguments()
    end = cursor.take()
    if end.kind != "end":
        raise cursor.fail(end, "the end of the action (give each action as its own 'action')")
    if name == "stop":
        if args:
            raise ActionError(f"{what}: stop() takes no arguments")
        return ParsedAction(text, "stop")
    if name == "store":
        if not args:
            return ParsedAction(text, "store")
        keyword, value = args[0]
        if len(args) > 1 or keyword not in (None, "notify"):
            raise ActionError(f'{what}: store takes nothing or notify="URL"')
        return ParsedAction(
            text, "store", notify=_checked_template(value.text, what, url_only=True)
        )
    if not args:
        raise ActionError(f'{what}: forward needs a destination: forward("URL or address")')
    if any(keyword is not None for keyword, _v in args):
        raise ActionError(f'{what}: forward takes destinations only: forward("URL, address")')
    raws = [part for _k, value in args for part in value.text.split(",")]
    if not any(r.strip() for r in raws):
        raise ActionError(f'{what}: forward needs a destination: forward("URL or address")')
    destinations = tuple(
        _checked_template(raw, what, url_only=False) for raw in raws if raw.strip()
    )
    if len(destinations) > MAX_DESTINATIONS:
        raise ActionError(f"{what}: more than {MAX_DESTINATIONS} destinations")
    return ParsedAction(text, "forward", destinations)


def check_references(expression: Expression, actions: list[ParsedAction]) -> None:
    """Every capture an action refers to must exist in the expression."""
    for action in actions:
        what = f"Invalid action {_shorten(action.source)!r}"
        for ref in action.refs:
            if ref.name and ref.name not in expression.group_names:
                raise ActionError(
                    f"{what}: {ref} refers to a named group the expression does not have"
                )
            if ref.number > expression.group_count:
                count = expression.group_count
                raise ActionError(
                    f"{what}: {ref} refers to group {ref.number}, but the expression has "
                    f"{count} capture group{'' if count == 1 else 's'}"
                )
