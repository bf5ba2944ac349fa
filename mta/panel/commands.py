"""`mta admin password` (issue 14): the control panel's admin password."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from mta.services import Services

NAME = "admin"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `mta admin` and its actions to the CLI."""


def work(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    raise NotImplementedError
