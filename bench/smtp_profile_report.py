"""Where the SMTP server's time went: py-spy collapsed stacks (`--format raw --threads`, as
written by `bench/smtp_accept.py --profile FILE`), split by part of the SMTP path.

    python bench/smtp_profile_report.py FILE [--top 25]

Each event-loop sample goes to the first of these parts found on its stack (the most specific
first): aiosmtpd's MAIL/RCPT address parsing; replies (our push, aiosmtpd's push, the TLS
encryption and the socket send); the accept path (split like bench/profile_report.py: MIME
build, validation, event JSON, store enqueue); our SMTP handler; aiosmtpd's DATA line loop;
aiosmtpd's command loop; incoming TLS records (asyncio's sslproto, which aiosmtpd uses for
STARTTLS even on uvloop); plain socket reads; the event loop itself. Then the top functions by
self and total samples, and the hottest lines of the store's writer thread.
"""

from __future__ import annotations

import argparse
import collections

from profile_report import IDLE_LEAVES, Frame, mta_category, print_report, source_line

PARTS: list[tuple[str, tuple[str, ...]]] = [
    # (part, function names: the sample goes here when one of them is on the stack)
    ("aiosmtpd: MAIL/RCPT address parsing (_getaddr)", ("SMTP._getaddr",)),
    ("replies: push -> TLS encrypt -> socket send", ("SubmissionSession.push", "SMTP.push")),
    ("accept path", ("Acceptor.accept",)),
    ("our SMTP handler (mta/smtp, outside accept)", ("SubmissionHandler.", "SubmissionSession.")),
    ("aiosmtpd: DATA line loop", ("SMTP.smtp_DATA",)),
    ("aiosmtpd: command loop (read, decode, dispatch, smtp_*)", ("SMTP._handle_client",)),
    ("TLS in: records decrypted (asyncio sslproto)", ("SSLProtocol.",)),
    ("socket reads (recv; TLS records or plain)", ("_SelectorSocketTransport._read_ready",)),
    ("store: enqueue/wake-up (loop thread)", ("Store.",)),
]


def loop_part(frames: list[Frame]) -> str:
    bases = [f.base for f in frames]
    for part, names in PARTS:
        if any(b == n or (n.endswith(".") and b.startswith(n)) for b in bases for n in names):
            if part == "accept path":
                for frame in reversed(frames):
                    category = mta_category(frame)
                    if category is not None and not frame.file.startswith("mta/smtp"):
                        return f"accept path: {category}"
            return part
    if frames[-1].base in ("EpollSelector.select", "BaseSelectorEventLoop.select"):
        return "event loop: epoll wait"
    return "asyncio: event loop, callbacks, futures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    per_thread: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    part_self: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    self_time: collections.Counter[str] = collections.Counter()
    total_time: collections.Counter[str] = collections.Counter()
    writer_lines: collections.Counter[str] = collections.Counter()
    loop_samples = 0
    with open(args.file) as stacks:
        for raw in stacks:
            stack, _, count_text = raw.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            thread, *rest = stack.split(";")
            frames = [Frame.parse(f) for f in rest]
            if not frames:
                continue
            if not thread.endswith("MainThread"):
                if rest[-1].startswith(IDLE_LEAVES):
                    per_thread["other threads: idle (waiting for work)"] += count
                elif any(f.base == "Store._commit_batch" for f in frames):
                    per_thread["store writer thread: commit"] += count
                    leaf = frames[-1]
                    text = source_line(leaf.file, leaf.line)
                    writer_lines[f"{leaf.label}:{leaf.line}  {text}"] += count
                elif any(f.base == "check_password" for f in frames):
                    per_thread["other threads: scrypt (AUTH)"] += count
                else:
                    per_thread["other threads: other"] += count
                continue
            per_thread["event-loop thread"] += count
            loop_samples += count
            part = loop_part(frames)
            parts[part] += count
            part_self[part][frames[-1].label] += count
            self_time[frames[-1].label] += count
            for label in {f.label for f in frames}:
                total_time[label] += count

    if not loop_samples:
        raise SystemExit("no event-loop samples in the file")
    print_report(
        per_thread,
        parts,
        part_self,
        self_time,
        total_time,
        writer_lines,
        loop_samples,
        args.top,
        examples=5,
    )


if __name__ == "__main__":
    main()
