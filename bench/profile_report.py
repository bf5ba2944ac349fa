"""Read py-spy's collapsed stacks (`--format raw --threads`, as written by the bench commands'
--profile option) and say where the server's time went.

    python bench/profile_report.py FILE [--top 25]

Prints, per thread kind, the share of samples in each part of the accept path (the nearest
`mta` frame to the leaf decides; library code is charged to the `mta` code that called it),
then the top functions by self and by total (inclusive) samples on the event-loop thread,
and the hottest lines of the store's writer (executor) threads.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import linecache
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# (category, file under mta/, function names or "*" for the whole file)
MTA_RULES: list[tuple[str, str, Iterable[str] | str]] = [
    ("store: enqueue/wake-up (loop thread)", "store/__init__.py", ("Store.write", "_Job")),
    ("store: enqueue/wake-up (loop thread)", "store/__init__.py", ("Store._writer_loop",)),
    ("auth + domain/key cache (SQLite peeks)", "store/__init__.py", ("Store.peek",)),
    ("auth + domain/key cache (SQLite peeks)", "keys.py", "*"),
    ("auth + domain/key cache (SQLite peeks)", "domains.py", "*"),
    ("auth + domain/key cache (SQLite peeks)", "api/context.py", "*"),
    ("auth + domain/key cache (SQLite peeks)", "api/__init__.py", "*"),
    ("form parsing -> Submission", "api/forms.py", "*"),
    ("form parsing -> Submission", "dates.py", ("parse_date",)),
    ("response JSON", "api/errors.py", "*"),
    ("response JSON", "api/messages.py", ("_accept",)),
    ("form parsing -> Submission", "api/messages.py", "*"),
    ("event JSON + rows", "events/__init__.py", "*"),
    ("event JSON + rows", "accept/__init__.py", ("Acceptor._accepted_event",)),
    (
        "accept: address parsing",
        "accept/__init__.py",
        ("parse_addresses", "valid_addr_spec", "_unique", "format_to", "Address"),
    ),
    (
        "accept: MIME build",
        "accept/__init__.py",
        (
            "Acceptor._copies_from_parts",
            "Acceptor._copies_from_mime",
            "Acceptor._variables_header",
            "Acceptor._vars_for",
            "new_message_id",
            "_same",
        ),
    ),
    ("accept: MIME build", "accept/mime.py", "*"),
    ("accept: MIME build", "dates.py", "*"),
    ("accept: validate + recipient rows", "accept/__init__.py", "*"),
]

IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "_connection_worker_thread (aiosqlite/core.py",
)


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int

    @classmethod
    def parse(cls, text: str) -> Frame:
        function, _, where = text.rpartition(" (")
        if not function:
            return cls(text, "", 0)
        file, _, line = where.rstrip(")").rpartition(":")
        return cls(function, file, int(line) if line.isdigit() else 0)

    @property
    def base(self) -> str:
        return self.function.split(".<locals>")[0]

    @property
    def label(self) -> str:
        return f"{self.base} ({self.file})"


def mta_category(frame: Frame) -> str | None:
    if not frame.file.startswith("mta/"):
        return None
    path = frame.file[4:]
    for category, file, names in MTA_RULES:
        if path != file:
            continue
        if names == "*" or any(frame.base == n or frame.base.startswith(n + ".") for n in names):
            return category
    return "mta: other"


def loop_category(frames: list[Frame]) -> str:
    """A loop-thread sample: the nearest mta frame decides, else which library part runs."""
    for frame in reversed(frames):
        category = mta_category(frame)
        if category is not None and frame.base not in ("main", "<module>"):
            return category
    names = {f.base for f in frames}
    files = {f.file for f in frames}
    if frames[-1].base in ("EpollSelector.select", "BaseSelectorEventLoop.select"):
        return "event loop: epoll wait"
    if any(n.endswith("data_received") for n in names) or "aiohttp/http_parser.py" in files:
        return "aiohttp: request parsing (data_received)"
    if "aiohttp/web_response.py" in files or any("finish_response" in n for n in names):
        return "aiohttp: response write"
    if any(f.startswith("aiohttp/") for f in files):
        return "aiohttp: dispatch (Request, router, middleware glue)"
    return "asyncio: event loop, transports, futures"


def source_line(file: str, line: int) -> str:
    if file.startswith("mta/"):
        spec = importlib.util.find_spec("mta")
        if spec is not None and spec.origin is not None:
            path = Path(spec.origin).parent.parent / file
            return linecache.getline(str(path), line).strip()
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    per_thread: collections.Counter[str] = collections.Counter()
    loop_cats: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total_time: collections.Counter[str] = collections.Counter()
    writer_lines: collections.Counter[str] = collections.Counter()
    part_self: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    loop_samples = 0
    for raw in args.file.read_text().splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        thread, *rest = stack.split(";")
        frames = [Frame.parse(f) for f in rest]
        if not frames:
            continue
        leaf = rest[-1]
        is_loop = thread.endswith("MainThread")
        if not is_loop:
            if leaf.startswith(IDLE_LEAVES):
                per_thread["other threads: idle (waiting for work)"] += count
            elif any(f.base == "Store._commit_batch" for f in frames):
                per_thread["store writer thread: commit"] += count
                text = source_line(frames[-1].file, frames[-1].line)
                writer_lines[f"{frames[-1].label}:{frames[-1].line}  {text}"] += count
            else:
                per_thread["other threads: other"] += count
            continue
        per_thread["event-loop thread"] += count
        loop_samples += count
        part = loop_category(frames)
        loop_cats[part] += count
        part_self[part][frames[-1].label] += count
        self_time[frames[-1].label] += count
        for label in {f.label for f in frames}:
            total_time[label] += count

    print_report(
        per_thread,
        loop_cats,
        part_self,
        self_time,
        total_time,
        writer_lines,
        loop_samples,
        args.top,
        examples=4,
    )


def print_report(
    per_thread: collections.Counter[str],
    parts: collections.Counter[str],
    part_self: dict[str, collections.Counter[str]],
    self_time: collections.Counter[str],
    total_time: collections.Counter[str],
    writer_lines: collections.Counter[str],
    loop_samples: int,
    top: int,
    examples: int,
) -> None:
    """The report both profile commands print: threads, the loop's parts, hottest functions."""
    print(f"samples: {sum(per_thread.values())}")
    for name, n in per_thread.most_common():
        print(f"  {n:7d}  {name}")
    print(f"\nevent-loop thread by part ({loop_samples} samples = 100%):")
    for name, n in parts.most_common():
        print(f"  {100 * n / loop_samples:5.1f}%  {name}")
        for label, m in part_self[name].most_common(examples):
            print(f"           {100 * m / loop_samples:5.1f}%  {label}")
    print(f"\nevent-loop thread, top {top} functions by self samples:")
    for name, n in self_time.most_common(top):
        print(f"  {100 * n / loop_samples:5.1f}%  {name}")
    print(f"\nevent-loop thread, top {top} functions by total samples (below the loop):")
    inner = [(k, v) for k, v in total_time.most_common() if v < 0.95 * loop_samples]
    for name, n in inner[:top]:
        print(f"  {100 * n / loop_samples:5.1f}%  {name}")
    commit = per_thread["store writer thread: commit"]
    if commit:
        print(f"\nstore writer thread, hottest lines ({commit} samples = 100%):")
        for name, n in writer_lines.most_common(8):
            print(f"  {100 * n / commit:5.1f}%  {name}")


if __name__ == "__main__":
    main()
