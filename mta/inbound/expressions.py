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
- A pattern is a Python regex applied with `re.match`: anchored at the start, not at the end
  (write `$` for a whole match), as in Mailgun's examples. `match_recipient` ignores case
  (addresses are compared without case in practice); `match_header`'s pattern is case-sensitive
  unless it says `(?i)`, its header name is not, and it matches when any value of that header
  matches (folded values are unfolded first).
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
loop, and Python's `re` can neither be interrupted nor give up the GIL). Each pattern is at most
MAX_PATTERN_CHARS long, compiled when the expression is parsed (a bad regex is an
ExpressionError naming it), and refused when a static upper bound of the backtracking it can do
on a text of `regex_input_bytes` is over MAX_MATCH_COST (see `_MatchCost`, which reads the
`re._parser` tree):
- a repetition of something that can itself match in several ways -- nested quantifiers like
  `(a+)+`, `(a*)*`, `(\\w+\\s?)+`, or alternatives that can start alike like `(a|a)*`,
  `(a|ab)*` -- is exponential: refused, saying so;
- repetitions whose end is ambiguous (what follows can start with a character they match,
  like `.*` before `@`) multiply: one such unbounded repetition plus scans is admitted
  (`^(.*)en-US(.*)$`, `(?P<user>.*?)@(?P<domain>.*)`, `.*x.*y`); more is refused with the
  estimate (`.*x.*x.*y`, `a*a*a*b` at the default 1024-byte cap).
Guaranteed: one match of an admitted pattern on one clipped text does at most ~MAX_MATCH_COST
steps; measured on this VM, with adversarial inputs and random patterns, at most ~10 ns per
step, i.e. ~12 ms. The route evaluator (mta.inbound.routes) also stops starting new matches
once one recipient's evaluation has used EVALUATION_BUDGET_S, so a message costs at most that
plus one match however many routes and header values there are. Not guaranteed: that the
estimate is tight -- it is conservative, so some harmless patterns are refused too (e.g.
`(a|ab)*c`, `(.*)(.*)(.*)`), always with a message saying why; back-references and
look-arounds are costed coarsely. `re._parser` is a private module (stable since 3.11).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any
from urllib.parse import quote, urlsplit

from mta.accept import valid_addr_spec

MAX_EXPRESSION_CHARS = 8192
MAX_PATTERN_CHARS = 1000
MAX_TERMS = 32
MAX_NESTING = 16
MAX_ACTION_CHARS = 8192
MAX_DESTINATIONS = 50
MAX_MATCH_COST = 1_100_000  # ~ (1024 + 1)^2: one ambiguous `.*` and a scan on 1024 bytes

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
    """Raised by a filter about to run a regex once the message's matching time is spent."""


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


# -- character sets, for the backtracking estimate -----------------------------------------------
# A set of characters is approximated by its ASCII members (a 128-bit mask) and, outside ASCII,
# by which of three kinds it may hold (word characters, spaces, the rest): overlaps are then
# over-reported, never missed.

_ASCII = (1 << 128) - 1
_WORD, _SPACE, _REST = 1, 2, 4
_ALL_KINDS = _WORD | _SPACE | _REST


@dataclass(frozen=True, slots=True)
class _Chars:
    mask: int
    other: int  # kinds of non-ASCII members

    def __or__(self, more: _Chars) -> _Chars:
        return _Chars(self.mask | more.mask, self.other | more.other)

    def overlaps(self, more: _Chars) -> bool:
        return bool(self.mask & more.mask) or bool(self.other & more.other)


_NOTHING = _Chars(0, 0)
_EVERYTHING = _Chars(_ASCII, _ALL_KINDS)
_NEWLINE = _Chars(1 << 10, 0)


def _mask_of(regex: str) -> int:
    return sum(1 << c for c in range(128) if re.match(regex, chr(c)))


def _kind_of(ch: str) -> int:
    if re.match(r"\w", ch):
        return _WORD
    return _SPACE if ch.isspace() else _REST


