"""`mta serve` and the admin commands. Admin commands open the same store as the server and
may run while it does (SQLite WAL; the server notices admin changes through admin_version)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mta import config as config_module
from mta import doctor
from mta.app import serve
from mta.config import Config, ConfigError
from mta.credentials import CredentialError, full_login
from mta.dates import rfc2822
from mta.domains import DomainError
from mta.events.logs import bare_lines
from mta.panel import admin as panel_admin
from mta.queue import commands as queue_commands
from mta.services import Services, open_services
from mta.store import StoreUnavailable, owner_only

# commands whose modules add their own parsers and work: (NAME, register(sub, common), work)
_PLUGGED = (queue_commands, doctor, panel_admin)


async def _print_records(services: Services, name: str) -> None:
    domain = await services.domains.get(name)
    assert domain is not None
    print(f"Domain {domain.name} ({domain.type}, {domain.state}). Publish these DNS records:")
    records = services.domains.sending_records(domain) + services.domains.receiving_records(domain)
    for r in records:
        value = f"{r.priority} {r.value}" if r.priority else r.value
        print(f"  {r.name:<40} {r.record_type:<6} {value}")


async def _with_services(config: Config, work: Callable[[Services], Awaitable[int]]) -> int:
    services = await open_services(config)
    try:
        return await work(services)
    finally:
        await services.close()


def _domain_command(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    async def run(s: Services) -> int:
        try:
            if args.action == "add":
                domain = await s.domains.create(args.name, sandbox=args.sandbox)
                await _print_records(s, domain.name)
            elif args.action == "list":
                for d in await s.domains.all():
                    print(f"{d.name}\t{d.type}\t{d.state}\tcreated {rfc2822(d.created_at)}")
            elif args.action == "remove":
                if not await s.delete_domain(args.name):
                    return _fail(f"no such domain: {args.name}")
                print(f"removed {args.name}")
            elif args.action == "records":
                if await s.domains.get(args.name) is None:
                    return _fail(f"no such domain: {args.name}")
                await _print_records(s, args.name)
            elif args.action == "verify":
                domain = await s.domains.verify(args.name)
                for key, found in sorted(domain.dns_results.items()):
                    print(f"  {found['valid']:<8} {key}")
                print(f"{domain.name}: {domain.state}")
            elif args.action == "authorize":
                await s.domains.authorize(args.name, args.address)
                print(f"{args.address} may now receive mail from {args.name}")
            elif args.action == "deauthorize":
                await s.domains.deauthorize(args.name, args.address)
                print(f"{args.address} removed from {args.name}'s authorized recipients")
        except DomainError as exc:
            return _fail(str(exc))
        return 0

    return run


def _key_command(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    async def run(s: Services) -> int:
        if args.action == "create":
            if args.domain and await s.domains.get(args.domain) is None:
                return _fail(f"no such domain: {args.domain}")
            _, secret = await s.keys.create(
                domain=args.domain.lower() if args.domain else None,
                description=args.description or "",
            )
            print(secret)
        elif args.action == "list":
            for key in await s.keys.list():
                scope = f"sending key for {key.domain}" if key.domain else "primary"
                state = f"revoked {rfc2822(key.revoked_at)}" if key.revoked_at else "active"
                print(
                    f"{key.id}\t{scope}\t{state}\tcreated {rfc2822(key.created_at)}"
                    f"\t{key.description}"
                )
        elif args.action == "revoke":
            if not await s.keys.revoke(args.id):
                return _fail(f"no active key with id {args.id}")
            print(f"revoked {args.id}")
        return 0

    return run


def _read_password(args: argparse.Namespace) -> str:
    """--password, else one line from stdin (a prompt without echo on a terminal): a password
    on the command line is visible in `ps` and shell history."""
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def _signing_key_command(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    async def run(s: Services) -> int:
        print(await (s.account.rotate_signing_key() if args.rotate else s.account.signing_key()))
        return 0

    return run


def _credential_command(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    async def run(s: Services) -> int:
        domain = await s.domains.get(args.domain)
        if domain is None:
            return _fail(f"no such domain: {args.domain}")
        try:
            if args.action == "add":
                credential = await s.credentials.create(
                    domain.name, args.login, _read_password(args)
                )
                print(f"created {credential.login}")
            elif args.action == "list":
                for c in await s.credentials.list(domain.name):
                    print(f"{c.login}\tcreated {rfc2822(c.created_at)}")
            elif args.action == "passwd":
                await s.credentials.set_password(domain.name, args.login, _read_password(args))
                print(f"password changed for {full_login(args.login, domain.name)}")
            elif args.action == "remove":
                print(f"removed {await s.credentials.delete(domain.name, args.login)}")
        except CredentialError as exc:
            return _fail(str(exc))
        return 0

    return run


def _list_command(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    """`mta list import LIST FILE`: members from a CSV or JSON file, streamed (the file is
    never read whole), a chunk of lists.upload_chunk per transaction with its upload events,
    a progress bar on stderr and a summary on stdout."""

    async def run(s: Services) -> int:
        from tqdm import tqdm

        from mta.lists.imports import ImportFailure, Upload, csv_entries, json_entries

        lst = await s.lists.get(args.list)
        if lst is None:
            return _fail(f"no such mailing list: {args.list} (create it with the API first)")
        fmt = args.format or ("json" if args.file.lower().endswith(".json") else "csv")
        try:
            raw = open(args.file, "rb")  # noqa: SIM115 (closed below, after the last chunk)
        except OSError as exc:
            return _fail(f"cannot read {args.file}: {exc.strerror or exc}")
        failure = None
        upload = Upload(s.lists, s.store, lst, upsert=args.upsert, format=fmt)
        with (
            raw,
            io.TextIOWrapper(
                raw, encoding="utf-8-sig", errors="surrogateescape", newline=""
            ) as text,
            tqdm(
                total=os.fstat(raw.fileno()).st_size, unit="B", unit_scale=True,
                unit_divisor=1024, desc=f"{lst.address} ({fmt})", file=sys.stderr,
                mininterval=0.5,
            ) as bar,
        ):
            try:
                entries = (
                    json_entries(s.lists, text) if fmt == "json" else csv_entries(s.lists, text)
                )
                for number, entry in enumerate(entries, start=1):
                    await upload.add(entry)
                    if number % 500 == 0:
                        bar.set_postfix(entries=number, refresh=False)
                        bar.update(raw.tell() - bar.n)
            except ImportFailure as exc:
                failure = str(exc)
            summary = await upload.finish(complete=failure is None)
            bar.update(raw.tell() - bar.n)
        existing = (
            f"{summary.updated} updated" if args.upsert
            else f"{summary.skipped} skipped (already members; --upsert updates them)"
        )
        refused = f", {summary.refused} refused (the list is full)" if summary.refused else ""
        print(
            f"{lst.address}: {summary.created} imported, {existing},"
            f" {summary.malformed} malformed{refused}; task-id {summary.task_id}"
        )
        for bad in summary.malformed_rows:
            where = "entry" if fmt == "json" else "line"
            print(f"  {where} {bad.row}: {bad.message}: {bad.entry}")
        if summary.malformed > len(summary.malformed_rows):
            print(f"  ... and {summary.malformed - len(summary.malformed_rows)} more malformed")
        if failure is not None:
            return _fail(f"{args.file}: {failure}; the entries before it were imported")
        return 0

    return run


async def _copy_store(config: Config, url: str) -> int:
    from mta.store.copy import copy_store
    from mta.store.postgres import PostgresStore
    from mta.store.sqlite import SqliteStore

    if not url.startswith(("postgresql://", "postgres://")):
        return _fail("--to: expected a postgresql://user:password@host/database URL")
    if not config.db_path.exists():
        return _fail(f"no SQLite store at {config.db_path}")
    started = time.monotonic()
    source = await SqliteStore.open(config.db_path, node_id=config.node_id)
    try:
        target = await PostgresStore.open(
            url, node_id=config.node_id, pool_size=config.store.pool_size,
            statement_timeout_s=0,
        )
        try:
            copied = await copy_store(source, target)
        finally:
            await target.close()
    finally:
        await source.close()
    rows = sum(c.rows for c in copied)
    print(f"copied {rows:,} rows of {len(copied)} tables from {config.db_path} in"
          f" {time.monotonic() - started:.1f} s; point [store] url at the database and start"
          " the nodes")
    return 0


def _tighten_data_dir(config: Config) -> None:
    """What makes the data directory makes it 0700 (store, TLS pair, spool); one left open to
    other users by an older version or `install -d` is tightened before anything reads it."""
    data_dir = Path(config.server.data_dir)
    if data_dir.is_dir():
        owner_only(data_dir, 0o700)


def _fail(message: str) -> int:
    print(f"mta: {message}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=os.environ.get("MTA_CONFIG"),
        help="TOML config file (default: $MTA_CONFIG, else the built-in defaults)",
    )
    parser = argparse.ArgumentParser(prog="mta", description="Mailgun-compatible mail server")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the server in the foreground")

    domain = sub.add_parser("domain", help="manage sending domains")
    dsub = domain.add_subparsers(dest="action", required=True)
    add = dsub.add_parser("add", parents=[common], help="create a domain and its DKIM key")
    add.add_argument("name")
    add.add_argument(
        "--sandbox",
        action="store_true",
        help="may send only to its authorized recipients (at most 5)",
    )
    dsub.add_parser("list", parents=[common], help="list domains")
    for action, text in (
        ("remove", "delete a domain"),
        ("records", "show DNS records to publish"),
        ("verify", "check the DNS records now"),
    ):
        p = dsub.add_parser(action, parents=[common], help=text)
        p.add_argument("name")
    for action, text in (
        ("authorize", "add an authorized recipient to a sandbox domain"),
        ("deauthorize", "remove an authorized recipient"),
    ):
        p = dsub.add_parser(action, parents=[common], help=text)
        p.add_argument("name")
        p.add_argument("address")

    key = sub.add_parser("key", help="manage API keys")
    ksub = key.add_subparsers(dest="action", required=True)
    create = ksub.add_parser(
        "create", parents=[common], help="print a new API key (shown once, stored hashed)"
    )
    create.add_argument("--domain", help="a sending key: only POST messages for this domain")
    create.add_argument("--description", default="")
    ksub.add_parser("list", parents=[common], help="list keys (ids, never secrets)")
    revoke = ksub.add_parser("revoke", parents=[common], help="revoke a key by id")
    revoke.add_argument("id")

    credential = sub.add_parser("credential", help="manage SMTP credentials (SMTP AUTH logins)")
    csub = credential.add_subparsers(dest="action", required=True)
    for action, text in (
        ("add", "create a login (password from stdin unless --password)"),
        ("passwd", "change a login's password (from stdin unless --password)"),
        ("remove", "delete a login"),
        ("list", "list a domain's logins"),
    ):
        p = csub.add_parser(action, parents=[common], help=text)
        p.add_argument("domain")
        if action != "list":
            p.add_argument("login", help="local part or full address on the domain")
        if action in ("add", "passwd"):
            p.add_argument("--password", help="visible to other local users in `ps`; prefer stdin")

    signing = sub.add_parser(
        "signing-key", parents=[common],
        help="print the account key that signs webhooks, route forwards and notifications",
    )
    signing.add_argument(
        "--rotate", action="store_true",
        help="make a new key and print it (posts are signed with it from now on)",
    )

    store = sub.add_parser("store", help="the store's engine")
    ssub = store.add_subparsers(dest="action", required=True)
    copy = ssub.add_parser(
        "copy", parents=[common],
        help="copy the SQLite store (stop the server first) into an empty PostgreSQL database",
    )
    copy.add_argument("--to", required=True, metavar="postgresql://user:pass@host/db")

    mlist = sub.add_parser("list", help="mailing lists")
    lsub = mlist.add_subparsers(dest="action", required=True)
    imp = lsub.add_parser(
        "import", parents=[common],
        help="add members to a list from a CSV file (header row with address, and optionally"
        " name, vars, subscribed) or a JSON array, a chunk per transaction",
    )
    imp.add_argument("list", metavar="LIST", help="the list's address")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument(
        "--upsert", action="store_true",
        help="update members already on the list (else they are left as they are)",
    )
    imp.add_argument(
        "--format", choices=("csv", "json"),
        help="the file's format (default: json for a .json file, else csv)",
    )

    sub.add_parser(
        "config", parents=[common], help="print every setting with its default and meaning (TOML)"
    )
    for module in _PLUGGED:
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        sys.stdout.write(config_module.render_reference())
        return 0
    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        print(f"mta: config error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.logs.events != "off":
        bare_lines(sys.stderr)
    try:
        _tighten_data_dir(config)
        if args.command == "serve":
            asyncio.run(serve(config))
            return 0
        if args.command == "store":
            return asyncio.run(_copy_store(config, args.to))
        commands = {
            "domain": _domain_command,
            "key": _key_command,
            "credential": _credential_command,
            "signing-key": _signing_key_command,
            "list": _list_command,
            **{module.NAME: module.work for module in _PLUGGED},
        }
        work = commands[args.command](args)
        return asyncio.run(_with_services(config, work))
    except StoreUnavailable as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:  # an unusable store file: one line, not a traceback
        return _fail(f"cannot open the store {config.db_path}: {exc}")
    except OSError as exc:
        return _fail(f"cannot start: {exc}")
