"""Delivery policy as data (config/shaping.toml, config/bounces.toml): the shipped files load,
profiles match by domain or MX host and inherit [default], real-world replies get the class the
rules promise, and a broken file is refused with one line naming the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mta.config import ConfigError
from mta.outbound import policy
from mta.outbound.policy import Profile, load_classifier, load_shaping

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
PACKAGE = ROOT / "mta" / "outbound"


@pytest.fixture(scope="module")
def shaping() -> policy.Shaping:
    return load_shaping()


@pytest.fixture(scope="module")
def classifier() -> policy.Classifier:
    return load_classifier()


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- the shipped files ------------------------------------------------------------------------


def test_shipped_files_load_and_are_the_builtin_copies():
    assert load_shaping(str(CONFIG / "shaping.toml")) == load_shaping()
    assert load_classifier(str(CONFIG / "bounces.toml")) == load_classifier()
    for name in ("shaping.toml", "bounces.toml"):
        builtin = PACKAGE / name
        assert builtin.is_symlink(), f"{builtin} should be a link to config/{name}"
        assert builtin.resolve() == (CONFIG / name).resolve()
        assert (policy.BUILTIN_DIR / name).read_bytes() == (CONFIG / name).read_bytes()


def test_shipped_shaping_has_the_documented_profiles(shaping: policy.Shaping):
    assert shaping.default.name == "default"
    assert shaping.default.connections == 20
    assert shaping.default.messages_per_connection == 100
    assert {p.name for p in shaping.profiles} >= {"gmail", "yahoo", "outlook", "icloud"}
    for profile in shaping.profiles:
        assert profile.connections >= 1
        assert profile.messages_per_connection >= 1
        assert 0 < profile.throttle_connections <= 1
        assert profile.throttle_pause_s <= profile.throttle_max_pause_s


# -- profile matching -------------------------------------------------------------------------


def profile_for(shaping: policy.Shaping, domain: str, mx: list[str]) -> Profile:
    """As the scheduler picks a site's profile: by recipient domain, else by MX host."""
    return shaping.for_domain(domain) or shaping.for_mx(mx)


@pytest.mark.parametrize(
    ("domain", "mx", "expected"),
    [
        ("gmail.com", ["gmail-smtp-in.l.google.com"], "gmail"),
        ("gmail.com", ["127.0.0.1"], "gmail"),  # by domain, whatever the MX
        ("googlemail.com", [], "gmail"),
        ("corp.example", ["aspmx.l.google.com"], "gmail"),  # Google Workspace, by MX
        ("corp.example", ["ASPMX.L.Google.com."], "gmail"),  # names are case-blind, dot-free
        ("corp.example", ["mx.corp.example", "alt1.aspmx.l.google.com"], "gmail"),  # any MX
        ("hotmail.com", [], "outlook"),
        ("contoso.example", ["contoso-example.mail.protection.outlook.com"], "outlook"),
        ("aol.com", [], "yahoo"),
        ("example.org", ["mta7.am0.yahoodns.net"], "yahoo"),
        ("me.com", [], "icloud"),
        ("example.net", ["mx01.mail.icloud.com"], "icloud"),
        ("example.net", ["mx.example.net"], "default"),
        ("example.net", [], "default"),
        # "*.google.com" is any sub-domain of google.com, not a suffix of any name
        ("example.net", ["google.com"], "default"),
        ("example.net", ["notgoogle.com"], "default"),
        ("example.net", ["mx.google.com.evil.example"], "default"),
    ],
)
def test_profile_matching(shaping: policy.Shaping, domain: str, mx: list[str], expected: str):
    assert profile_for(shaping, domain, mx).name == expected


def test_a_profile_inherits_default_settings_it_leaves_out(tmp_path: Path):
    shaping = load_shaping(write(tmp_path, """
[default]
connections = 3
messages_per_connection = 7
per_minute = 120
throttle_pause_s = 5.0
throttle_connections = 0.25

[profile.slow]
domains = ["Slow.Example.test"]
mx = ["*.slow-mx.example.test", "mx.exact.example.test"]
per_minute = 60
"""))
    slow = shaping.for_domain("slow.example.test")
    assert slow is not None
    assert slow.name == "slow"
    assert slow.per_minute == 60  # its own
    assert (slow.connections, slow.messages_per_connection) == (3, 7)  # from [default]
    assert slow.throttle_pause_s == 5.0
    assert slow.throttle_connections == 0.25
    assert slow.per_hour == 0 and slow.throttle_max_pause_s == 900.0  # built-in defaults
    assert shaping.for_mx(["a.slow-mx.example.test"]) is slow
    assert shaping.for_mx(["mx.exact.example.test"]) is slow
    assert shaping.for_mx(["other.exact.example.test"]) is shaping.default
    assert shaping.default.per_minute == 120


