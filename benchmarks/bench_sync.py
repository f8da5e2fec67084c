"""Sync benchmark: `erpsync run` as a real process between the ERP and storefront simulators.

    python -m benchmarks.bench_sync                         # 100,000 products, 3 repeats
    python -m benchmarks.bench_sync --products 2000 --repeats 1   # smoke run, under a minute
    python benchmarks/bench_sync.py --help

It measures, on 127.0.0.1:

1. the first sync of N products: wall time from starting the daemon until the storefront holds
   every record and the outbox is empty, the split between the first full poll and the push
   drain (from poll_runs / push_runs in the state database), and the daemon's peak RSS (VmHWM);
2. a poll that finds 1,000 changes among N inventory records (ERP /_sim/tie: 1,000 distinct
   records really changed in one ERP transaction), repeated --repeats times;
3. ERP requests per idle poll, per domain (ERP /_sim/stats against poll_runs);
4. webhook POSTs per 1,000 changes with batch_size 100 and with batch_size 1000.

This is a script, not a test: pytest only collects `tests/` (pyproject testpaths) and the file
name does not match test_*.py. It changes nothing outside a temporary directory.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # `python benchmarks/bench_sync.py` puts benchmarks/ first instead
    sys.path.insert(0, str(PROJECT_ROOT))

from examples.launch import Simulator, start_simulator  # noqa: E402
from tests.running import ENV, SIMULATOR_DOMAINS  # noqa: E402
from tests.running import daemon_toml as simulator_toml  # noqa: E402

CHANGES = 1000  # changes per round in figures 2 and 4
CHECK_EVERY = 0.1  # seconds between convergence checks


class BenchError(Exception):
    """The benchmark could not finish; the message says where and why."""


def progress(message: str) -> None:
    """A progress line on stderr (the results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- configuration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000, help="products in the ERP simulator (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of 1,000 changes per batch size (default 3)")
    parser.add_argument("--domains", default="product,price,inventory",
                        help="domains to sync, comma separated (default product,price,inventory)")
    parser.add_argument("--page-size", type=int, default=1000, help="request.page_size (default 1000)")
    parser.add_argument("--interval", default="2s", help="poll interval of every domain (default 2s)")
    parser.add_argument("--lookback", default="5s", help="lookback of every domain (default 5s)")
    parser.add_argument("--erp-rate", type=float, default=100, help="erp.max_requests_per_second (default 100)")
    parser.add_argument("--erp-concurrency", type=int, default=2, help="erp.max_concurrency (default 2)")
    parser.add_argument("--shop-rate", type=float, default=1000,
                        help="channel max_requests_per_second (default 1000; the storefront runs with --rate 0)")
    parser.add_argument("--shop-burst", type=int, default=10, help="channel burst (default 10)")
    parser.add_argument("--batch-size", type=int, default=100, help="channel batch_size for the first sync (default 100)")
    parser.add_argument("--idle-polls", type=int, default=5, help="poll intervals to watch for figure 3 (default 5)")
    parser.add_argument("--deadline", type=float, default=900, help="seconds allowed for the first sync (default 900)")
    parser.add_argument("--round-deadline", type=float, default=120,
                        help="seconds allowed for one round of 1,000 changes (default 120)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (state db, logs)")
    args = parser.parse_args(argv)
    args.domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = [d for d in args.domains if d not in SIMULATOR_DOMAINS]
    if unknown or not args.domains:
        parser.error(f"--domains: unknown {unknown}; choose from {list(SIMULATOR_DOMAINS)}")
    if "inventory" not in args.domains:
        parser.error("--domains must include inventory (figures 2 and 4 change inventory records)")
    if args.products < CHANGES:
        parser.error(f"--products must be at least {CHANGES}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def seconds_of(duration: str) -> float:
    from connector.durations import parse_duration

    return parse_duration(duration).total_seconds()


def daemon_toml(args: argparse.Namespace, erp_url: str, shop_url: str, batch_size: int) -> str:
    """The integration tests' simulator configuration, at the benchmark's sizes and rates."""
    return simulator_toml(erp_url, shop_url, interval=args.interval, lookback=args.lookback, erp_rate=args.erp_rate,
                          erp_concurrency=args.erp_concurrency, shop_rate=args.shop_rate, shop_burst=args.shop_burst,
                          batch_size=batch_size, domains=args.domains, page_size=args.page_size, timeout="30s")


# --------------------------------------------------------------------------- processes


def proc_memory(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process in KiB (empty if it is gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmHWM", "VmRSS"):
                    values[name] = int(rest.split()[0])
    except OSError:
        pass
    return values


@dataclass
class Daemon:
    """`erpsync run --config ...` as a process of its own, its stderr in a log file."""

    config: Path
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector", "run", "--config", str(self.config)],
            cwd=PROJECT_ROOT, env={**os.environ, **ENV}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
        )

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"the daemon exited (status {code}); last log lines:\n{self.log_tail()}")

    def memory(self) -> dict[str, int]:
        return proc_memory(self.process.pid) if self.process else {}

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class StateReader:
    """Read-only queries on the daemon's state database (safe while it runs: WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self.conn is None:
            if not self.path.exists():
                return None
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            try:
                conn.execute("SELECT 1 FROM poll_runs LIMIT 1")
            except sqlite3.OperationalError:  # not migrated yet
                conn.close()
                return None
            self.conn = conn
        return self.conn

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._connect()
        return [] if conn is None else conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: tuple = (), default: Any = None) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows and rows[0][0] is not None else default

    def pending(self) -> int | None:
        """Outbox rows (None: no database yet)."""
        conn = self._connect()
        return None if conn is None else conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def epoch(text: str | None) -> float | None:
    """A state-db timestamp (aware ISO 8601) as Unix seconds."""
    return datetime.fromisoformat(text).timestamp() if text else None


def wait_until(predicate: Callable[[], Any], deadline: float, what: str, daemon: Daemon | None = None,
               report: Callable[[], str] | None = None, report_every: float = 15.0) -> Any:
    """Check predicate every CHECK_EVERY s until it is truthy; BenchError after `deadline` seconds."""
    start = time.monotonic()
    last_report = start
    checks = 0
    while checks < deadline / CHECK_EVERY * 10:  # bounded in count as well as in time
        checks += 1
        if daemon is not None:
            daemon.check_alive()
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now - start > deadline:
            break
        if report is not None and now - last_report >= report_every:
            progress(f"  waiting for {what} ({now - start:.0f}s): {report()}")
            last_report = now
        time.sleep(CHECK_EVERY)
    detail = f"; last state: {report()}" if report else ""
    log = f"\nlast daemon log lines:\n{daemon.log_tail()}" if daemon else ""
    raise BenchError(f"timed out after {deadline:.0f}s waiting for {what}{detail}{log}")


# --------------------------------------------------------------------------- measurements


@dataclass
class FirstSync:
    records: int
    wall: float
    polls: dict[str, dict[str, Any]]
    polls_done_at: float
    push_first_start: float | None
    push_last_finish: float | None
    push_batches: int
    push_requests: int
    memory: dict[str, int]
    erp_memory: dict[str, int]
    shop_memory: dict[str, int]


@dataclass
class Round:
    batch_size: int
    poll_seconds: float
    poll_records: int
    poll_pages: int
    poll_requests: int
    changed: int
    mutate_to_poll_start: float
    mutate_to_store: float
    poll_end_to_store: float
    webhook_posts: int
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class Idle:
    label: str
    window: float
    per_domain: dict[str, dict[str, Any]]


def first_sync(args, daemon: Daemon, state: StateReader, erp: Simulator, shop: Simulator) -> FirstSync:
    expected = args.products * len(args.domains)  # one price and one MAIN inventory row per product
    progress(f"1. first sync: {expected:,} records ({', '.join(args.domains)}), deadline {args.deadline:.0f}s")
    started = time.time()
    daemon.start()

    def polled() -> int:
        return state.scalar(
            "SELECT count(DISTINCT domain) FROM poll_runs WHERE full_resync = 1 AND status = 'ok'", default=0)

    def done() -> bool:
        if polled() < len(args.domains):
            return False
        if state.pending() != 0:
            return False
        return shop.get("/_sim/stats")["changes_applied"] >= expected

    def report() -> str:
        read = state.scalar("SELECT sum(records) FROM poll_runs WHERE full_resync = 1", default=0)
        stats = shop.get("/_sim/stats")
        return (f"polled {read:,}/{expected:,} records, {polled()}/{len(args.domains)} full polls done, "
                f"outbox {state.pending()}, storefront applied {stats['changes_applied']:,}, "
                f"daemon RSS {daemon.memory().get('VmRSS', 0) / 1024:.0f} MiB")

    wait_until(done, args.deadline, "the first sync", daemon, report)
    wall = time.time() - started
    memory = daemon.memory()
    progress(f"  first sync done in {wall:.1f}s")

    stats = shop.get("/_sim/stats")
    if stats["changes_applied"] != expected or stats["regressions"] or stats["duplicates"]:
        raise BenchError(f"storefront after the first sync: {stats['changes_applied']} applied (expected {expected}), "
                         f"{stats['regressions']} regressions, {stats['duplicates']} duplicates")
    polls = {}
    for domain, begun, ended, pages, records, changed, requests in state.rows(
        "SELECT domain, started_at, finished_at, pages, records, changed, requests FROM poll_runs "
        "WHERE full_resync = 1 AND status = 'ok' ORDER BY id"
    ):
        polls.setdefault(domain, {"start": epoch(begun) - started, "end": epoch(ended) - started, "pages": pages,
                                  "records": records, "changed": changed, "requests": requests})
    first, last, batches, requests = state.rows(
        "SELECT min(started_at), max(finished_at), count(*), sum(requests) FROM push_runs")[0]
    return FirstSync(
        records=expected, wall=wall, polls=polls, polls_done_at=max(p["end"] for p in polls.values()),
        push_first_start=epoch(first) - started if first else None,
        push_last_finish=epoch(last) - started if last else None,
        push_batches=batches, push_requests=requests or 0, memory=memory,
        erp_memory=proc_memory(erp.process.pid), shop_memory=proc_memory(shop.process.pid),
    )


def wait_settled(args, daemon: Daemon, state: StateReader, since_id: int) -> None:
    """Every domain finished an ok poll with id > since_id and the outbox is empty."""
    def settled() -> bool:
        done = state.scalar("SELECT count(DISTINCT domain) FROM poll_runs WHERE id > ? AND status = 'ok'",
                            (since_id,), default=0)
        return done >= len(args.domains) and state.pending() == 0
    wait_until(settled, args.round_deadline, "the daemon to settle", daemon,
               lambda: f"outbox {state.pending()}")


def change_round(args, daemon: Daemon, state: StateReader, erp: Simulator, shop: Simulator, batch_size: int) -> Round:
    """Change 1,000 inventory records in one ERP transaction; time the poll that reads them and the push."""
    last_poll = state.scalar("SELECT max(id) FROM poll_runs", default=0)
    last_push = state.scalar("SELECT max(id) FROM push_runs", default=0)
    before = shop.get("/_sim/stats")
    mutated = time.time()
    answer = erp.post("/_sim/tie", {"resource": "inventory", "count": CHANGES})
    if answer["count"] != CHANGES:
        raise BenchError(f"the ERP changed {answer['count']} records, not {CHANGES}")

    def stored() -> bool:
        if state.pending() != 0:
            return False
        return shop.get("/_sim/stats")["changes_applied"] - before["changes_applied"] >= CHANGES

    def report() -> str:
        applied = shop.get("/_sim/stats")["changes_applied"] - before["changes_applied"]
        return f"outbox {state.pending()}, storefront applied {applied}/{CHANGES}"

    wait_until(stored, args.round_deadline, f"{CHANGES} changes to reach the storefront", daemon, report)
    reached = time.time()
    after = shop.get("/_sim/stats")
    polls = state.rows(
        "SELECT started_at, finished_at, pages, records, changed, requests FROM poll_runs "
        "WHERE id > ? AND domain = 'inventory' AND changed > 0 ORDER BY id", (last_poll,))
    changed = sum(p[4] for p in polls)
    if changed != CHANGES or not polls:
        raise BenchError(f"the inventory polls after the change recorded {changed} changes in {len(polls)} poll(s), "
                         f"expected {CHANGES} (other domains must be idle)")
    if len(polls) > 1:
        progress(f"  note: the {CHANGES} changes were read by {len(polls)} polls")
    begun, ended = epoch(polls[0][0]), epoch(polls[-1][1])
    sizes = [row[0] for row in state.rows("SELECT changes FROM push_runs WHERE id > ? ORDER BY id", (last_push,))]
    return Round(
        batch_size=batch_size, poll_seconds=sum(epoch(p[1]) - epoch(p[0]) for p in polls),
        poll_records=sum(p[3] for p in polls), poll_pages=sum(p[2] for p in polls),
        poll_requests=sum(p[5] for p in polls), changed=changed,
        mutate_to_poll_start=begun - mutated, mutate_to_store=reached - mutated, poll_end_to_store=reached - ended,
        webhook_posts=after["requests"] - before["requests"], batch_sizes=sizes,
    )


def quiet_point(state: StateReader) -> int:
    """Wait (bounded) for a moment no poll is running; returns the newest poll id."""
    for _ in range(500):
        running = state.scalar("SELECT count(*) FROM poll_runs WHERE status = 'running'", default=0)
        if not running:
            return state.scalar("SELECT max(id) FROM poll_runs", default=0)
        time.sleep(0.01)
    raise BenchError("a poll was always running for 5 s; cannot find a quiet point to count idle requests")


def idle_requests(args, daemon: Daemon, state: StateReader, erp: Simulator, label: str) -> Idle:
    """ERP /api requests per idle poll and domain: nothing changes in the ERP during the window."""
    window = args.idle_polls * seconds_of(args.interval)
    progress(f"3. idle cycle {label}: counting ERP requests for {window:.0f}s")
    for _ in range(20):  # the reset must fall between two polls
        first = quiet_point(state)
        erp.post("/_sim/stats/reset")
        if quiet_point(state) == first:
            break
    else:
        raise BenchError("could not reset the ERP counters between two polls")
    reset_at = time.monotonic()
    time.sleep(window)
    daemon.check_alive()
    for _ in range(20):
        last = quiet_point(state)
        stats = erp.get("/_sim/stats")
        if quiet_point(state) == last:
            break
    else:
        raise BenchError("could not read the ERP counters between two polls")
    elapsed = time.monotonic() - reset_at
    per_domain = {}
    for domain in args.domains:
        path = SIMULATOR_DOMAINS[domain][0]
        polls, requests, records, changed = state.rows(
            "SELECT count(*), sum(requests), sum(records), sum(changed) FROM poll_runs "
            "WHERE domain = ? AND id > ? AND id <= ?", (domain, first, last))[0]
        per_domain[domain] = {"polls": polls, "erp_requests": stats["by_path"].get(path, 0),
                              "daemon_requests": requests or 0, "records": records or 0, "changed": changed or 0}
    return Idle(label, elapsed, per_domain)


# --------------------------------------------------------------------------- report


def mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f} MiB" if kib else "n/a"


def machine_info() -> list[str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = (commit + (" + uncommitted changes" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    commit = commit or "unknown (not a git checkout)"
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}){memory}, {platform.system()} {platform.release()}",
        f"python {platform.python_version()} ({platform.python_implementation()}), SQLite {sqlite3.sqlite_version}, "
        f"code under test: {PROJECT_ROOT}, git commit {commit}",
    ]


def median_line(label: str, values: list[float], unit: str = "s", digits: int = 2) -> str:
    shown = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"  {label:<44} median {statistics.median(values):.{digits}f} {unit}   (all: {shown})"


def print_report(args, sync: FirstSync, rounds: list[Round], idles: list[Idle], peak: dict[str, int]) -> None:
    out = []
    domain_list = ", ".join(args.domains)
    out.append("=" * 100)
    out.append(f"erpsync sync benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    out.extend(machine_info())
    out.append(f"ERP simulator --products {args.products} --change-rate 0 --max-limit 1000; "
               f"storefront simulator --rate 0 (no limit), HMAC signatures on")
    out.append(f"daemon: domains {domain_list}; page_size {args.page_size}, cursor paging; interval {args.interval}, "
               f"lookback {args.lookback}")
    out.append(f"        ERP budget {args.erp_rate:g} requests/s, concurrency {args.erp_concurrency}; channel webhook "
               f"{args.shop_rate:g} requests/s, burst {args.shop_burst}, batch_size {args.batch_size} "
               f"(first sync and figure 2)")
    out.append("-" * 100)

    out.append(f"1. first sync of {args.products:,} SKUs = {sync.records:,} records ({domain_list})")
    out.append(f"  {'wall: daemon start -> storefront has all, outbox empty':<58} {sync.wall:8.1f} s")
    for domain, poll in sync.polls.items():
        rate = poll["records"] / max(poll["end"] - poll["start"], 1e-9)
        out.append(f"  {'first full poll ' + domain:<58} {poll['end'] - poll['start']:8.1f} s   "
                   f"(+{poll['start']:.1f} -> +{poll['end']:.1f} s; {poll['records']:,} records, {poll['pages']} pages, "
                   f"{poll['requests']} requests; {rate:,.0f} records/s)")
    out.append(f"  {'all first polls finished at':<58} {'+' + format(sync.polls_done_at, '.1f'):>8} s")
    if sync.push_first_start is not None:
        out.append(f"  {'push: first batch started / last batch finished':<58} "
                   f"{'+' + format(sync.push_first_start, '.1f'):>8} s / +{sync.push_last_finish:.1f} s   ({sync.push_batches} batches, {sync.push_requests} requests)")
        out.append(f"  {'push drain after the last poll finished':<58} {sync.push_last_finish - sync.polls_done_at:8.1f} s")
    out.append(f"  {'daemon peak RSS (VmHWM) at convergence':<58} {mib(sync.memory.get('VmHWM')):>10}"
               f"   (VmRSS {mib(sync.memory.get('VmRSS'))})")
    out.append(f"  {'daemon peak RSS (VmHWM) after figures 2 and 3':<58} {mib(peak.get('VmHWM')):>10}")
    out.append(f"  {'simulators peak RSS: ERP / storefront':<58} {mib(sync.erp_memory.get('VmHWM')):>10}"
               f" / {mib(sync.shop_memory.get('VmHWM'))}")

    by_batch: dict[int, list[Round]] = {}
    for r in rounds:
        by_batch.setdefault(r.batch_size, []).append(r)
    first_rounds = by_batch[args.batch_size]
    out.append("-" * 100)
    out.append(f"2. a poll that finds {CHANGES:,} changes among {args.products:,} inventory records "
               f"(ERP /_sim/tie: {CHANGES:,} records changed in one ERP transaction; {len(rounds)} rounds)")
    out.append(f"  {'round':>5} {'batch':>6} {'poll s':>8} {'records':>8} {'pages':>6} {'req':>4} {'changed':>8} "
               f"{'change->poll start':>19} {'poll end->store':>16} {'change->store':>14}")
    for index, r in enumerate(rounds, 1):
        out.append(f"  {index:>5} {r.batch_size:>6} {r.poll_seconds:>8.3f} {r.poll_records:>8} {r.poll_pages:>6} "
                   f"{r.poll_requests:>4} {r.changed:>8} {r.mutate_to_poll_start:>18.2f}s {r.poll_end_to_store:>15.2f}s "
                   f"{r.mutate_to_store:>13.2f}s")
    out.append(median_line(f"poll time (batch_size {args.batch_size} rounds)", [r.poll_seconds for r in first_rounds], digits=3))
    out.append(median_line("poll time (all rounds)", [r.poll_seconds for r in rounds], digits=3))
    out.append(median_line("poll end -> storefront has all 1,000", [r.poll_end_to_store for r in first_rounds]))
    out.append(median_line("ERP change -> storefront (includes interval wait)", [r.mutate_to_store for r in first_rounds]))

    out.append("-" * 100)
    out.append("3. ERP requests per idle poll (nothing changing in the ERP; records re-read are those at or after "
               "the settled point)")
    out.append(f"  {'when':<22} {'domain':<10} {'polls':>6} {'ERP /api req':>13} {'per poll':>9} {'daemon-counted':>15} "
               f"{'records re-read/poll':>21} {'changed':>8}")
    for idle in idles:
        for domain, row in idle.per_domain.items():
            per_poll = row["erp_requests"] / row["polls"] if row["polls"] else float("nan")
            reread = row["records"] / row["polls"] if row["polls"] else float("nan")
            out.append(f"  {idle.label:<22} {domain:<10} {row['polls']:>6} {row['erp_requests']:>13} {per_poll:>9.2f} "
                       f"{row['daemon_requests']:>15} {reread:>21.0f} {row['changed']:>8}")
        out.append(f"  {'':<22} ({idle.window:.1f} s watched)")

    out.append("-" * 100)
    out.append(f"4. webhook POSTs per {CHANGES:,} changes (storefront /_sim/stats; ideal = ceil({CHANGES}/batch_size))")
    for batch_size, group in by_batch.items():
        posts = ", ".join(str(r.webhook_posts) for r in group)
        sizes = "; ".join("[" + ", ".join(str(s) for s in r.batch_sizes) + "]" for r in group)
        out.append(f"  batch_size {batch_size:>5}: POSTs per round {posts}  (median "
                   f"{statistics.median(r.webhook_posts for r in group):g}, ideal {math.ceil(CHANGES / batch_size)})")
        out.append(f"  {'':>18}changes per batch: {sizes}")
    out.append("=" * 100)
    print("\n".join(out), flush=True)


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, workdir: Path) -> None:
    sims: list[Simulator] = []
    daemons: list[Daemon] = []
    state = StateReader(workdir / "state.db")
    try:
        progress(f"starting the simulators ({args.products:,} products) in {workdir}")
        erp = start_simulator("examples.erp_simulator", "--products", str(args.products), "--change-rate", "0",
                              "--max-limit", "1000", "--token", ENV["IT_ERP_TOKEN"], timeout=300)
        sims.append(erp)
        shop = start_simulator("examples.storefront_simulator", "--rate", "0", "--secret-env", "IT_SHOP_SECRET",
                               env=ENV, timeout=60)
        sims.append(shop)

        config = workdir / f"batch{args.batch_size}.toml"
        config.write_text(daemon_toml(args, erp.url, shop.url, args.batch_size))
        daemon = Daemon(config, workdir / "daemon.log")
        daemons.append(daemon)
        sync = first_sync(args, daemon, state, erp, shop)

        wait_settled(args, daemon, state, state.scalar("SELECT max(id) FROM poll_runs", default=0))
        idles = [idle_requests(args, daemon, state, erp, "after first sync")]

        rounds: list[Round] = []
        progress(f"2. {args.repeats} round(s) of {CHANGES} changes, batch_size {args.batch_size}")
        for index in range(args.repeats):
            wait_settled(args, daemon, state, state.scalar("SELECT max(id) FROM poll_runs", default=0))
            rounds.append(change_round(args, daemon, state, erp, shop, args.batch_size))
            progress(f"  round {index + 1}: poll {rounds[-1].poll_seconds:.3f}s, "
                     f"store after {rounds[-1].mutate_to_store:.2f}s, {rounds[-1].webhook_posts} POSTs")

        wait_settled(args, daemon, state, state.scalar("SELECT max(id) FROM poll_runs", default=0))
        idles.append(idle_requests(args, daemon, state, erp, "after change rounds"))

        peak = daemon.memory()
        status = daemon.stop()
        if status not in (0, None):
            progress(f"  note: the daemon exited with status {status}")

        other = 1000 if args.batch_size != 1000 else 100
        progress(f"4. restarting the daemon with batch_size {other}: {args.repeats} round(s) of {CHANGES} changes")
        config = workdir / f"batch{other}.toml"
        config.write_text(daemon_toml(args, erp.url, shop.url, other))
        since = state.scalar("SELECT max(id) FROM poll_runs", default=0)
        daemon = Daemon(config, workdir / "daemon.log")
        daemons.append(daemon)
        daemon.start()
        for index in range(args.repeats):
            wait_settled(args, daemon, state, state.scalar("SELECT max(id) FROM poll_runs", default=0) if index else since)
            rounds.append(change_round(args, daemon, state, erp, shop, other))
            progress(f"  round {index + 1}: poll {rounds[-1].poll_seconds:.3f}s, "
                     f"store after {rounds[-1].mutate_to_store:.2f}s, {rounds[-1].webhook_posts} POSTs")

        final = shop.get("/_sim/stats")
        if final["regressions"] or final["duplicates"] or final["rate_limited"]:
            progress(f"  note: storefront saw {final['regressions']} regressions, {final['duplicates']} duplicates, "
                     f"{final['rate_limited']} rate-limited requests")
        print_report(args, sync, rounds, idles, peak)
    finally:
        state.close()
        for daemon in daemons:
            daemon.stop()
        for sim in sims:
            sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="erpsync-bench-"))
    try:
        run(args, workdir)
    except BenchError as error:
        print(f"bench_sync: FAILED: {error}", file=sys.stderr, flush=True)
        print(f"bench_sync: state and daemon log kept in {workdir}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"bench_sync: interrupted; state and daemon log kept in {workdir}", file=sys.stderr, flush=True)
        return 130
    if args.keep:
        print(f"state and daemon log kept in {workdir}", flush=True)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
