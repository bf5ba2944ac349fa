"""Two trees, interleaved: bench/delivery.py, smtp_accept.py, http_accept.py or smtp_clients.py on
commit A and commit B in turn (A B A B ..., `--runs` pairs), each run a fresh server importing
that tree's `mta`.

Each commit's `mta` and `config` are unpacked with `git archive <commit> mta config` into a
temporary directory, and each run is `python bench/<bench>.py` (this checkout's bench commands)
with that directory first on PYTHONPATH, so the server, the CLI and the bench's own imports all
use that tree. The bench commands' own checks must say ok for a run to count.

For each headline figure it prints both medians, their ratio B/A, the per-pair ratios (a pair is
an A run and the B run right after it: drift of the machine cancels out) and a verdict:
`beyond_noise` when every pair moved the same way and the two sets of runs do not overlap
(min of one above max of the other), else `within_noise`.

    python bench/ab.py [--a d83cbd3] [--b HEAD] [--runs 3]
        [--benches delivery,smtp_accept,http_accept,smtp_clients]
        [--bench-args 'delivery=--messages 5000']

A run of the defaults takes about 10 minutes. The figures are printed last, one `name: value`
per line, after a `---` line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH_DIR, median

# figure -> True when higher is better
FIGURES = {
    "delivery": {
        "delivery_1k_end_to_end_msgs_per_s": True,
        "delivery_10k_end_to_end_msgs_per_s": True,
        "delivery_1k_accept_msgs_per_s": True,
        "delivery_10k_accept_msgs_per_s": True,
        "delivery_1k_server_cpu_us_per_msg": False,
        "delivery_10k_server_cpu_us_per_msg": False,
        "delivery_1k_server_peak_rss_mib": False,
    },
    "smtp_accept": {
        "smtp_reused_1k_msgs_per_s": True,
        "smtp_reused_10k_msgs_per_s": True,
        "smtp_per_session_1k_msgs_per_s": True,
        "smtp_idle_1000_peak_rss_mib": False,
        "reused_1k_server_cpu_us_per_msg_all_threads": False,
        "reused_10k_server_cpu_us_per_msg_all_threads": False,
        "session_1k_server_cpu_us_per_msg_all_threads": False,
    },
    "http_accept": {
        "http_accept_msgs_per_s": True,
        "server_cpu_us_per_msg_all_threads": False,
    },
    "smtp_clients": {
        "mta_accept_1s_1k_msgs_per_s": True,
        "mta_accept_1s_1k_end_of_data_to_250_p50_ms": False,
        "mta_accept_20s_1k_msgs_per_s": True,
        "mta_e2e_1s_1k_msgs_per_s": True,
        "mta_e2e_1s_1k_end_of_data_to_250_p50_ms": False,
        "mta_e2e_20s_1k_msgs_per_s": True,
    },
}
# smtp_clients has no ok line: its exit status says whether its own checks held
CHECKS = {"delivery": ("delivery_1k_check", "delivery_10k_check"), "smtp_accept": ("db_check",),
          "http_accept": ("db_check",), "smtp_clients": ()}


def snapshot(commit: str, into: Path) -> str:
    """`mta` and `config` of `commit` unpacked into `into`; returns the full commit id."""
    full = subprocess.run(["git", "rev-parse", commit], capture_output=True, text=True,
                          check=True, cwd=BENCH_DIR.parent).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", full, "mta", "config"], capture_output=True,
                             check=True, cwd=BENCH_DIR.parent)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return full


def figures_of(output: str) -> dict[str, str]:
    """The `name: value` lines after the last `---`."""
    tail = output.rpartition("\n---\n")[2]
    found = {}
    for line in tail.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            found[name.strip()] = value.strip()
    return found


def run_bench(bench: str, tree: Path, extra: list[str], log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(BENCH_DIR / f"{bench}.py"), *extra], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    with open(log, "a") as out:
        out.write(f"===== {bench} {tree} (exit {done.returncode})\n{done.stdout}\n{done.stderr}\n")
    found = figures_of(done.stdout)
    found["_seconds"] = f"{time.monotonic() - began:.0f}"
    found["_exit"] = str(done.returncode)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", default="d83cbd3", help="the tree before (default: before issue 9)")
    parser.add_argument("--b", default="HEAD", help="the tree after")
    parser.add_argument("--runs", type=int, default=3, help="A/B pairs per bench")
    parser.add_argument("--benches", default="delivery,smtp_accept")
    parser.add_argument("--bench-args", action="append", default=[], metavar="BENCH=ARGS",
                        help="extra arguments for one bench, e.g. 'delivery=--messages 5000'")
    parser.add_argument("--log", type=Path, help="keep every run's whole output here")
    args = parser.parse_args()
    benches = [b.strip() for b in args.benches.split(",") if b.strip()]
    unknown = [b for b in benches if b not in FIGURES]
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(unknown)}")
    extra: dict[str, list[str]] = {b: [] for b in benches}
    for item in args.bench_args:
        name, _, rest = item.partition("=")
        extra.setdefault(name, []).extend(shlex.split(rest))

    work = Path(tempfile.mkdtemp(prefix="mta-ab-"))
    log = args.log or work / "runs.log"
    results: dict[str, dict[str, list[dict[str, str]]]] = {b: {"A": [], "B": []} for b in benches}
    began = time.monotonic()
    try:
        trees = {"A": work / "A", "B": work / "B"}
        commits = {side: snapshot(getattr(args, side.lower()), tree)
                   for side, tree in trees.items()}
        print(f"A = {commits['A'][:10]} ({args.a}), B = {commits['B'][:10]} ({args.b})",
              flush=True)
        for i in range(args.runs):
            for bench in benches:
                for side in ("A", "B"):
                    found = run_bench(bench, trees[side], extra[bench], log)
                    results[bench][side].append(found)
                    shown = ", ".join(f"{k}={found.get(k, '?')}" for k in list(FIGURES[bench])[:3])
                    print(f"[{i + 1}/{args.runs}] {bench} {side}: {shown}"
                          f" ({found['_seconds']} s, exit {found['_exit']})", flush=True)
    finally:
        if args.log is None:
            kept = Path(tempfile.gettempdir()) / f"mta-ab-{os.getpid()}.log"
            if log.exists():
                shutil.copy(log, kept)
                print(f"whole output of every run: {kept}", flush=True)
        shutil.rmtree(work, ignore_errors=True)

    print("---")
    print(f"a_commit: {commits['A'][:10]} ({args.a})")
    print(f"b_commit: {commits['B'][:10]} ({args.b})")
    print(f"runs_per_side: {args.runs}")
    print("order: " + " ".join(f"{b}:AB" for b in benches) + f" x {args.runs}")
    print(f"run_s: {time.monotonic() - began:.0f}")
    failed = 0
    for bench in benches:
        for side in ("A", "B"):
            for n, found in enumerate(results[bench][side]):
                bad = [c for c in CHECKS[bench] if found.get(c) != "ok"]
                if bad or found["_exit"] != "0":
                    failed += 1
                    print(f"{bench}_{side}_run{n + 1}_check: FAILED ({', '.join(bad)} exit"
                          f" {found['_exit']})")
        for figure, higher_better in FIGURES[bench].items():
            a = [float(r[figure]) for r in results[bench]["A"] if figure in r]
            b = [float(r[figure]) for r in results[bench]["B"] if figure in r]
            if not a or not b:
                continue
            pairs = [y / x for x, y in zip(a, b, strict=False) if x]
            ratio = median(b) / median(a) if median(a) else float("nan")
            same_way = all(p > 1 for p in pairs) or all(p < 1 for p in pairs)
            apart = min(b) > max(a) or min(a) > max(b)
            verdict = "beyond_noise" if same_way and apart else "within_noise"
            better = (ratio > 1) == higher_better
            print(f"{figure}_a_median: {median(a):g}")
            print(f"{figure}_b_median: {median(b):g}")
            print(f"{figure}_a_runs: {' '.join(f'{v:g}' for v in a)}")
            print(f"{figure}_b_runs: {' '.join(f'{v:g}' for v in b)}")
            print(f"{figure}_ratio_b_over_a: {ratio:.3f}")
            print(f"{figure}_pair_ratios: {' '.join(f'{p:.3f}' for p in pairs)}")
            print(f"{figure}_verdict: {verdict}"
                  + ("" if verdict == "within_noise" else f" ({'better' if better else 'worse'})"))
    print(f"check: {'ok' if not failed else f'FAILED ({failed} runs)'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