def test_an_empty_shaping_file_means_builtin_defaults(tmp_path: Path):
    shaping = load_shaping(write(tmp_path, ""))
    assert shaping.profiles == ()
    assert shaping.default == Profile(name="default")
    assert shaping.for_mx(["aspmx.l.google.com"]).name == "default"


# -- reply classification -----------------------------------------------------------------------

# (code, enhanced, text) as parsed from the reply -> (class, permanent, reason, suppress, throttle)
REPLIES = [
    # hard bounces: permanent, suppressed
    (550, "5.1.1", "The email account that you tried to reach does not exist. Please try double-"
     "checking the recipient's email address for typos", "mailbox-unknown", True, "bounce", True,
     False),
    (550, "5.1.1", "<bob@example.com>: Recipient address rejected: User unknown in virtual "
     "mailbox table", "mailbox-unknown", True, "bounce", True, False),
    (550, "", "No such user here", "mailbox-unknown", True, "bounce", True, False),
    (550, "", "Requested action not taken: mailbox unavailable", "mailbox-unknown", True,
     "bounce", True, False),
    (553, "", "sorry, that recipient address does not exist", "mailbox-unknown", True,
     "bounce", True, False),
    (550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "mailbox-unknown", True, "bounce", True, False),
    (550, "5.2.1", "The email account that you tried to reach is disabled.", "mailbox-unknown",
     True, "bounce", True, False),
    # full mailboxes: temporary, never suppressed
    (452, "4.2.2", "The email account that you tried to reach is over quota.", "mailbox-full",
     False, "generic", False, False),
    (552, "5.2.2", "The email account that you tried to reach is over quota.", "mailbox-full",
     False, "generic", False, False),
    (550, "", "Mailbox is full", "mailbox-full", False, "generic", False, False),
    (452, "", "Insufficient storage", "mailbox-full", False, "generic", False, False),
    # throttling: slows the whole destination
    (421, "4.7.0", "Try again later, closing connection.", "throttled", False, "espblock",
     False, True),
    (421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail", "throttled",
     False, "espblock", False, True),
    (451, "4.7.650", "The mail server [203.0.113.9] has been temporarily rate limited due to IP "
     "reputation.", "throttled", False, "espblock", False, True),
    (450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents "
     "additional messages from being delivered. Please resend your message at a later time. "
     "Too many messages", "throttled", False, "espblock", False, True),
    # greylisting
    (450, "4.7.1", "Greylisted, try again later", "greylisted", False, "greylisted", False, False),
    (451, "4.7.1", "Please try again later", "greylisted", False, "greylisted", False, False),
    (450, "", "Recipient address rejected: Greylisted for 5 minutes", "greylisted", False,
     "greylisted", False, False),
    # block lists
    (451, "4.7.1", "Service unavailable; Client host [203.0.113.9] blocked using "
     "zen.spamhaus.org", "blocklisted", False, "blacklisted", False, False),
    # refused but the address is fine: permanent, not suppressed
    (554, "5.7.1", "Message rejected as spam", "rejected", True, "bounce", False, False),
    (550, "5.7.26", "Unauthenticated email from example.com is not accepted due to domain's "
     "DMARC policy", "rejected", True, "bounce", False, False),
    (552, "5.3.4", "Message size exceeds fixed maximum message size", "rejected", True, "bounce",
     False, False),
    # whatever else: 4xx temporary, 5xx permanent
    (451, "4.3.0", "Temporary local problem, try again", "deferred", False, "generic", False,
     False),
    (499, "4.4.2", "connection lost: Connection reset by peer", "deferred", False, "generic",
     False, False),
    (500, "", "Syntax error, command unrecognized", "rejected", True, "bounce", False, False),
]


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "name", "permanent", "reason", "suppress", "throttle"), REPLIES
)
def test_real_replies_are_classified(
    classifier: policy.Classifier, code: int, enhanced: str, text: str, name: str,
    permanent: bool, reason: str, suppress: bool, throttle: bool,
):
    verdict = classifier.classify(code, enhanced, text)
    assert (verdict.name, verdict.permanent, verdict.reason, verdict.suppress, verdict.throttle) \
        == (name, permanent, reason, suppress, throttle)


def test_hard_bounce_is_the_only_suppressing_class(classifier: policy.Classifier):
    suppressing = {r.verdict.name for r in classifier.rules if r.verdict.suppress}
    throttling = {r.verdict.name for r in classifier.rules if r.verdict.throttle}
    assert suppressing == {"mailbox-unknown"}
    assert throttling == {"throttled"}
    for rule in classifier.rules:
        if rule.verdict.suppress:
            assert rule.verdict.permanent  # a temporary failure never suppresses


