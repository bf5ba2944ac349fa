"""`mta admin password`: the control panel's admin password (besides primary API keys), kept
as an scrypt hash in the store. Read from the terminal twice, or once from stdin (--stdin) for
scripts."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable

from mta.credentials import CredentialError, check_password_length
from mta.panel.sessions import set_admin_password
from mta.services import Services

NAME = "admin"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `mta admin password` to the CLI."""
    admin = sub.add_parser(NAME, parents=[common], help="the control panel's admin sign-in")
    actions = admin.add_subparsers(dest="action", required=True)
    password = actions.add_parser("password", parents=[common],
                                  help="set the admin password for the panel at /cp/")
    password.add_argument("--stdin", action="store_true",
                          help="read the password from the first line of stdin")


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New admin password: ")
    if getpass.getpass("Again: ") != first:
        print("mta: the passwords differ", file=sys.stderr)
        return None
    return first


def work(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    password = _read_password(args.stdin)

    async def run(services: Services) -> int:
        if password is None:
            return 1
        try:
            check_password_length(password)
        except CredentialError as exc:
            print(f"mta: {exc}", file=sys.stderr)
            return 1
        await set_admin_password(services.store, password)
        print("admin password set: sign in at /cp/ with it")
        return 0

    return run