_CATEGORIES = {
    sre.CATEGORY_DIGIT: _Chars(_mask_of(r"\d"), _WORD),
    sre.CATEGORY_NOT_DIGIT: _Chars(_mask_of(r"\D"), _ALL_KINDS),
    sre.CATEGORY_SPACE: _Chars(_mask_of(r"\s"), _SPACE),
    sre.CATEGORY_NOT_SPACE: _Chars(_mask_of(r"\S"), _WORD | _REST),
    sre.CATEGORY_WORD: _Chars(_mask_of(r"\w"), _WORD),
    sre.CATEGORY_NOT_WORD: _Chars(_mask_of(r"\W"), _SPACE | _REST),
}
_LETTERS = _mask_of(r"[A-Za-z]")


_UPPER = _mask_of(r"[A-Z]")
_LOWER = _mask_of(r"[a-z]")


def _case_closed(mask: int) -> int:
    """The mask with both cases of each ASCII letter in it."""
    return mask | ((mask & _UPPER) << 32) | ((mask & _LOWER) >> 32)


def _literal_chars(code: int, flags: int) -> _Chars:
    ignorecase = bool(flags & sre.SRE_FLAG_IGNORECASE)
    if code >= 128:
        # a non-ASCII letter can match an ASCII one without case (KELVIN SIGN and 'k')
        kind = _kind_of(chr(code))
        return _Chars(_LETTERS if ignorecase and kind == _WORD else 0, kind)
    mask = 1 << code
    if ignorecase and mask & _LETTERS:
        return _Chars(_case_closed(mask), _WORD)
    return _Chars(mask, 0)


def _class_chars(items: list[tuple[Any, Any]], flags: int) -> _Chars:
    chars, negate = _NOTHING, False
    for op, av in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            chars = chars | _literal_chars(av, 0)
        elif op is sre.RANGE:
            low, high = av
            mask = ((1 << (min(high, 127) + 1)) - 1) & ~((1 << low) - 1) if low < 128 else 0
            chars = chars | _Chars(mask, _ALL_KINDS if high >= 128 else 0)
        elif op is sre.CATEGORY:
            chars = chars | _CATEGORIES.get(av, _EVERYTHING)
        else:
            return _EVERYTHING
    if negate:  # the complement of the plain set holds every character the class can match
        return _Chars(_ASCII & ~chars.mask, _ALL_KINDS)
    if flags & sre.SRE_FLAG_IGNORECASE:  # a non-ASCII letter may match an ASCII one
        letters = _LETTERS if chars.other & _WORD else 0
        return _Chars(_case_closed(chars.mask) | letters, chars.other | _WORD)
    return chars


def _sub_flags(flags: int, av: tuple[Any, ...]) -> int:
    _group, add, remove, _items = av
    return (flags | add) & ~remove


def _first(items: Any, flags: int) -> tuple[_Chars, bool]:
    """What a sequence can start with, and whether it can match the empty string."""
    chars = _NOTHING
    for item in items:
        more, nullable = _first_of(item, flags)
        chars = chars | more
        if not nullable:
            return chars, False
    return chars, True


def _first_of(item: tuple[Any, Any], flags: int) -> tuple[_Chars, bool]:
    op, av = item
    if op is sre.LITERAL:
        return _literal_chars(av, flags), False
    if op is sre.NOT_LITERAL:
        return _Chars(_ASCII & ~(1 << av) if av < 128 else _ASCII, _ALL_KINDS), False
    if op is sre.ANY:
        if flags & sre.SRE_FLAG_DOTALL:
            return _EVERYTHING, False
        return _Chars(_ASCII & ~(1 << 10), _ALL_KINDS), False
    if op is sre.IN:
        return _class_chars(av, flags), False
    if op is sre.AT:
        # zero-width; `$` also succeeds in front of a final newline
        return (_NEWLINE if av in (sre.AT_END, sre.AT_END_LINE) else _NOTHING), True
    if op is sre.SUBPATTERN:
        return _first(av[3], _sub_flags(flags, av))
    if op is sre.BRANCH:
        chars, nullable = _NOTHING, False
        for alternative in av[1]:
            more, empty = _first(alternative, flags)
            chars, nullable = chars | more, nullable or empty
        return chars, nullable
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, _high, body = av
        chars, nullable = _first(body, flags)
        return chars, nullable or low == 0
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return _NOTHING, True
    if op is sre.ATOMIC_GROUP:
        return _first(av, flags)
    if op is sre.GROUPREF_EXISTS:
        _group, yes, no = av
        chars, nullable = _first(yes, flags)
        if no is None:
            return chars, True
        more, empty = _first(no, flags)
        return chars | more, nullable or empty
    return _EVERYTHING, True  # GROUPREF and anything unforeseen


