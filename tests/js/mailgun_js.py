"""Running the official Node SDK (mailgun.js, installed here by `npm ci`) against a test server:
tests/js/client.js makes one SDK call and prints what the SDK parsed, as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running

CLIENT = Path(__file__).parent / "client.js"


async def call(running: Running, name: str, args: Any = None) -> Any:
    """The SDK's result of `name` (a key of client.js's `calls`) with `args`."""
    if shutil.which("node") is None or not (CLIENT.parent / "node_modules").is_dir():
        pytest.skip("mailgun.js is not installed (.ci/run runs npm ci in tests/js)")
    env = os.environ | {"MTA_URL": running.url, "MTA_KEY": running.key, "MTA_DOMAIN": running.domain}
    proc = await asyncio.create_subprocess_exec(
        "node", str(CLIENT), name, json.dumps(args), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"mailgun.js {name} failed: {err.decode()}"
    return json.loads(out)
