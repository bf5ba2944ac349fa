"""`mta queue ...` (issue 14): queue inspection and control from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from mta.services import Services

NAME = "queue"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `mta queue` and its actions to the CLI."""


def work(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    raise NotImplementedError