def _has_variable_repeat(items: Any) -> bool:
    for op, av in items:
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            inner = [av[2]] if av[0] == av[1] else None
        elif op is sre.SUBPATTERN:
            inner = [av[3]]
        elif op is sre.BRANCH:
            inner = av[1]
        elif op is sre.ATOMIC_GROUP:
            inner = [av]
        else:
            continue
        if inner is None or any(_has_variable_repeat(sub) for sub in inner):
            return True
    return False


class _TooCostly(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Cost:
    paths: int = 1  # ways of laying the pattern over the text that may be tried
    scan: bool = False  # whether a path may scan (and rescan) the text it consumes
    extra: int = 0  # work on text a path does not consume (look-arounds), per path


class _MatchCost:
    """An upper bound of the work a backtracking matcher (re.match) does on `length` chars.

    A repetition whose end is ambiguous (what follows can start with a character it can also
    start an iteration with) can stop at any of its `range + 1` places, each a path; one whose
    end is not ambiguous stops where it must, and backing up over what it took fails at once:
    one path, which scans. Alternatives that can start alike may each be tried (their paths
    add up), alternatives that cannot are one path. A repeated body that has several paths has
    them again on each round: exponential. Along one path, the scans cover each character a
    bounded number of times, so a path costs about `length`, plus what its look-arounds cost.
    The estimate is paths × (length if anything scans, plus the look-arounds)."""

    def __init__(self, length: int) -> None:
        self.length = max(1, length)
        self.cap = MAX_MATCH_COST * 1024

    def mul(self, a: int, b: int) -> int:
        return min(a * b, self.cap)

    def power(self, base: int, exponent: int) -> int:
        if base <= 1:
            return base
        if exponent >= 64:
            return self.cap
        return min(base**exponent, self.cap)

    def total(self, items: Any, flags: int) -> int:
        cost = self.sequence(items, _NOTHING, flags)
        return self.mul(cost.paths, max(1, (self.length if cost.scan else 0) + cost.extra))

    def sequence(self, items: Any, follow: _Chars, flags: int) -> _Cost:
        items = list(items)
        follows: list[_Chars] = [follow] * len(items)
        after = follow
        for index in range(len(items) - 1, -1, -1):
            follows[index] = after
            chars, nullable = _first_of(items[index], flags)
            after = chars | after if nullable else chars
        paths, scan, extra = 1, False, 0
        for item, item_follow in zip(items, follows, strict=True):
            cost = self.item(item, item_follow, flags)
            paths = self.mul(paths, cost.paths)
            scan = scan or cost.scan
            extra = min(extra + cost.extra, self.cap)
        return _Cost(paths, scan, extra)

    def item(self, item: tuple[Any, Any], follow: _Chars, flags: int) -> _Cost:
        op, av = item
        if op is sre.SUBPATTERN:
            return self.sequence(av[3], follow, _sub_flags(flags, av))
        if op is sre.BRANCH:
            return self.alternatives(av[1], follow, flags, None)
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            return self.repeat(op, av, follow, flags)
        if op in (sre.ASSERT, sre.ASSERT_NOT):  # atomic: tried once where it stands
            return _Cost(extra=self.total(av[1], flags))
        if op is sre.ATOMIC_GROUP:
            return _Cost(scan=True, extra=self.total(av, flags))
        if op is sre.GROUPREF:
            return _Cost(scan=True)
        if op is sre.GROUPREF_EXISTS:
            _group, yes, no = av
            return self.alternatives([yes] if no is None else [yes, no], follow, flags, False)
        return _Cost()

    def alternatives(
        self, alternatives: Any, follow: _Chars, flags: int, disjoint: bool | None
    ) -> _Cost:
        if disjoint is None:
            firsts = [_first(a, flags) for a in alternatives]
            disjoint = not any(nullable for _c, nullable in firsts) and all(
                not firsts[i][0].overlaps(firsts[j][0])
                for i in range(len(firsts))
                for j in range(i + 1, len(firsts))
            )
        paths, scan, extra = 0, False, 0
        for alternative in alternatives:
            cost = self.sequence(alternative, follow, flags)
            paths = max(paths, cost.paths) if disjoint else min(paths + cost.paths, self.cap)
            scan = scan or cost.scan
            extra = max(extra, cost.extra)
        return _Cost(max(paths, 1), scan, extra)

    def repeat(self, op: Any, av: tuple[Any, Any, Any], follow: _Chars, flags: int) -> _Cost:
        low, high, body = av
        rounds = min(high, self.length)
        spread = max(rounds - low, 0)
        first, nullable = _first(body, flags)
        inner_follow = follow | first if high > 1 else follow
        inner = self.sequence(body, inner_follow, flags)
        paths = inner.paths
        if inner.paths > 1 and high > 1:
            paths = self.power(inner.paths, max(rounds, 1))
            if paths > MAX_MATCH_COST:
                raise _TooCostly(
                    "a repeated group contains a nested repetition (like '(a+)+' or '(a*)*')"
                    if _has_variable_repeat(body)
                    else "a repeated group has alternatives that can match the same text "
                    "(like '(a|a)*' or '(a|ab)*')"
                )
        ambiguous = (
            spread > 0 and op is not sre.POSSESSIVE_REPEAT and (nullable or first.overlaps(follow))
        )
        if ambiguous:
            paths = self.mul(paths, spread + 1)
        return _Cost(
            paths,
            inner.scan or (spread > 0 and not ambiguous),
            self.mul(inner.extra, max(rounds, 1)),
        )


def match_cost(pattern: str, flags: int = 0, input_chars: int = 1024) -> int:
    """The estimated worst-case steps to match `pattern` on a text of `input_chars`; raises
    ExpressionError when that is over MAX_MATCH_COST (or the pattern is not a regex)."""
    where = f"pattern {_shorten(pattern)!r}"
    try:
        return _tree_cost(sre_parse.parse(pattern, flags), pattern, input_chars)
    except re.error as exc:
        raise ExpressionError(_regex_error(pattern, exc)) from None
    except RecursionError:
        raise ExpressionError(f"{where} is nested too deeply") from None


def _tree_cost(tree: Any, pattern: str, input_chars: int) -> int:
    where = f"pattern {_shorten(pattern)!r}"
    try:
        return _MatchCost(input_chars).total(tree, int(tree.state.flags))
    except _TooCostly as exc:
        raise ExpressionError(
            f"{where} is refused: {exc}, which can backtrack catastrophically (exponential time)"
        ) from None
    except RecursionError:
        raise ExpressionError(f"{where} is nested too deeply") from None


def _check_cost(tree: Any, pattern: str, input_chars: int) -> None:
    cost = _tree_cost(tree, pattern, input_chars)
    if cost > MAX_MATCH_COST:
        raise ExpressionError(
            f"pattern {_shorten(pattern)!r} is refused: its repetitions overlap so much that "
            f"matching a {input_chars}-byte text could take about {cost:.1e} steps (the limit is "
            f"{MAX_MATCH_COST:.1e}); anchor it, make the parts before a literal exclude it "
            "(e.g. '[^@]*@' instead of '.*@'), or use fewer '.*'"
        )


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _regex_error(pattern: str, exc: re.error) -> str:
    at = f" at position {exc.pos + 1} of the pattern" if exc.pos is not None else ""
    return f"{_shorten(pattern)!r} is not a valid regular expression: {exc.msg}{at}"


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
                walk(av[3], _sub_flags(item_flags, av))
            elif op is sre.AT and av in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
                continue
            else:
                close()

    walk(tree, int(tree.state.flags))
    close()
    return state["prefix"] or "", runs


# -- expressions ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Term:
    """One filter of an expression. `index` is its place among the expression's terms."""

    kind: str  # "recipient", "header", "catch_all"
    index: int
    header: str = ""  # lower-cased
    pattern: str = ""
    regex: re.Pattern[str] | None = None
    needle: str = ""  # text every match contains (lower-cased when `fold`)
    prefix: bool = False  # ... at its start
    fold: bool = False

    def search(self, text: str, folded: str | None) -> re.Match[str] | None:
        needle = self.needle
        if needle:
            probe = folded if self.fold else text
            if probe is not None:
                if self.prefix:
                    if not probe.startswith(needle):
                        return None
                elif needle not in probe:
                    return None
        assert self.regex is not None
        return self.regex.match(text)

    def test(self, view: MatchInput, found: list[re.Match[str] | None]) -> bool:
        if self.kind == "recipient":
            view.check_time()
            match = self.search(view.recipient, view.recipient_folded)
        elif self.kind == "header":
            match = None
            for value, folded in view.headers.get(self.header, ()):
                view.check_time()
                match = self.search(value, folded)
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

    def test(self, view: MatchInput, found: list[re.Match[str] | None]) -> bool:
        for part in self.parts:
            if not part.test(view, found):
                for index in self.indexes:  # a failed conjunction leaves no captures behind
                    found[index] = None
                return False
        return True


@dataclass(eq=False)
class _Any:
    parts: tuple[Node, ...]

    def test(self, view: MatchInput, found: list[re.Match[str] | None]) -> bool:
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
        wanted: frozenset[str] | None = None,
        deadline: float = math.inf,
    ) -> None:
        self.deadline = deadline  # time.perf_counter() after which no regex is started
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

    def check_time(self) -> None:
        if time.perf_counter() > self.deadline:
            raise OutOfTime


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
        found: list[re.Match[str] | None] = [None] * len(self.terms)
        if not self.root.test(view, found):
            return None
        return Captures(self, found)


