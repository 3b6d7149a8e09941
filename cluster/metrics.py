"""The Prometheus exporter: one HTTP endpoint per run, read live at scrape time.

A :class:`NumaemuCollector` (a prometheus-client custom collector, in a
``CollectorRegistry`` of its own per run: the library's global default
registry is never touched) turns the live state of a run into metrics each
time Prometheus scrapes:

- every vmstat event counter of every node, ``numaemu_<name>_total``
  (``numaemu_pgmigrate_success_total{run,policy,node}``, ...), named as
  /proc/vmstat's behind the ``numaemu_`` prefix (DESIGN.md principle 4);
- the vmstat ``nr_*`` gauges per node (``numaemu_nr_free_pages``,
  ``numaemu_nr_swapcached``, ``numaemu_nr_migcache_entries``, ...), frames
  present, used and on the LRU per node, swap slots in use and in total;
- histograms of fault latency (one observation per ``touch`` call, a batch
  of pages; on Ray, per one that faulted through the coordinator) and migration latency (one per ``move_pages`` / ``migrate_pages``
  call) in wall seconds and in emulated steps;
- the run's progress (operations done and planned, migrations, failed calls,
  violations, done);
- the explorer's progress (schedules, pruned, distinct states, rate,
  violations) while ``numaemu explore`` runs.

Every sample carries a ``run`` label (the scenario's name or ``--run-label``)
so several runs can be compared side by side, and ``policy``; per-node
metrics carry ``node``. Nothing is cached: values are as fresh as the scrape.

The run loop holds a :class:`HandoffLock` around each operation; a scrape
(on the HTTP server's thread) takes it between two operations, and the run
loop lets a waiting scrape in first, so a scrape never waits longer than one
operation.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from bisect import bisect_left
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import __version__

PREFIX = "numaemu_"

# Wall-clock buckets: an in-process fault batch takes 20 us .. 10 ms, a
# migration batch 50 us .. 2 ms; a Ray actor call costs about a millisecond,
# so cluster runs reach into seconds.
SECONDS_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                   0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Emulated steps: a fault batch runs 1 .. ~50 steps, a migration batch ~15 .. 30,
# a migrate_pages of a large process more (steps are per batch, not per page).
STEPS_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0)

DEFAULT_SD_DIR = Path("deploy/prometheus/targets")


class MetricsError(Exception):
    """Bad metrics options or an endpoint that cannot listen: exit 2."""


# -- locking ----------------------------------------------------------------

class HandoffLock:
    """A lock the run loop takes around each operation, which hands over to a
    waiting scrape when the operation ends (a plain Lock would let the run
    loop take it straight back, starving the scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = threading.Lock()  # one scrape at a time contends
        self._want = threading.Event()
        self._got = threading.Event()

    def __enter__(self) -> "HandoffLock":
        self._got.clear()
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()
        if self._want.is_set():
            self._got.wait(0.25)  # let the scrape in before the next operation

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._readers:
            self._want.set()
            self._lock.acquire()
            self._want.clear()
            self._got.set()
            try:
                yield
            finally:
                self._lock.release()


# -- histograms ---------------------------------------------------------------

class Histogram:
    """Bucket counts per label tuple; observed by the run loop under its lock."""

    def __init__(self, buckets: Iterable[float]):
        self.bounds = tuple(float(b) for b in buckets)
        self.series: dict[tuple[str, ...], list] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [[0] * (len(self.bounds) + 1), 0.0]
        s[0][bisect_left(self.bounds, value)] += 1  # le is inclusive
        s[1] += value

    def snapshot(self) -> dict[tuple[str, ...], tuple[list[int], float]]:
        return {k: (list(v[0]), v[1]) for k, v in self.series.items()}

    def family(self, name: str, doc: str, labelnames: list[str], base: list[str],
               snap: dict[tuple[str, ...], tuple[list[int], float]]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=labelnames)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, (counts, total) in sorted(snap.items()):
            cum, buckets = 0, []
            for le, c in zip(les, counts):
                cum += c
                buckets.append((le, cum))
            fam.add_metric(base + list(labels), buckets, total)
        return fam


# -- what a run exposes ---------------------------------------------------------

class RunState:
    """The live state of one ``numaemu run``: the runner (its Machine, its
    failed calls) once attached, progress, latency histograms."""

    def __init__(self, label: str, scenario: str, backend: str, planned_operations: int):
        self.label = label
        self.scenario = scenario
        self.backend = backend
        self.planned_operations = int(planned_operations)
        self.lock = HandoffLock()
        self.runner: Any = None
        self.operations = 0
        self.violations = 0
        self.done = False
        self.started = time.time()
        self.finished_at: float | None = None
        self.endpoint: "MetricsEndpoint | None" = None
        self.fault_seconds = Histogram(SECONDS_BUCKETS)
        self.fault_steps = Histogram(STEPS_BUCKETS)
        self.migration_seconds = Histogram(SECONDS_BUCKETS)
        self.migration_steps = Histogram(STEPS_BUCKETS)

    def attach(self, runner) -> None:
        """Called by the runner with itself once its Machine exists."""
        self.runner = runner

    def observe_fault(self, node: int, seconds: float, steps: int) -> None:
        key = (str(node),)
        self.fault_seconds.observe(key, seconds)
        self.fault_steps.observe(key, steps)

    def observe_migration(self, call: str, node: int, seconds: float, steps: int) -> None:
        key = (str(node), call)
        self.migration_seconds.observe(key, seconds)
        self.migration_steps.observe(key, steps)

    def finish(self, summary: dict | None = None, hold: bool = True) -> None:
        """The run is over; ``hold`` False: no --hold after it (SIGTERM stopped it)."""
        if summary is not None:
            self.violations = int(summary.get("violations", 0))
        self.finished_at = time.time()
        self.done = True
        if self.endpoint is not None:
            self.endpoint.finish(hold)


class ExploreState:
    """The live progress of one ``numaemu explore``: the explorer's Stats as
    its progress callback last handed them over."""

    def __init__(self, label: str, scenario: str, policy: str, mode: str, bugs: Iterable[str]):
        self.label = label
        self.scenario = scenario
        self.policy = policy
        self.mode = mode
        self.bugs = ",".join(bugs)
        self.stats: Any = None
        self.violations = 0
        self.done = False
        self.final: tuple[float, float] | None = None  # elapsed, rate when it ended
        self.endpoint: "MetricsEndpoint | None" = None

    def finish(self, outcome, stats) -> None:
        self.stats = stats
        self.violations = 0 if outcome is None else 1
        self.final = (stats.elapsed, stats.rate)
        self.done = True
        if self.endpoint is not None:
            self.endpoint.finish()


# -- the collector ----------------------------------------------------------------

def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


# Help text of the vmstat counters and gauges (names as /proc/vmstat's).
VMSTAT_HELP = {
    "pgfault": "Page faults handled",
    "pgmajfault": "Major faults: pages read back from swap",
    "pswpin": "Pages swapped in",
    "pswpout": "Pages swapped out",
    "pgmigrate_success": "Pages migrated successfully",
    "pgmigrate_fail": "Pages that failed to migrate",
    "numa_hit": "Pages allocated on the node the policy intended",
    "numa_miss": "Pages allocated on this node although another was intended",
    "numa_foreign": "Pages intended for this node but allocated elsewhere",
    "numa_local": "Pages allocated on the node of the allocating CPU",
    "numa_other": "Pages allocated on this node by a CPU of another node",
    "numa_interleave": "Pages allocated by the interleave policy",
    "pgsteal_kswapd": "Pages reclaimed by background reclaim",
    "pgsteal_direct": "Pages reclaimed by direct reclaim",
    "pgscan_kswapd": "Pages scanned by background reclaim",
    "pgscan_direct": "Pages scanned by direct reclaim",
    "pgalloc": "Pages allocated",
    "migcache_add": "Pages added to the V8 migration cache",
    "migcache_remove": "Pages removed from the V8 migration cache",
    "migcache_move_to_swap": "Migration-cache pages moved to the swap cache",
    "pgmigrate_fallback_swap": "Pages that fell back to swap during migration",
    "migrate_retry": "Pages retried in a later migration pass",
    "migrate_in": "Pages migrated onto this node",
    "migrate_out": "Pages migrated off this node (pgmigrate_success also counts pages freed while isolated)",
    "nr_free_pages": "Free frames (pages)",
    "nr_anon_pages": "Mapped anonymous pages",
    "nr_swapcached": "Pages in the swap cache",
    "nr_isolated_anon": "Anonymous pages isolated for migration",
    "nr_migcache_entries": "Pages in the V8 migration cache",
}


class NumaemuCollector(Collector):
    """Reads a RunState and/or an ExploreState at each scrape."""

    def __init__(self, run: RunState | None = None, explore: ExploreState | None = None):
        self.run = run
        self.explore = explore

    def collect(self):
        if self.run is not None:
            yield from self._collect_run(self.run)
        if self.explore is not None:
            yield from self._collect_explore(self.explore)

    # -- a run -------------------------------------------------------------
    def _collect_run(self, st: RunState):
        runner = st.runner
        data = None
        with st.lock.read():  # between two operations: a consistent picture
            if runner is not None:
                m = runner.m
                data = {
                    "policy": str(m.policy),
                    "payload": str(m.payload),
                    "nodes": [m.vmstat(node=n) for n in range(int(m.nr_nodes))],
                    "info": m.node_info(),
                    "swap": dict(m.swap_info()),
                    "errors": dict(runner.errors),
                    "migrations": int(runner.migration_events),
                    "forks": int(runner.forks),
                    "tlb_hits": dict(runner.tlb_hits),
                    "tlb_walks": dict(runner.tlb_walks),
                    "local_faults": dict(runner.local_faults),
                    "swapoffs": int(runner.swapoff_events),
                }
            operations = st.operations
            hists = {name: getattr(st, name).snapshot()
                     for name in ("fault_seconds", "fault_steps", "migration_seconds", "migration_steps")}
        if data is None:
            return  # not attached yet: no series with an empty policy
        base = [st.label, data["policy"]]
        rl = ["run", "policy"]

        info = InfoMetricFamily(PREFIX + "run", "The run: scenario, backend, payload, numaemu version",
                                labels=rl)
        info.add_metric(base, {"scenario": st.scenario, "backend": st.backend,
                               "payload": data["payload"], "version": __version__})
        yield info
        g = _gauge("run_done", "1 once the run has ended (the values are final)", rl)
        g.add_metric(base, 1.0 if st.done else 0.0)
        yield g
        g = _gauge("run_start_time_seconds", "When the run started, seconds since the epoch", rl)
        g.add_metric(base, st.started)
        yield g
        g = _gauge("run_elapsed_seconds", "Wall time of the run so far", rl)
        g.add_metric(base, (st.finished_at or time.time()) - st.started)
        yield g
        g = _gauge("run_planned_operations", "Batch accesses the scenario asks for", rl)
        g.add_metric(base, st.planned_operations)
        yield g
        c = _counter("run_operations", "Batch accesses done", rl)
        c.add_metric(base, operations)
        yield c
        g = _gauge("run_violations", "Violations found at the end (data read back wrong, invariants broken)", rl)
        g.add_metric(base, st.violations)
        yield g
        c = _counter("run_migrations", "Migration calls made by the runner (move_pages or migrate_pages)", rl)
        c.add_metric(base, data["migrations"])
        yield c
        c = _counter("run_forks", "Fork cycles: a child forked, its faults and writes checked, its exit "
                     "([[workload]] fork_every)", rl)
        c.add_metric(base, data["forks"])
        yield c
        c = _counter("run_swapoffs", "swapoff cycles run ([swapoff] every), failed ones included", rl)
        c.add_metric(base, data["swapoffs"])
        yield c
        c = _counter("run_failed_calls",
                     "Calls that failed with an errno (touch, move_pages, migrate_pages, fork, swapoff, ...)", rl)
        c.add_metric(base, sum(data["errors"].values()))
        yield c
        c = _counter("run_errors", "Calls that failed, by call and errno", rl + ["call", "errno"])
        for key, n in sorted(data["errors"].items()):
            call, _, err = key.partition(":")
            c.add_metric(base + [call, err], n)
        yield c

        from emulator.vmstat import EVENTS, GAUGES
        nl = rl + ["node"]
        c = _counter("tlb_hits", "Accesses a node actor ran on its own, every page present in its TLB "
                     "(0 in-process, where every access is the model's)", nl)
        for n in range(len(data["nodes"])):
            c.add_metric(base + [str(n)], data["tlb_hits"].get(n, 0))
        yield c
        c = _counter("tlb_walks", "Accesses a node actor ran on its own after a TLB miss, its page walk "
                     "finding every pte present, or every page untouched under a read (0 in-process)", nl)
        for n in range(len(data["nodes"])):
            c.add_metric(base + [str(n)], data["tlb_walks"].get(n, 0))
        yield c
        c = _counter("local_faults", "Accesses a node actor ran on its own after a TLB miss, faulting its "
                     "pages in itself with the model's do_anonymous_page or do_wp_page (0 in-process)", nl)
        for n in range(len(data["nodes"])):
            c.add_metric(base + [str(n)], data["local_faults"].get(n, 0))
        yield c
        for name in EVENTS:
            c = _counter(name, VMSTAT_HELP.get(name, name) + " (vmstat " + name + ")", nl)
            for n, vm in enumerate(data["nodes"]):
                c.add_metric(base + [str(n)], vm.get(name, 0))
            yield c
        for name in GAUGES:
            if name == "nr_swap_used":
                continue  # machine-wide, below
            g = _gauge(name, VMSTAT_HELP.get(name, name) + " (vmstat " + name + ")", nl)
            for n, vm in enumerate(data["nodes"]):
                g.add_metric(base + [str(n)], vm.get(name, 0))
            yield g
        for field, name, doc in (("frames", "node_present_pages", "Frames of the node"),
                                 ("used", "node_used_pages", "Frames in use on the node"),
                                 ("lru", "node_lru_pages", "Frames on the node's LRU")):
            g = _gauge(name, doc, nl)
            for row in data["info"]:
                g.add_metric(base + [str(row["node"])], row[field])
            yield g
        sw = data["swap"]
        g = _gauge("nr_swap_used", "Swap slots in use (vmstat nr_swap_used)", rl)
        g.add_metric(base, sw.get("used", 0))
        yield g
        g = _gauge("swap_size_pages", "Swap slots on the swap device", rl)
        g.add_metric(base, sw.get("slots", 0))
        yield g
        g = _gauge("swap_enabled", "1 while the swap device is on", rl)
        g.add_metric(base, 1.0 if sw.get("on") else 0.0)
        yield g
        g = _gauge("swap_cache_pages", "Swap slots whose page is in the swap cache", rl)
        g.add_metric(base, sw.get("swapcached", 0))
        yield g

        yield st.fault_seconds.family(
            PREFIX + "fault_latency_seconds",
            "Wall time of a fault batch (one touch call), by the processes' node", nl, base,
            hists["fault_seconds"])
        yield st.fault_steps.family(
            PREFIX + "fault_latency_steps",
            "Emulated steps of a fault batch (one touch call), by the processes' node", nl, base,
            hists["fault_steps"])
        ml = nl + ["call"]
        yield st.migration_seconds.family(
            PREFIX + "migration_latency_seconds",
            "Wall time of a migration call (move_pages, migrate_pages), by target node", ml, base,
            hists["migration_seconds"])
        yield st.migration_steps.family(
            PREFIX + "migration_latency_steps",
            "Emulated steps of a migration call (move_pages, migrate_pages), by target node", ml, base,
            hists["migration_steps"])

    # -- the explorer ----------------------------------------------------------
    def _collect_explore(self, st: ExploreState):
        stats = st.stats
        rl = ["run", "policy", "mode"]
        base = [st.label, st.policy, st.mode]
        info = InfoMetricFamily(PREFIX + "explore", "The exploration: scenario, bug injections", labels=rl)
        info.add_metric(base, {"scenario": st.scenario, "bugs": st.bugs, "version": __version__})
        yield info
        schedules = stats.schedules if stats is not None else 0
        pruned = stats.pruned if stats is not None else 0
        states = stats.states if stats is not None else 0
        if st.final is not None:
            elapsed, rate = st.final
        elif stats is not None:
            elapsed, rate = stats.elapsed, stats.rate
        else:
            elapsed, rate = 0.0, 0.0
        c = _counter("explore_schedules", "Schedules explored", rl)
        c.add_metric(base, schedules)
        yield c
        c = _counter("explore_pruned", "Schedules cut short at a state already explored", rl)
        c.add_metric(base, pruned)
        yield c
        g = _gauge("explore_distinct_states", "Distinct states seen (dfs)", rl)
        g.add_metric(base, states)
        yield g
        g = _gauge("explore_schedules_per_second", "Schedules per second, averaged over the exploration", rl)
        g.add_metric(base, rate)
        yield g
        g = _gauge("explore_elapsed_seconds", "Wall time of the exploration so far", rl)
        g.add_metric(base, elapsed)
        yield g
        c = _counter("explore_violations", "Invariant violations found", rl)
        c.add_metric(base, st.violations)
        yield c
        g = _gauge("explore_done", "1 once the exploration has ended", rl)
        g.add_metric(base, 1.0 if st.done else 0.0)
        yield g


def make_registry(run: RunState | None = None, explore: ExploreState | None = None) -> CollectorRegistry:
    """A registry of its own for one run: numaemu's collector, plus the
    process's CPU and memory (process_*) and the Python version."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    registry.register(NumaemuCollector(run, explore))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# -- the HTTP endpoint -------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


def default_sd_dir() -> str | None:
    return str(DEFAULT_SD_DIR) if DEFAULT_SD_DIR.is_dir() else None


def _target_host(bind: str) -> str:
    host = socket.gethostname() if bind in ("", "0.0.0.0", "::") else bind
    return f"[{host}]" if ":" in host else host


class _HoldEnded(Exception):
    pass


class MetricsEndpoint:
    """Serves a registry on ``bind:port`` for the life of a ``with`` block,
    registers itself with Prometheus through a file_sd target file in
    ``sd_dir`` (removed at exit), and after :meth:`finish` keeps serving
    ``hold`` seconds when the block ends (Ctrl-C or SIGTERM end the hold
    early)."""

    def __init__(self, registry: CollectorRegistry, *, port: int, bind: str = "127.0.0.1",
                 hold: float = 0.0, sd_dir: str | None = None, label: str = "", command: str = "run",
                 echo=None):
        self.registry = registry
        self.port = int(port)
        self.bind = bind
        self.hold = float(hold)
        self.sd_dir = sd_dir
        self.label = label
        self.command = command
        self.echo = echo or (lambda msg: click.echo(msg, err=True))
        self.server = None
        self.thread: threading.Thread | None = None
        self.sd_file: Path | None = None
        self.finished = False
        self._holding = False
        self._old_sigterm: Any = None

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def __enter__(self) -> "MetricsEndpoint":
        if self.sd_dir is not None and not Path(self.sd_dir).is_dir():
            raise MetricsError(f"--sd-dir {self.sd_dir}: not a directory")
        cls = _ThreadingServer6 if ":" in self.bind else _ThreadingServer
        try:
            self.server = make_server(self.bind, self.port, make_wsgi_app(self.registry),
                                      server_class=cls, handler_class=_QuietHandler)
        except OSError as exc:
            raise MetricsError(f"--metrics-port {self.port}: cannot listen on {self.bind}:{self.port}: "
                               f"{exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="numaemu-metrics",
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            if self.sd_dir is not None:
                self._write_sd_file()
        except OSError as exc:
            self._close()
            raise MetricsError(f"--sd-dir {self.sd_dir}: cannot write a target file: "
                               f"{exc.strerror or exc}") from None
        self.echo(f"metrics: serving {self.url} (run {self.label!r})"
                  + (f", target file {self.sd_file}" if self.sd_file else ""))
        return self

    def _on_sigterm(self, signum, frame) -> None:
        if self._holding:
            raise _HoldEnded()
        raise SystemExit(128 + signal.SIGTERM)

    def _write_sd_file(self) -> None:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.label) or "run"
        path = Path(self.sd_dir) / f"numaemu-{self.command}-{safe}-{os.getpid()}.json"
        doc = [{"targets": [f"{_target_host(self.bind)}:{self.port}"],
                "labels": {"numaemu_run": self.label, "numaemu_command": self.command}}]
        tmp = path.with_name(path.name + ".tmp")  # not *.json: Prometheus ignores it
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.sd_file = path

    def finish(self, hold: bool = True) -> None:
        """The run has ended: its values are final and worth a last scrape
        (unless ``hold`` is False: a SIGTERM asked the process to go)."""
        self.finished = True
        if not hold:
            self.hold = 0.0

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.finished and self.hold > 0 and (exc_type is None or exc_type is SystemExit):
                sys.stdout.flush()
                self.echo(f"metrics: holding {self.url} for {self.hold:g} s (Ctrl-C ends it)")
                self._holding = True
                try:
                    time.sleep(self.hold)
                except (_HoldEnded, KeyboardInterrupt):
                    pass
                finally:
                    self._holding = False
        finally:
            self._close()

    def _close(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self.sd_file is not None:
            try:
                self.sd_file.unlink()
            except OSError:
                pass
            self.sd_file = None
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# -- command-line options ---------------------------------------------------------

# --hold is for a last scrape, which Prometheus takes within a scrape interval
# (seconds, a few minutes at most); a day covers any interval and a slow
# look by hand, and keeps a forgotten process from serving for ever (a hold
# beyond ~292 years does not fit time.sleep at all: OverflowError after the
# run). Ctrl-C or SIGTERM end a hold early.
MAX_HOLD = 86400.0


def _hold_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """--hold: finite, 0..MAX_HOLD (FloatRange lets nan through)."""
    if not 0 <= value <= MAX_HOLD:
        raise click.BadParameter(f"must be 0..{MAX_HOLD:g} seconds (a day), got {value:g}")
    return value


def metrics_options(func):
    """--metrics-port, --metrics-bind, --hold, --run-label, --sd-dir."""
    opts = [
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
                     metavar="N", help="serve Prometheus metrics on this port (0 = off)"),
        click.option("--metrics-bind", default="127.0.0.1", show_default=True, metavar="ADDR",
                     help="address the metrics endpoint listens on"),
        click.option("--hold", type=float, default=0.0, metavar="SECONDS", callback=_hold_seconds,
                     help=f"keep serving metrics this long after the end, for a last scrape "
                          f"(at most {MAX_HOLD:g}, a day)"),
        click.option("--run-label", default=None, metavar="LABEL",
                     help="the metrics' run label (default: the scenario file's name, then any --set of numaemu run)"),
        click.option("--sd-dir", default=None, metavar="DIR",
                     help="write a Prometheus file_sd target file for the endpoint here, removed at "
                          "exit (default: deploy/prometheus/targets if it exists; '' = none)"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def check_options(metrics_port: int, hold: float, run_label: str | None, sd_dir: str | None,
                  scenario: str) -> tuple[str, str | None]:
    """Validate the metrics options; returns (run label, sd dir or None).
    Raises MetricsError."""
    if not metrics_port:
        if hold:
            raise MetricsError("--hold: needs --metrics-port")
        return "", None
    label = run_label if run_label is not None else Path(scenario).stem
    if not label:
        raise MetricsError("--run-label: must not be empty")
    if sd_dir is None:
        sd_dir = default_sd_dir()
    elif sd_dir == "":
        sd_dir = None
    elif not Path(sd_dir).is_dir():
        raise MetricsError(f"--sd-dir {sd_dir}: not a directory")
    return label, sd_dir


def _serve(state, registry, *, command: str, label: str, port: int, bind: str, hold: float,
           sd_dir: str | None):
    """Start the endpoint for the current click command: it is closed (after
    --hold, once the state has finished) when the command's context closes,
    on a normal return, sys.exit or an error alike."""
    endpoint = MetricsEndpoint(registry, port=port, bind=bind, hold=hold, sd_dir=sd_dir,
                               label=label, command=command)
    click.get_current_context().with_resource(endpoint)
    state.endpoint = endpoint
    return state


def start_run_endpoint(scenario: str, backend: str, operations: int, *, port: int, bind: str,
                       hold: float, run_label: str | None, sd_dir: str | None) -> RunState:
    """``numaemu run``'s endpoint; the RunState to hand to the runner.
    Raises MetricsError."""
    label, sd_dir = check_options(port, hold, run_label, sd_dir, scenario)
    state = RunState(label, scenario, backend, operations)
    return _serve(state, make_registry(run=state), command="run", label=label, port=port, bind=bind,
                  hold=hold, sd_dir=sd_dir)


def start_explore_endpoint(sc, scenario: str, mode: str, bugs, *, port: int, bind: str, hold: float,
                           run_label: str | None, sd_dir: str | None) -> ExploreState:
    """``numaemu explore``'s endpoint over an ExploreState (``sc``: the race
    scenario). Raises MetricsError."""
    from emulator import Machine

    label, sd_dir = check_options(port, hold, run_label, sd_dir, scenario)
    policy = str(sc.machine.get("policy") or Machine.from_config({}).policy)
    state = ExploreState(label, scenario, policy, mode, bugs)
    return _serve(state, make_registry(explore=state), command="explore", label=label, port=port,
                  bind=bind, hold=hold, sd_dir=sd_dir)
