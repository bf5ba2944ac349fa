"""Protection for the SMTP listeners, per network (an IPv4 address, or an IPv6 /64: what one
subscriber usually holds whole): concurrent connections, AUTH failures, logins under attack
from many networks, and a server-wide budget of failed password checks.

Kept in memory (a restart forgets it, which is acceptable: blocks and backoffs are short) and
bounded: every table has a cap, the AUTH tables fill only as fast as failed logins come (paced
by the server-wide budget or by the blocks), and when a table is full what is over goes first.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

from mta.config import SmtpConfig

log = logging.getLogger("mta.smtp")

MAX_TRACKED = 100_000  # networks with failures, blocked networks, logins with failures: each
KNOWN_NETWORKS_PER_LOGIN = 16  # a login's owner rarely uses more; the oldest is forgotten
LOGIN_KEY_CHARS = 256  # longer than any address: a long login cannot make entries large
QUIET_LOG_S = 60.0  # one warning a minute while the server-wide budget is spent

V = TypeVar("V")


def network_of(address: str) -> str:
    """The network a peer counts for: an IPv4 address as it is, an IPv6 address as its /64
    (an IPv4-mapped one as its IPv4 address); a client with a /64 could use 2^64 addresses."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


def login_key(login: bytes) -> str:
    """A login as credentials compare it (stripped, lower case), cut short."""
    return login.decode("utf-8", "replace").strip().lower()[:LOGIN_KEY_CHARS]


@dataclass
class _Login:
    """Failures of one login from any network, and its backoff."""

    failures: deque[float] = field(default_factory=deque)
    held_until: float = float("-inf")
    backoffs: int = 0  # in a row: the next one lasts 2^backoffs times the first


