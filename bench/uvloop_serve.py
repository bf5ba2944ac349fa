"""`mta serve` on uvloop: installs the uvloop event-loop policy, then runs the normal CLI.

    python bench/uvloop_serve.py            # same as `mta serve`, same MTA_* variables
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from mta.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(["serve", *sys.argv[1:]]))