class Captures:
    """The groups of a matched expression, numbered expression-wide (see the module doc)."""

    __slots__ = ("_expression", "_found")

    def __init__(self, expression: Expression, found: list[re.Match[str] | None]) -> None:
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
    def __init__(self, source: str, input_bytes: int) -> None:
        tokens = _tokenize(source, ExpressionError, _EXPRESSION)
        self.cursor = _Cursor(tokens, ExpressionError, _EXPRESSION, "expression")
        self.input_bytes = input_bytes
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
            term = self.regex_term("recipient", index, "", args[0][1], re.IGNORECASE)
        else:
            header = args[0][1].text.strip()
            if not header or not all(33 <= ord(c) <= 126 and c != ":" for c in header):
                raise ExpressionError(
                    f"{_EXPRESSION}: {header!r} at position {args[0][1].pos + 1} is not a header "
                    "name (printable ASCII without spaces or ':')"
                )
            term = self.regex_term("header", index, header.lower(), args[1][1], 0)
        self.terms.append(term)
        return term

    def regex_term(self, kind: str, index: int, header: str, token: _Token, flags: int) -> Term:
        pattern = token.text
        if len(pattern) > MAX_PATTERN_CHARS:
            raise ExpressionError(
                f"{_EXPRESSION}: the pattern at position {token.pos + 1} is {len(pattern)} "
                f"characters long; the limit is {MAX_PATTERN_CHARS}"
            )
        try:
            regex = re.compile(pattern, flags)
        except re.error as exc:
            raise ExpressionError(
                f"{_EXPRESSION}: {_regex_error(pattern, exc)} (the string at position "
                f"{token.pos + 1} of the expression)"
            ) from None
        except (RecursionError, OverflowError, ValueError) as exc:
            raise ExpressionError(
                f"{_EXPRESSION}: pattern {_shorten(pattern)!r} cannot be compiled: {exc}"
            ) from None
        try:
            tree = sre_parse.parse(pattern, flags)
            _check_cost(tree, pattern, self.input_bytes)
        except ExpressionError as exc:
            raise ExpressionError(f"{_EXPRESSION}: {exc}") from None
        except RecursionError:
            raise ExpressionError(
                f"{_EXPRESSION}: pattern {_shorten(pattern)!r} is nested too deeply"
            ) from None
        fold = bool(regex.flags & re.IGNORECASE)
        needle, at_start = _needle(*_literal_runs(tree, fold))
        return Term(kind, index, header, pattern, regex, needle, at_start, fold)


def parse_expression(source: str, input_bytes: int = 1024) -> Expression:
    """Parse and check a route expression; raises ExpressionError naming the problem."""
    text = source.strip()
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"{_EXPRESSION}: it is {len(text)} characters long; the limit is {MAX_EXPRESSION_CHARS}"
        )
    parser = _ExpressionParser(source, input_bytes)  # positions as the client wrote them
    root = parser.parse()
    terms = tuple(parser.terms)
    numbers: list[tuple[int, int]] = []
    names: dict[str, list[int]] = {}
    for term in terms:
        if term.regex is None:
            continue
        numbers += [(term.index, local) for local in range(1, term.regex.groups + 1)]
        for name in term.regex.groupindex:
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
