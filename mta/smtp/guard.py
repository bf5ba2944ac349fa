"""Protection for the SMTP listeners, per network (an IPv4 address, or an IPv6 /64: what one
subscriber usually holds whole).

- Connections (`Guard`): concurrent sessions per network and in all, counted by each node, since
  they are its own sockets and file descriptors.
- AUTH failures (`AuthThrottle`): counted site-wide in the store (`auth_failures`), so with
  several nodes behind one name the limits hold in total however the guesses are spread. A
  network with too many failures is blocked, a login with too many from any network backs off
  (`auth_holds`); every node reads both before it looks at a password. A network a login
  succeeded from recently is remembered there too (subject `known:`), so the login's owner
  keeps working through its backoff on every node.
- Failed password checks (scrypt): a budget per node, since it protects that node's CPU.

Cost: one small read per AUTH (holds and failure counts of its network and login), one write
per failed AUTH, and one per login and network that first succeeds (then twice a week at most).
Blocks found in the store are also kept in memory, so a blocked network is refused at connect
on this node without a read. Old rows go with `purge`, run by one node of the cluster.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import islice

from mta.config import SmtpConfig
from mta.store import Statement, Store

log = logging.getLogger("mta.smtp")

MAX_TRACKED = 100_000  # blocked networks kept in memory
LOGIN_KEY_CHARS = 256  # longer than any address: a long login cannot make rows large
QUIET_LOG_S = 60.0  # one warning a minute while the server-wide budget is spent
MAX_BACKOFFS = 32
BLOCKED = "421 4.7.0 Too many authentication failures from your address, try later"

# holds of the network, the login and the login's pass for the network; failures in the window
_LOOK = (
    "SELECT subject, until, backoffs, 0 AS failures FROM auth_holds"
    " WHERE subject IN (?1, ?2, ?3)"
    " UNION ALL"
    " SELECT subject, 0, 0, count(*) FROM auth_failures"
    " WHERE subject IN (?1, ?2) AND at > ?4 GROUP BY subject"
)
_FAILED = "INSERT INTO auth_failures (subject, at) VALUES (?, ?)"
_FORGET = "DELETE FROM auth_failures WHERE subject = ?"
_HOLD = (
    "INSERT INTO auth_holds (subject, until, backoffs) VALUES (?, ?, ?)"
    " ON CONFLICT (subject) DO UPDATE SET until = excluded.until, backoffs = excluded.backoffs"
)


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


class Guard:
    """Concurrent sessions of one listener kind on this node, and the networks blocked after
    AUTH failures (as the store decided them: refused at connect without a read)."""

    def __init__(
        self, config: SmtpConfig, max_per_network: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._max_per_network = max_per_network
        self._clock = clock  # the wall clock: blocks come from the store, set by other nodes
        self._connections: dict[str, int] = {}
        self._total = 0
        self._blocked_until: dict[str, float] = {}
        # told the length in seconds of each session that ends (metrics), when set
        self.session_ended: Callable[[float], None] | None = None

    @property
    def open_sessions(self) -> int:
        """Sessions of this listener kind open on this node now."""
        return self._total

    def connect(self, address: str) -> str | None:
        """Count a new session; a reply refusing it when over a limit or blocked."""
        network = network_of(address)
        if self.blocked(network):
            return BLOCKED
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

    def blocked(self, network: str) -> bool:
        """Blocked as far as this node knows (the store may know of a block made elsewhere:
        `AuthThrottle.look` reads it and tells the guard)."""
        until = self._blocked_until.get(network)
        if until is None:
            return False
        if self._clock() >= until:
            del self._blocked_until[network]
            return False
        return True

    def block(self, network: str, until: float) -> None:
        if len(self._blocked_until) >= MAX_TRACKED and network not in self._blocked_until:
            now = self._clock()
            for key in [k for k, v in self._blocked_until.items() if v <= now]:
                del self._blocked_until[key]
            if len(self._blocked_until) > MAX_TRACKED * 9 // 10:  # the oldest go (the store
                for key in list(islice(self._blocked_until, MAX_TRACKED // 10)):  # keeps them)
                    del self._blocked_until[key]
        self._blocked_until[network] = until


@dataclass(frozen=True)
class AuthView:
    """What the store held for one AUTH's network and login when it began."""

    network: str
    login: str
    at: float
    blocked_until: float = 0.0
    held_until: float = 0.0
    backoffs: int = 0  # the login's backoffs in a row: the next lasts 2^backoffs the first
    known_until: float = 0.0  # the login succeeded from this network recently
    network_failures: int = 0  # within the window
    login_failures: int = 0

    @property
    def blocked(self) -> bool:
        return self.blocked_until > self.at

    @property
    def known(self) -> bool:
        return self.known_until > self.at

    @property
    def held(self) -> bool:
        """The login backs off and has not succeeded from this network recently: its AUTH is
        answered 454 without looking at the password at all (not even the cache of right ones,
        which would otherwise answer guesses for free)."""
        return self.held_until > self.at and not self.known