RULES_HEAD = """
[class.a]
severity = "permanent"
reason = "bounce"
suppress = true

[class.b]
severity = "temporary"
reason = "greylisted"
"""


def test_unmatched_replies_fall_back_on_their_code(tmp_path: Path):
    classifier = load_classifier(write(tmp_path, RULES_HEAD + """
[[rule]]
code = ["550"]
text = "no such user"
class = "a"
"""))
    assert classifier.classify(550, "", "No such user").name == "a"
    temporary = classifier.classify(451, "4.3.0", "local problem")
    assert (temporary.permanent, temporary.reason, temporary.suppress) == (False, "generic", False)
    permanent = classifier.classify(553, "5.1.3", "bad address syntax")
    assert (permanent.permanent, permanent.reason, permanent.suppress) == (True, "bounce", False)
    assert not load_classifier(write(tmp_path, "", "empty.toml")).classify(
        550, "5.1.1", "user unknown"
    ).suppress  # no rules at all: every 5xx is a plain permanent failure


def test_rule_conditions_must_all_match_and_the_first_match_wins(tmp_path: Path):
    classifier = load_classifier(write(tmp_path, RULES_HEAD + """
[[rule]]
code = ["5"]
enhanced = ["5.1.1"]
text = "unknown"
class = "a"

[[rule]]
code = ["4", "55"]
class = "b"
"""))
    assert classifier.classify(550, "5.1.1", "User UNKNOWN").name == "a"
    assert classifier.classify(550, "5.1.1", "mailbox disabled").name == "b"  # text fails
    assert classifier.classify(551, "5.1.1", "user not local").name == "b"  # "55" prefix
    assert classifier.classify(554, "5.1.1", "other").name == "b"
    assert classifier.classify(530, "5.1.1", "other").name == "rejected"  # fallback
    assert classifier.classify(421, "", "bye").name == "b"


@pytest.mark.parametrize(
    ("prefixes", "enhanced", "matches"),
    [
        ('["5.1.1"]', "5.1.1", True),
        ('["5.1.1"]', "5.1.10", False),  # a whole code, not a string prefix
        ('["5.1.1"]', "5.1.12", False),
        ('["5.1.10"]', "5.1.10", True),
        ('["5.1.10"]', "5.1.1", False),
        ('["4.7."]', "4.7.1", True),  # a trailing dot: every 4.7.x
        ('["4.7."]', "4.7.650", True),
        ('["4.7."]', "4.7", False),
        ('["4.7."]', "4.77.1", False),
        ('["4.7."]', "5.7.1", False),
        ('["5.1.1"]', "", False),  # a reply without an enhanced code
        ('["5.2.2", "5.1."]', "5.1.6", True),
    ],
)
def test_enhanced_code_prefix_semantics(tmp_path: Path, prefixes: str, enhanced: str,
                                        matches: bool):
    classifier = load_classifier(write(tmp_path, RULES_HEAD + f"""
[[rule]]
enhanced = {prefixes}
class = "b"
"""))
    code = 550 if enhanced.startswith("5") or not enhanced else 450
    assert (classifier.classify(code, enhanced, "text").name == "b") is matches


def test_shipped_rules_5_1_10_is_listed_and_5_1_1_is_no_prefix(classifier: policy.Classifier):
    # 5.1.10 (Outlook's RecipientNotFound) is a hard bounce because it is listed itself
    assert classifier.classify(550, "5.1.10", "Recipient not found").suppress
    # 5.1.11 is not in the list and no text rule matches: a plain permanent failure
    verdict = classifier.classify(550, "5.1.11", "something else")
    assert verdict.permanent and not verdict.suppress


# -- broken files -----------------------------------------------------------------------------

SHAPING_MISTAKES = [
    ("[default]\nconnection = 3\n", "default.connection"),
    ("[profile.gmail]\nmessages_per_conection = 5\n", "profile.gmail.messages_per_conection"),
    ("[default]\nper_minute = -1\n", "default.per_minute"),
    ("[profile.x]\nthrottle_pause_s = -0.5\n", "profile.x.throttle_pause_s"),
    ("[default]\nconnections = 0\n", "default.connections"),
    ("[profile.x]\nmessages_per_connection = 0\n", "profile.x.messages_per_connection"),
    ("[default]\nthrottle_connections = 2\n", "default.throttle_connections"),
    ("[profile.x]\nthrottle_connections = 0\n", "profile.x.throttle_connections"),
    ("[default]\nconnections = 2.5\n", "default.connections"),
    ("[default]\nconnections = \"5\"\n", "default.connections"),
    ("[default]\nconnections = true\n", "default.connections"),
    ("[profile.x]\ndomains = \"gmail.com\"\n", "profile.x.domains"),
    ("[default]\ndomains = [\"gmail.com\"]\n", "default"),
    ("[defaults]\nconnections = 1\n", "defaults"),
    ("[profile]\nx = 1\n", "profile.x"),
    ("[default\nconnections = 1\n", "line 1"),  # not TOML at all
]


