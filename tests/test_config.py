"""The one config schema: defaults, the shipped file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta import config as config_module
from mta.config import Config, ConfigError, load

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "mta.toml"


def test_shipped_config_file_is_the_generated_reference_and_loads_to_the_defaults():
    assert SHIPPED.read_text() == config_module.render_reference()
    assert load(SHIPPED, env={}) == Config()


def test_defaults_keep_everything_on_loopback_and_unprivileged():
    config = load(None, env={})
    assert config.api.listen == "127.0.0.1:8080"
    assert config.server.data_dir == "./var"
    assert str(config.db_path) == "var/mta.db"


def test_environment_overrides_every_kind_of_setting(tmp_path: Path):
    env = {
        "MTA_API_LISTEN": "127.0.0.1:9999",
        "MTA_STORE_COMMIT_WINDOW_MS": "2.5",
        "MTA_SENDING_MAX_RECIPIENTS": "10",
        "MTA_DNS_ONLY_ANSWERS": "yes",
        "MTA_DNS_ANSWERS": '{"example.com TXT": ["v=spf1 -all"]}',
        "MTA_DOMAINS_MX_HOSTS": '["mx1.example.com", "mx2.example.com"]',
    }
    config = load(None, env=env)
    assert config.api.listen == "127.0.0.1:9999"
    assert config.store.commit_window_ms == 2.5
    assert config.sending.max_recipients == 10
    assert config.dns.only_answers is True
    assert config.dns.answers == {"example.com TXT": ["v=spf1 -all"]}
    assert config.mx_hosts == ["mx1.example.com", "mx2.example.com"]


def test_environment_wins_over_the_file(tmp_path: Path):
    path = tmp_path / "mta.toml"
    path.write_text('[api]\nlisten = "127.0.0.1:1111"\n[server]\nhostname = "mx.example.org"\n')
    config = load(path, env={"MTA_API_LISTEN": "127.0.0.1:2222"})
    assert config.api.listen == "127.0.0.1:2222"
    assert config.server.hostname == "mx.example.org"


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[api]\nlisten = 8080\n", {}, "api.listen"),
        ('[api]\nlisten = "nonsense"\n', {}, "api.listen"),
        ('[api]\nlisen = "127.0.0.1:1"\n', {}, "api.lisen: unknown setting"),
        ("[nosuch]\nx = 1\n", {}, "nosuch: unknown section"),
        ('[sending]\nmax_recipients = "many"\n', {}, "sending.max_recipients"),
        ("", {"MTA_SENDING_MAX_RECIPIENTS": "many"}, "MTA_SENDING_MAX_RECIPIENTS"),
        ("", {"MTA_DNS_ONLY_ANSWERS": "perhaps"}, "MTA_DNS_ONLY_ANSWERS"),
        ("[domains]\ndkim_key_bits = 4096\n", {}, "domains.dkim_key_bits"),
        ('[dns]\nanswers = { "nospace" = [] }\n', {}, "dns.answers"),
        ("[api\n", {}, "config file"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_key(tmp_path: Path, text, env, names):
    path = tmp_path / "mta.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path, env=env)
    assert names in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_config_file_is_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "absent.toml", env={})