def _subjects(network: str, login: str) -> tuple[str, str, str]:
    """Rows' subjects: the network, the login, and the login's pass for the network."""
    return f"net:{network}", f"login:{login}", f"known:{network} {login}"


class AuthThrottle:
    """AUTH limits of the whole site, kept in the store (see the module's notes), and this
    node's budget of failed password checks."""

    def __init__(
        self, config: SmtpConfig, store: Store, guard: Guard,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._guard = guard
        self._clock = clock
        self._budget = self._budget_size()
        self._budget_at = clock()
        self._budget_logged = float("-inf")

    async def look(self, network: str, login: str) -> AuthView:
        """The one read of an AUTH: the holds on its network and login, and their failures
        within the window. A block found here is remembered by the guard."""
        now = self._clock()
        net, user, known = _subjects(network, login)
        rows = await self._store.fetchall(
            _LOOK, (net, user, known, now - self._config.auth_failure_window_s)
        )
        view = AuthView(network, login, now)
        for row in rows:
            subject, until = row["subject"], float(row["until"])
            if row["failures"]:
                field = "network_failures" if subject == net else "login_failures"
                view = replace(view, **{field: int(row["failures"])})
            elif subject == net:
                view = replace(view, blocked_until=until)
            elif subject == user:
                view = replace(view, held_until=until, backoffs=int(row["backoffs"]))
            else:
                view = replace(view, known_until=until)
        if view.blocked:
            self._guard.block(network, view.blocked_until)
        return view

    def take_check(self, view: AuthView) -> int | None:
        """Leave for one password check (scrypt): None when refused, else the units of this
        node's budget of failed checks it took, which `give_back` returns if the check passes
        or never runs. A network the login succeeded from recently takes none."""
        if view.known:
            return 0
        now = self._clock()
        self._budget = min(
            self._budget_size(),
            self._budget + max(0.0, now - self._budget_at) * self._config.auth_failures_per_s,
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

    async def failed(self, view: AuthView, checked: bool = True) -> None:
        """Count a failed AUTH for its network and its login, in one write that also blocks the
        network or holds the login when this failure reaches its limit. The counts are those
        `look` read, plus this one: AUTHs running at the same moment may pass a limit by as
        many as there are of them, as they did when only one node counted. An AUTH refused
        unchecked (budget spent, check threads busy) counts too, since its 454 told the client
        that its password is not a remembered right one, unless the login succeeded from that
        network recently."""
        if not checked and view.known:
            return
        config = self._config
        now = self._clock()
        net, user, _ = _subjects(view.network, view.login)
        statements: list[Statement] = []
        counted: list[tuple[str, float]] = []
        if view.network_failures + 1 >= config.auth_failures:
            until = now + config.auth_block_s
            statements += [Statement(_FORGET, [(net,)]), Statement(_HOLD, [(net, until, 0)])]
            self._guard.block(view.network, until)
            log.warning("blocking %s for %.0f s after %d authentication failures within %.0f s",
                        view.network, config.auth_block_s, config.auth_failures,
                        config.auth_failure_window_s)
        else:
            counted.append((net, now))
        if view.login_failures + 1 >= config.auth_login_failures:
            backoffs = view.backoffs
            if now - view.held_until >= config.auth_login_backoff_max_s:
                backoffs = 0
            hold = min(config.auth_login_backoff_s * 2**backoffs, config.auth_login_backoff_max_s)
            statements += [
                Statement(_FORGET, [(user,)]),
                Statement(_HOLD, [(user, now + hold, min(backoffs + 1, MAX_BACKOFFS))]),
            ]
            log.warning("login %r backs off for %.0f s after %d authentication failures within"
                        " %.0f s: AUTH from networks it has not logged in from gets 454"
                        " unchecked", view.login[:64], hold, config.auth_login_failures,
                        config.auth_failure_window_s)
        else:
            counted.append((user, now))
        if counted:
            statements.insert(0, Statement(_FAILED, counted))
        await self._store.write(*statements)

    async def succeeded(self, view: AuthView) -> None:
        """Remember the network for the login, site-wide: it keeps working while the login
        backs off. Written when new or half expired, so a login that succeeds every minute
        from one network writes twice a week."""
        known_s = self._config.auth_known_network_s
        now = self._clock()
        if view.known_until - now > known_s / 2:
            return
        _, _, known = _subjects(view.network, view.login)
        await self._store.write(Statement(_HOLD, [(known, now + known_s, 0)]))

    def _budget_size(self) -> float:
        """A second's worth of failed checks may come at once (at least one)."""
        return max(1.0, self._config.auth_failures_per_s)


async def purge(store: Store, config: SmtpConfig, now: float | None = None) -> None:
    """Forget failures older than the window, and holds and passes over for longer than the
    longest backoff (until then a login's backoffs in a row still count)."""
    now = time.time() if now is None else now
    await store.write(
        Statement("DELETE FROM auth_failures WHERE at <= ?",
                  [(now - config.auth_failure_window_s,)]),
        Statement("DELETE FROM auth_holds WHERE until < ?",
                  [(now - config.auth_login_backoff_max_s,)]),
    )
