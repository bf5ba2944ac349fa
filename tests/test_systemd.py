"""The shipped systemd unit is valid and keeps the hardening the README promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "mta.service"


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_runs_unprivileged_with_only_the_low_port_capability():
    unit = settings()
    assert unit["User"] == ["mta"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["NoNewPrivileges"] == ["true"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"][0].split()[1:] == ["serve", "--config", "/etc/mta/mta.toml"]


def test_unit_keeps_the_data_dir_private_and_its_only_writable_place():
    unit = settings()
    assert unit["StateDirectory"] == ["mta"]  # /var/lib/mta, made and owned for User=
    assert unit["StateDirectoryMode"] == ["0700"]
    assert "ReadWritePaths" not in unit  # StateDirectory= is the one writable path
    assert unit["UMask"] == ["0077"]


def test_unit_refuses_privileged_and_resource_changing_system_calls():
    unit = settings()
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["SystemCallErrorNumber"] == ["EPERM"]
    assert unit["SystemCallArchitectures"] == ["native"]


def test_unit_hides_other_processes_and_bounds_memory_and_tasks():
    unit = settings()
    assert unit["ProtectProc"] == ["invisible"]
    assert unit["ProcSubset"] == ["pid"]
    assert unit["RemoveIPC"] == ["yes"]
    assert unit["MemoryMax"] == ["2G"]
    assert unit["TasksMax"] == ["256"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    mta = shutil.which("mta")
    assert mta, "the mta console script must be installed"
    unit = tmp_path / "mta.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/mta", mta))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "mta.service" not in result.stderr, result.stderr