@pytest.mark.parametrize(("text", "named"), SHAPING_MISTAKES)
def test_bad_shaping_file_is_refused_in_one_line(tmp_path: Path, text: str, named: str):
    with pytest.raises(ConfigError) as caught:
        load_shaping(write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    assert named in message


CLASS = '[class.x]\nseverity = "permanent"\nreason = "bounce"\n'

BOUNCE_MISTAKES = [
    ('[[rule]]\ncode = ["5"]\nclass = "nope"\n' + CLASS, "rule 1.class"),
    (CLASS + '[[rule]]\ncode = ["5"]\nclass = "x"\n[[rule]]\ncode = ["4"]\nclass = "y"\n',
     "rule 2.class"),
    (CLASS + '[[rule]]\ncode = ["5"]\ntext = "(unclosed"\nclass = "x"\n', "rule 1.text"),
    (CLASS + '[[rule]]\ntext = "[a-"\nclass = "x"\n', "rule 1.text"),
    (CLASS + '[[rule]]\nclass = "x"\n', "rule 1"),
    (CLASS + '[[rule]]\ncode = []\nenhanced = []\nclass = "x"\n', "rule 1"),
    (CLASS + '[[rule]]\ncode = [5]\nclass = "x"\n', "rule 1.code"),
    (CLASS + '[[rule]]\ncode = "5"\nclass = "x"\n', "rule 1.code"),
    (CLASS + '[[rule]]\nenhanced = [""]\nclass = "x"\n', "rule 1.enhanced"),
    (CLASS + '[[rule]]\ncode = ["5"]\nclas = "x"\n', "rule 1.clas"),
    ('[class.x]\nseverity = "fatal"\nreason = "bounce"\n', "class.x.severity"),
    ('[class.x]\nreason = "bounce"\n', "class.x.severity"),
    ('[class.x]\nseverity = "temporary"\n', "class.x.reason"),
    ('[class.x]\nseverity = "temporary"\nreason = "generic"\nsuppress = "yes"\n',
     "class.x.suppress"),
    ('[class.x]\nseverity = "temporary"\nreason = "generic"\nthrotle = true\n', "class.x.throtle"),
    ('[classes.x]\nseverity = "temporary"\n', "classes"),
    ("[[rule]\n", "line 1"),
]


@pytest.mark.parametrize(("text", "named"), BOUNCE_MISTAKES)
def test_bad_bounce_rules_file_is_refused_in_one_line(tmp_path: Path, text: str, named: str):
    with pytest.raises(ConfigError) as caught:
        load_classifier(write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    assert named in message


@pytest.mark.parametrize(
    ("loader", "text"),
    [
        (load_shaping, "default = 1\n"),
        (load_shaping, "profile = 1\n"),
        (load_classifier, "class = 1\n"),
        (load_classifier, "[class]\nx = 1\n"),
        (load_classifier, "rule = 1\n"),
        (load_classifier, "rule = [1]\n"),
    ],
)
def test_wrongly_typed_tables_are_refused_in_one_line(
    tmp_path: Path, loader: Callable[[str], Any], text: str
):
    with pytest.raises(ConfigError):
        loader(write(tmp_path, text))


def test_missing_files_are_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"outbound.shaping_file: .*nothere.toml not found"):
        load_shaping(str(tmp_path / "nothere.toml"))
    with pytest.raises(ConfigError, match=r"outbound.bounce_rules_file: .*nothere.toml"):
        load_classifier(str(tmp_path / "nothere.toml"))


@pytest.mark.parametrize(
    ("key", "text", "named"),
    [
        ("shaping_file", "[default]\nconnections = 0\n", "default.connections"),
        ("bounce_rules_file", '[[rule]]\ncode = ["5"]\nclass = "x"\n', "rule 1.class"),
    ],
)
async def test_server_refuses_to_start_with_a_bad_policy_file(
    start_server: Callable[..., Any], tmp_path: Path, key: str, text: str, named: str
):
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError, match=named):
        await start_server(outbound__enabled=True, **{f"outbound__{key}": path})


async def test_server_starts_with_good_policy_files(
    start_server: Callable[..., Any], tmp_path: Path
):
    running = await start_server(
        outbound__enabled=True,
        outbound__shaping_file=write(tmp_path, "[default]\nconnections = 2\n", "s.toml"),
        outbound__bounce_rules_file=str(CONFIG / "bounces.toml"),
    )
    assert running.server.outbound is not None
