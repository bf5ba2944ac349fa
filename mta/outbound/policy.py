"""Delivery policy as data: shaping profiles and reply classification, read from TOML.

Both files are validated at start; a mistake stops the server with one line naming it. The
built-in files are config/shaping.toml and config/bounces.toml (shipped inside the package).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mta.config import ConfigError

BUILTIN_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Profile:
    """How one receiving site is treated (see config/shaping.toml)."""

    name: str
    domains: frozenset[str] = frozenset()
    mx: tuple[str, ...] = ()
    connections: int = 20
    messages_per_connection: int = 100
    per_minute: int = 0
    per_hour: int = 0
    throttle_pause_s: float = 60.0
    throttle_max_pause_s: float = 900.0
    throttle_connections: float = 0.5

    def matches_mx(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False


_SHAPING_NUMBERS = {
    f.name: f.type
    for f in fields(Profile)
    if f.name not in ("name", "domains", "mx")
}


@dataclass(frozen=True)
class Shaping:
    default: Profile
    profiles: tuple[Profile, ...]

    def for_domain(self, domain: str) -> Profile | None:
        for profile in self.profiles:
            if domain in profile.domains:
                return profile
        return None

    def for_mx(self, hosts: list[str]) -> Profile:
        for profile in self.profiles:
            if any(profile.matches_mx(h) for h in hosts):
                return profile
        return self.default


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what}: {path}: {exc}") from None


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return value


def _profile_settings(where: str, table: Any) -> dict[str, Any]:
    table = _table(where, table)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("domains", "mx"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of names")
            values[key] = (
                frozenset(v.lower() for v in value)
                if key == "domains"
                else tuple(v.lower() for v in value)
            )
            continue
        if key not in _SHAPING_NUMBERS:
            raise ConfigError(f"{where}.{key}: unknown setting")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}.{key}: expected a number of at least 0")
        if _SHAPING_NUMBERS[key] == "int":
            if value != int(value):
                raise ConfigError(f"{where}.{key}: expected a whole number")
            value = int(value)
        values[key] = value
    for key in ("connections", "messages_per_connection"):
        if key in values and values[key] < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1")
    if not 0 < values.get("throttle_connections", 0.5) <= 1:
        raise ConfigError(f"{where}.throttle_connections: expected more than 0, at most 1")
    return values


def load_shaping(path: str = "") -> Shaping:
    source = Path(path) if path else BUILTIN_DIR / "shaping.toml"
    raw = _read(source, "outbound.shaping_file")
    unknown = set(raw) - {"default", "profile"}
    if unknown:
        raise ConfigError(f"outbound.shaping_file: unknown table {sorted(unknown)[0]!r}")
    base = _profile_settings("default", raw.get("default", {}))
    if "domains" in base or "mx" in base:
        raise ConfigError("default: domains/mx belong in a [profile.*] table")
    default = Profile(name="default", **base)
    profiles = []
    for name, table in _table("profile", raw.get("profile", {})).items():
        profiles.append(Profile(name=name, **(base | _profile_settings(f"profile.{name}", table))))
    return Shaping(default=default, profiles=tuple(profiles))


@dataclass(frozen=True)
class Verdict:
    """What a remote reply means for the message and its destination."""

    name: str
    permanent: bool
    reason: str
    suppress: bool = False
    throttle: bool = False


@dataclass(frozen=True)
class _Rule:
    codes: tuple[str, ...]
    enhanced: tuple[str, ...]
    text: re.Pattern[str] | None
    verdict: Verdict

    def matches(self, code: str, enhanced: str, text: str) -> bool:
        if self.codes and not code.startswith(self.codes):
            return False
        if self.enhanced and not _enhanced_matches(enhanced, self.enhanced):
            return False
        return not (self.text and not self.text.search(text))


def _enhanced_matches(enhanced: str, prefixes: tuple[str, ...]) -> bool:
    """'5.1.1' matches 5.1.1 but not 5.1.10; '4.7.' matches every 4.7.x."""
    return any(
        enhanced == p or (p.endswith(".") and enhanced.startswith(p)) for p in prefixes
    )


_FALLBACK_TEMPORARY = Verdict("deferred", permanent=False, reason="generic")
_FALLBACK_PERMANENT = Verdict("rejected", permanent=True, reason="bounce")


@dataclass(frozen=True)
class Classifier:
    rules: tuple[_Rule, ...]

    def classify(self, code: int, enhanced: str, text: str) -> Verdict:
        code_text = str(code)
        for rule in self.rules:
            if rule.matches(code_text, enhanced, text):
                return rule.verdict
        return _FALLBACK_PERMANENT if code >= 500 else _FALLBACK_TEMPORARY


def _string_list(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(value)


def load_classifier(path: str = "") -> Classifier:
    source = Path(path) if path else BUILTIN_DIR / "bounces.toml"
    raw = _read(source, "outbound.bounce_rules_file")
    unknown = set(raw) - {"class", "rule"}
    if unknown:
        raise ConfigError(f"outbound.bounce_rules_file: unknown table {sorted(unknown)[0]!r}")
    verdicts: dict[str, Verdict] = {}
    for name, table in _table("class", raw.get("class", {})).items():
        where = f"class.{name}"
        table = _table(where, table)
        extra = set(table) - {"severity", "reason", "suppress", "throttle"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown setting")
        if table.get("severity") not in ("permanent", "temporary"):
            raise ConfigError(f"{where}.severity: expected permanent or temporary")
        if not isinstance(table.get("reason"), str) or not table["reason"]:
            raise ConfigError(f"{where}.reason: expected a failed-event reason")
        for flag in ("suppress", "throttle"):
            if not isinstance(table.get(flag, False), bool):
                raise ConfigError(f"{where}.{flag}: expected true or false")
        verdicts[name] = Verdict(
            name=name,
            permanent=table["severity"] == "permanent",
            reason=table["reason"],
            suppress=table.get("suppress", False),
            throttle=table.get("throttle", False),
        )
    rules = []
    if not isinstance(raw.get("rule", []), list):
        raise ConfigError("rule: expected [[rule]] tables")
    for index, table in enumerate(raw.get("rule", []), start=1):
        where = f"rule {index}"
        table = _table(where, table)
        extra = set(table) - {"code", "enhanced", "text", "class"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown setting")
        if table.get("class") not in verdicts:
            raise ConfigError(f"{where}.class: expected one of the [class.*] tables")
        pattern = None
        if "text" in table:
            if not isinstance(table["text"], str) or not table["text"]:
                raise ConfigError(f"{where}.text: expected a regular expression")
            try:
                pattern = re.compile(str(table["text"]), re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(f"{where}.text: {exc}") from None
        codes = _string_list(f"{where}.code", table["code"]) if "code" in table else ()
        enhanced = (
            _string_list(f"{where}.enhanced", table["enhanced"]) if "enhanced" in table else ()
        )
        if not (codes or enhanced or pattern):
            raise ConfigError(f"{where}: give at least one of code, enhanced, text")
        rules.append(_Rule(codes, enhanced, pattern, verdicts[table["class"]]))
    return Classifier(tuple(rules))
