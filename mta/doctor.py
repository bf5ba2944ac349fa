"""`mta doctor` (issue 14): checks a node's set-up and prints what to fix."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from mta.services import Services

NAME = "doctor"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `mta doctor` to the CLI."""


def work(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    raise NotImplementedError