class Guard:
    def __init__(
        self, config: SmtpConfig, max_per_network: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._max_per_network = max_per_network
        self._clock = clock
        self._connections: dict[str, int] = {}
        self._total = 0
        self._failures: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._logins: dict[str, _Login] = {}
        self._known: dict[str, dict[str, float]] = {}  # login -> {network: last success}
        self._budget = self._budget_size()
        self._budget_at = clock()
        self._budget_logged = float("-inf")

    # -- connections ---------------------------------------------------------------------------

    def connect(self, address: str) -> str | None:
        """Count a new session; a reply refusing it when over a limit or blocked."""
        network = network_of(address)
        if self.blocked(network):
            return "421 4.7.0 Too many authentication failures from your address, try later"
        if self._total >= self._config.max_connections:
            return "421 4.3.2 Too many connections, try again later"
        if self._connections.get(network, 0) >= self._max_per_network:
            return "421 4.7.0 Too many connections from your address, try again later"
        self._connections[network] = self._connections.get(network, 0) + 1
        self._total += 1
        return None

    def disconnect(self, address: str) -> None:
        network = network_of(address)
        count = self._connections.get(network, 0) - 1
        if count <= 0:
            self._connections.pop(network, None)
        else:
            self._connections[network] = count
        self._total = max(0, self._total - 1)

    # -- AUTH ----------------------------------------------------------------------------------

    def blocked(self, network: str) -> bool:
        until = self._blocked_until.get(network)
        if until is None:
            return False
        if self._clock() >= until:
            del self._blocked_until[network]
            return False
        return True

    def held(self, network: str, login: str) -> bool:
        """True when the login backs off and has not succeeded from this network recently:
        its AUTH is then answered 454 without looking at the password at all (not even the
        cache of right ones, which would otherwise answer guesses for free)."""
        state = self._logins.get(login)
        now = self._clock()
        return state is not None and state.held_until > now and not self._known_to(
            login, network, now
        )

    def take_check(self, network: str, login: str) -> int | None:
        """Leave for one password check (scrypt): None when refused, else the units of the
        server-wide budget of failed checks it took, which `give_back` returns if the check
        passes or never runs. A network the login succeeded from recently takes none."""
        now = self._clock()
        if self._known_to(login, network, now):
            return 0
        self._budget = min(
            self._budget_size(),
            self._budget + (now - self._budget_at) * self._config.auth_failures_per_s,
        )
        self._budget_at = now
        if self._budget >= 1:
            self._budget -= 1
            return 1
        if now - self._budget_logged >= QUIET_LOG_S:
            self._budget_logged = now
            log.warning("failed logins over %g/s: password checks for networks a login has not"
                        " succeeded from get 454 for now", self._config.auth_failures_per_s)
        return None

    def give_back(self, units: int) -> None:
        self._budget = min(self._budget_size(), self._budget + units)

    def auth_failed(self, network: str, login: str, checked: bool = True) -> None:
        """Count a failed AUTH for its network and its login. An AUTH refused unchecked
        (server-wide budget spent, check threads busy) counts too, since its 454 told the client
        that its password is not a remembered right one, unless the login succeeded from
        that network recently."""
        now = self._clock()
        if not checked and self._known_to(login, network, now):
            return
        config = self._config
        horizon = now - config.auth_failure_window_s
        failures = self._failures.get(network)
        if failures is None:
            if len(self._failures) >= MAX_TRACKED:
                _make_room(self._failures, lambda f: not f or f[-1] <= horizon)
            failures = self._failures[network] = deque()
        if _count(failures, now, horizon) >= config.auth_failures:
            del self._failures[network]
            self._block(network, now)
        self._login_failed(login, now, horizon)

    def auth_succeeded(self, network: str, login: str) -> None:
        """Remember the network for the login: it keeps working while the login backs off."""
        networks = self._known.setdefault(login, {})
        networks.pop(network, None)
        networks[network] = self._clock()
        if len(networks) > KNOWN_NETWORKS_PER_LOGIN:
            del networks[next(iter(networks))]

    def _budget_size(self) -> float:
        """A second's worth of failed checks may come at once (at least one)."""
        return max(1.0, self._config.auth_failures_per_s)

    def _known_to(self, login: str, network: str, now: float) -> bool:
        seen = self._known.get(login, {}).get(network)
        return seen is not None and now - seen < self._config.auth_known_network_s

    def _block(self, network: str, now: float) -> None:
        if len(self._blocked_until) >= MAX_TRACKED:
            _make_room(self._blocked_until, lambda until: until <= now)
        self._blocked_until[network] = now + self._config.auth_block_s
        log.warning("blocking %s for %.0f s after %d authentication failures within %.0f s",
                    network, self._config.auth_block_s, self._config.auth_failures,
                    self._config.auth_failure_window_s)

    def _login_failed(self, login: str, now: float, horizon: float) -> None:
        config = self._config
        state = self._logins.get(login)
        if state is None:
            if len(self._logins) >= MAX_TRACKED:
                quiet = now - config.auth_login_backoff_max_s
                # first logins whose failures and backoff are over, then any not backing off
                if not _make_room(self._logins, lambda s: (
                    (not s.failures or s.failures[-1] <= horizon) and s.held_until <= quiet
                ), last_resort=False):
                    _make_room(self._logins, lambda s: s.held_until <= now)
            state = self._logins[login] = _Login()
        if _count(state.failures, now, horizon) < config.auth_login_failures:
            return
        state.failures.clear()
        if now - state.held_until >= config.auth_login_backoff_max_s:
            state.backoffs = 0
        hold = min(config.auth_login_backoff_s * 2**state.backoffs, config.auth_login_backoff_max_s)
        state.backoffs = min(state.backoffs + 1, 32)
        state.held_until = now + hold
        log.warning("login %r backs off for %.0f s after %d authentication failures within %.0f s:"
                    " AUTH from networks it has not logged in from gets 454 unchecked",
                    login[:64], hold, config.auth_login_failures, config.auth_failure_window_s)


def _count(failures: deque[float], now: float, horizon: float) -> int:
    """Add a failure at `now`, forget those before `horizon`; how many are left."""
    failures.append(now)
    while failures[0] <= horizon:
        failures.popleft()
    return len(failures)


def _make_room(
    table: dict[str, V], over: Callable[[V], bool], last_resort: bool = True
) -> bool:
    """Drop the entries that are `over`; if that frees less than a tenth of the cap and
    `last_resort`, the oldest entries too (a tenth of the cap, so the scan is paid rarely).
    True when there is room again."""
    for key in [k for k, v in table.items() if over(v)]:
        del table[key]
    if len(table) <= MAX_TRACKED * 9 // 10:
        return True
    if not last_resort:
        return False
    for key in list(islice(table, MAX_TRACKED // 10)):
        del table[key]
    return True
