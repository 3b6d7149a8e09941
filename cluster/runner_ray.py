"""The Ray backend: run a scenario on node actors and a coordinator actor.

1. Ray: an embedded local instance by default, or the cluster at
   ``--address``; a Ray already initialised in this process is reused.
2. One node actor per emulated node, spread over the cluster's hosts (node
   i on host i mod hosts), each creating its frames' payload in shared
   memory; the coordinator on the driver's host maps the payload of the
   node actors on its host and reaches the others with actor calls.
3. The processes are created through the coordinator exactly as the local
   backend creates them (same workload order, same seed); each node actor
   then drives the processes homed on it, concurrently with the others.
4. The runner thread migrates every ``[migration] every`` operations (the
   local backend's choice of pages and targets), reclaims and runs swapoff
   on their schedules, watches the node actors' health and, in stress mode,
   pauses every driver at quiescent points to run the whole oracle and
   compare every page with the shadows. The drivers wait at a gate (class
   Gate) rather than run more than one period past an event not yet fired.
5. At the end (or on Ctrl-C, or when a node actor dies): stop the drivers,
   verify, and summarise as the local backend does, plus what was lost.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from emulator.sched import Deadlock

from .channel import CoordinatorGone
from .concurrent import WAIT_TIMEOUT
from .coordinator import Coordinator, CoordMachine, FrozenMachine
from .dataplane import overcommitted
from .node import NodeActor
from .runner_local import LocalRun
from .scenario import Scenario, with_overrides
from .summary import collect_summary
from .timeline import Timeline

ProgressFn = Callable[[int], None]
POLL_S = 0.1
PING_TIMEOUT_S = 10.0
SILENT_POLLS = 3
ANSWER_S = PING_TIMEOUT_S * SILENT_POLLS    # a node actor silent this long is lost
PAUSE_S = WAIT_TIMEOUT + ANSWER_S            # a pause waits for the operations in flight, which may wait that long


class RunnerError(RuntimeError):
    """The Ray runtime could not start or reach what it needs."""


def _first_line(exc: BaseException) -> str:
    """A Ray error in one line: its first, the rest being the remote
    traceback, whose last line (the exception raised there) is added when
    an actor's creation failed: that is the reason."""
    import re
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "creation task" in lines[0] and len(lines) > 1:
        return f"{lines[0].split(',')[0]}: {lines[-1].strip()}"
    return lines[0]


def ensure_ray(address: str | None) -> bool:
    """Connect to Ray; True when this call started it (and so should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        reachable(address)
    try:
        if address:         # may retry for minutes: Ctrl-C stops it at once
            ray.init(address=address, **kw)
        else:   # "local": a Ray of our own, even where `ray start` left one that a bare init would join
            with _signals_after(), _quiet_auth_default():
                ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "an embedded Ray"
        hint = ""
        if address and address.startswith("ray://") and "timeout" in str(exc).lower():
            # a Ray Client server that wants a token refuses a client without one: the client reports a timeout
            hint = (" (is its Ray Client server listening there? a cluster with token authentication "
                    "also needs RAY_AUTH_MODE=token and its token, RAY_AUTH_TOKEN or ~/.ray/auth_token, "
                    "in this environment)")
        raise RunnerError(f"cannot start or reach {where}: {exc}{hint}") from None
    return True


class _AuthDefaultNotice(logging.Filter):
    """Ray (2.5x and on) opens every new local cluster with a warning that it
    turned token authentication on, its default, and how to opt out. For
    the Ray a run starts for itself that is noise on the first line of
    every run; a warning that authentication is off still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


@contextlib.contextmanager
def _quiet_auth_default() -> Iterator[None]:
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = _AuthDefaultNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


@contextlib.contextmanager
def _signals_after() -> Iterator[None]:
    """Ctrl-C or SIGTERM while an embedded Ray starts (seconds) waits until
    it is up: interrupted halfway, ray.init left Ray's agents running for a
    minute after we exited, and at times the exit crashed in Ray's threads.
    Then Ray is stopped and the signal delivered (also when ray.init failed);
    a second signal meanwhile stops at once. ray.init's own SIGTERM handler
    (sys.exit, or a C++ stack dump) is kept out: ours stops the run and
    writes the partial summary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import ray

    caught: list[int] = []
    before = {sig: h for sig in (signal.SIGINT, signal.SIGTERM)
              if (h := signal.getsignal(sig)) is not signal.SIG_IGN}     # an ignored one stays ignored

    def hold(signum: int, _frame: Any) -> None:
        if caught:                  # asked twice: now
            raise KeyboardInterrupt
        caught.append(signum)

    for sig in before:
        signal.signal(sig, hold)
    # ray.init sets its SIGTERM handler (sys.exit) first thing: not while we hold the signal back
    utils = getattr(ray._private, "utils", None)
    ray_sets = getattr(utils, "set_sigterm_handler", None)
    if ray_sets is not None:
        utils.set_sigterm_handler = lambda _handler: None

    def restore() -> None:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    try:
        yield
    finally:
        if ray_sets is not None:
            utils.set_sigterm_handler = ray_sets
        restore()
        if caught:              # the signal wins over what ray.init raised, if it did
            ray.shutdown()
            restore()           # Ray's shutdown leaves SIGTERM to the default action at the C level
            signal.raise_signal(caught[0])


REACH_TIMEOUT = 10.0


def reachable(address: str) -> None:
    """A HOST:PORT nobody answers at makes ray.init retry for many minutes (and
    ignore SIGTERM meanwhile): try a TCP connection first and say why not."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return          # Ray resolves these itself, or fails fast
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return          # not HOST:PORT: ray.init says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise RunnerError(f"cannot reach the Ray cluster at {address}: {why} "
                          "(is `ray start --head` running there, and is that its GCS port?)") from None


def hosts() -> list[str]:
    """Alive Ray nodes (hosts), the driver's own first."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    alive = sorted(n["NodeID"] for n in nodes)
    try:
        me = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a Ray Client driver is on no Ray node: take the head
        heads = [n["NodeID"] for n in nodes if "node:__internal_head__" in n.get("Resources", {})]
        me = heads[0] if heads else alive[0]
    return [me] + [h for h in alive if h != me]


HOSTS_WAIT_S = 900.0        # a `ray up` worker installs its packages before it joins: minutes


def wait_for_hosts(n: int, say: Callable[[str], None], timeout: float = HOSTS_WAIT_S) -> list[str]:
    """Wait until the cluster has at least n hosts (a cluster still
    starting: the workers `ray up` or a job scheduler brings up after the
    head), saying so each time one joins; then its hosts, as hosts()."""
    deadline = time.monotonic() + timeout
    seen = -1
    while True:
        now = hosts()
        if len(now) >= n:
            return now
        if len(now) != seen:
            seen = len(now)
            say(f"waiting for {n} hosts in the Ray cluster: {seen} so far")
        if time.monotonic() >= deadline:
            raise RunnerError(f"only {seen} of the {n} hosts asked for (--hosts) joined the Ray cluster "
                              f"in {timeout:g} s")
        time.sleep(1.0)     # hosts join on their own time: nothing here can be told of it


def _on(host: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    return NodeAffinitySchedulingStrategy(node_id=host, soft=False)


class Gate:
    """The schedule's gate (cluster/node.py). With the next event due at
    operation ``nxt`` of the run's ``ops``, node actor h may do its share of
    ``nxt`` plus one period (``allowed[h]``), and answers a poll at once
    from its share of ``nxt`` on (``wake[h]``). When every node is at its
    gate or done, the event is due: the run never waits on itself."""

    def __init__(self, share: dict[int, int], ops: int, periods: list[int]):
        self.share, self.ops = share, ops
        self.slack = min((p for p in periods if p), default=0)
        self.allowed: dict[int, int] = dict(share)
        self.wake: dict[int, int | None] = dict.fromkeys(share)

    def move(self, nexts: list[int | None]) -> None:
        """To the first of the events not fired yet (None: none is left)."""
        nxt = min((n for n in nexts if n is not None and n <= self.ops), default=None)
        for h, n in self.share.items():
            if nxt is None:
                self.allowed[h], self.wake[h] = n, None
            else:
                self.allowed[h] = min(n, -(-(nxt + self.slack) * n // self.ops))
                self.wake[h] = min(n, -(-nxt * n // self.ops))


class RayRun:
    """One run of a scenario on Ray actors."""

    def __init__(self, scenario: Scenario, *, stress: bool = False, check_every: int = 0,
                 bugs: tuple[str, ...] = (), metrics=None, dump_dir: str | None = None, latency=None,
                 shm: str = ""):
        """``shm``: the directory, on every host, for the shared files (payloads, frame tables,
        TLBs): cluster.dataplane.shm_dir."""
        import ray

        self.ray = ray
        self.scenario = scenario
        self.stress = stress
        self.check_every = check_every
        self.run_id = uuid.uuid4().hex[:12]
        self.bugs = tuple(bugs)
        self.shm = shm
        cfg = scenario.machine.config()
        probe = scenario.take_machine()          # validated already: sizes and the topology
        self.nr_nodes = int(probe.nr_nodes)
        frames = [fr.nframes for fr in probe.k.nodes]
        page_size, payload = int(probe.page_size), str(probe.payload)
        del probe
        self.hosts = hosts()
        self.placement = [self.hosts[i % len(self.hosts)] for i in range(self.nr_nodes)]
        self.nodes: list[Any] = []
        self.coord = None
        self.info: dict[str, Any] = {}
        self.dead: dict[int, str] = {}
        self.payload_dirs: list[dict[str, str]] = []
        try:    # a start that fails (or Ctrl-C) leaves no actor and no file behind
            Node = ray.remote(NodeActor)
            self.nodes = [Node.options(num_cpus=0, max_concurrency=8, scheduling_strategy=_on(h),
                                       name=f"numaemu-{self.run_id}-node{i}").remote(i, frames[i], page_size,
                                                                                     payload, self.run_id, shm)
                          for i, h in enumerate(self.placement)]
            descs = ray.get([n.payload.remote() for n in self.nodes])
            self.warnings = overcommitted(descs)
            self.payload_dirs = [{"dir": str(Path(d["path"]).parent), "huge": d["huge"]} for d in descs]
            for d, h in zip(descs, self.nodes):
                d["handle"] = h
            Coord = ray.remote(Coordinator)
            self.coord = Coord.options(num_cpus=0, max_concurrency=self.nr_nodes + 8,
                                       scheduling_strategy=_on(self.hosts[0]),
                                       name=f"numaemu-{self.run_id}-coord").remote(cfg, descs, tuple(bugs), stress,
                                                                                   self.run_id, shm)
            self.info = ray.get(self.coord.info.remote())   # the coordinator has mapped the payloads
            plain = [{k: v for k, v in d.items() if k != "handle"} for d in descs]
            ray.get([n.peers.remote(plain) for n in self.nodes])    # and so has every node on the same host
            ray.get([n.forget_path.remote() for n in self.nodes])
        except BaseException as exc:
            self.close()
            if isinstance(exc, ray.exceptions.RayError):
                raise RunnerError(f"the run could not start: {_first_line(exc)}") from None
            raise
        self.m = CoordMachine(self.coord, self.info, "runner")
        self.local = LocalRun(scenario, machine=self.m, latency=latency)
        self.metrics = metrics
        self.lat_seen = [0] * self.nr_nodes
        self.forks_seen = [0] * self.nr_nodes    # fork cycles per node actor, as last polled
        self.ops_seen = [0] * self.nr_nodes      # and operations
        self.late = 0      # the most operations done past an event's when it fired
        self.silent = [0] * self.nr_nodes
        if metrics is not None:   # the driver serves the endpoint, reading through the coordinator
            self.local.metrics, self.local.steps = metrics, self.m
            metrics.attach(self.local)
        self.lost_pages: dict[int, int] = {}
        self.checks = 0
        self.violations = 0
        self.deadlocked = False
        self.details: list[str] = []
        self.interrupted = False
        self.verified = {"pages": 0, "processes": 0}
        self.dump_dir = dump_dir
        self.dump_path = None

    # -- the run ---------------------------------------------------------------
    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        ray = self.ray
        t0 = time.perf_counter()
        loc = self.local
        loc.setup()
        sc = self.scenario
        ops = sc.run.operations
        if self.stress:
            ray.get(self.coord.keep_checkpoint.remote())   # the first state a dump may start from
        timeline = Timeline(ops, start=t0, seconds=sc.run.seconds or 0.0)
        timeline.sample(self._frozen(), 0)
        next_sample = timeline.every
        nprocs = len(loc.procs)
        by_home: dict[int, list] = {}
        for p in loc.procs:
            by_home.setdefault(p.home, []).append(p)
        share = {h: ops * len(ps) // nprocs for h, ps in by_home.items()}
        for h in sorted(by_home)[: ops - sum(share.values())]:
            share[h] += 1
        specs = list(sc.workload)
        checkpoints = self.stress and self.check_every and ops
        next_check = self.check_every
        every = sc.migration.every
        next_mig = every if every else None
        reclaim_every = sc.reclaim.every
        next_reclaim = reclaim_every if reclaim_every else None
        swapoff_every = sc.swapoff.every
        next_swapoff = swapoff_every if swapoff_every else None
        gate = Gate(share, ops, [every, reclaim_every, swapoff_every])
        gate.move([next_mig, next_reclaim, next_swapoff])
        for h, ps in by_home.items():
            # a checkpoint every check_every operations in all: each driver stops after its share
            pause = max(1, self.check_every * share[h] // ops) if checkpoints else 0
            ray.get(self.nodes[h].start.remote(self.coord, self.info, ps, specs, share[h], sc.run.seed, pause,
                                               gate.allowed[h]))
        ray.get(self.coord.forget_paths.remote())     # every node actor on its host has opened them
        deadline = t0 + sc.run.seconds if sc.run.seconds else None
        done = 0
        due: list[Callable[[], Any]] = []    # events to fire: while the poll that moved the gate is out
        try:
            while True:
                asked = self._ask(gate)
                for event in due:           # they race the accesses the moved gate lets through
                    event()
                due = []
                states = self._answers(asked)
                if not self.dead and len(states) < len(self.nodes):
                    continue                  # a node actor is slow to answer: decide nothing yet
                done = sum(s["ops"] for s in states.values())
                if progress is not None:
                    progress(min(done, ops))
                if self.dead:
                    break
                deadlocks = [d for s in states.values() for d in s.get("deadlocks", ())]
                if deadlocks:
                    self._deadlock(by_home, deadlocks)
                    break
                failures = [f"node {n}: {s['failure']}" for n, s in states.items() if s.get("failure")]
                if failures:
                    raise RunnerError("a workload driver failed: " + "; ".join(failures))
                if self.stress and any(s["fork_bad"] for s in states.values()):
                    bad = [s for s in states.values() if s["fork_bad"]]
                    self._fork_violation(by_home, [d for s in bad for d in s["fork_details"]], bad[0]["fork_child"])
                    break
                while next_mig is not None and done >= next_mig and next_mig <= ops:
                    due.append(loc.migrate)
                    self.late = max(self.late, done - next_mig)
                    next_mig += every
                while next_reclaim is not None and done >= next_reclaim and next_reclaim <= ops:
                    due.append(loc.reclaim)
                    self.late = max(self.late, done - next_reclaim)
                    next_reclaim += reclaim_every
                while next_swapoff is not None and done >= next_swapoff and next_swapoff <= ops:
                    due.append(loc.swapoff_cycle)     # its unuse walk races the drivers' faults
                    self.late = max(self.late, done - next_swapoff)
                    next_swapoff += swapoff_every
                gate.move([next_mig, next_reclaim, next_swapoff])
                if not any(s["running"] for s in states.values()) or \
                        (deadline is not None and time.perf_counter() >= deadline):
                    for event in due:
                        event()
                    break
                if checkpoints and any(s["checkpoint"] for s in states.values()) and \
                        all(s["parked"] or not s["running"] for s in states.values()):
                    # every driver stopped, one at its checkpoint: a check about every check_every
                    # operations in all (each driver's checkpoints come at its share of that, so
                    # drivers running at unequal rates stop at different times: one check per window)
                    near = done + self.check_every // 2
                    if near >= next_check and next_check < ops:    # the end has its own check
                        self._quiescent_check(by_home)
                        next_check = (near // self.check_every + 1) * self.check_every
                        if self.violations:
                            break
                    else:
                        self._each(self._alive(by_home), lambda n: n.resume.remote())
                if done < ops and (done >= next_sample or timeline.late()):
                    timeline.sample(self._frozen(), done)
                    next_sample = (done // timeline.every + 1) * timeline.every
        except KeyboardInterrupt:
            self.interrupted = True
        except Deadlock as exc:         # an event of the runner's (a migration, reclaim, swapoff)
            self._deadlock(by_home, [f"runner: {exc}"])
        except (CoordinatorGone, ray.exceptions.RayActorError) as exc:   # a node actor's death is _answers'
            raise RunnerError(f"the coordinator died: {_first_line(exc)}") from None
        results = self._stop(by_home)
        self._payload_lost()
        self._count_lost()
        for r in results.values():
            for k, v in r["errors"].items():
                loc.errors[k] += v
            self.violations += r["fork_bad"]
            self.details.extend(d for d in r["fork_details"] if d not in self.details)
        late = [d for r in results.values() for d in r.get("deadlocks", ())]   # calls that gave up meanwhile
        if late and not self.deadlocked:
            self._deadlock(by_home, late)
        else:
            self.details.extend(f"deadlock: {d}" for d in late)
        del self.details[20:]
        if not self.deadlocked and (not self.violations or not self.stress):
            self._verify(by_home)       # (after a deadlock, pages may stay locked or migrating for good)
        for h, r in results.items():
            loc.latency.extend("fault", r["latency_s"], r["latency_steps"], node=h)
        done = int(sum(r["ops"] for r in results.values()))
        # one consistent picture, which also outlives the actors (metrics --hold)
        frozen = loc.m = self._frozen()
        timeline.sample(frozen, done)
        summary = collect_summary(
            frozen, scenario=sc, backend="ray", not_moved=loc.not_moved, errors=dict(loc.errors),
            violations=self.violations, details=self.details, processes=sorted({p.pid for p in loc.procs}),
            migration_events=loc.migration_events, elapsed=time.perf_counter() - t0,
            latency=loc.latency.summary(), timeline=timeline.to_list())
        summary["operations_done"] = done
        summary["reclaim_events"] = loc.reclaim_events
        summary["forks"] = int(sum(r["forks"] for r in results.values()))
        # accesses the node actors ran on their own (TLB hits, page walks) against those that faulted
        loc.tlb_hits.update({h: int(r.get("tlb_hits", 0)) for h, r in results.items()})
        loc.tlb_walks.update({h: int(r.get("tlb_walks", 0)) for h, r in results.items()})
        loc.local_faults.update({h: int(r.get("local_faults", 0)) for h, r in results.items()})
        summary["tlb"] = {"hits": int(sum(r.get("tlb_hits", 0) for r in results.values())),
                          "walks": int(sum(r.get("tlb_walks", 0) for r in results.values())),
                          # misses neither walked nor faulted on the node: a coordinator thread stayed inside the model
                          "walks_refused": int(sum(r.get("tlb_walks_refused", 0) for r in results.values())),
                          "misses": int(sum(r.get("tlb_misses", 0) for r in results.values())),
                          # writes the node actors faulted in themselves (do_anonymous_page, do_wp_page)
                          "local_faults": int(sum(r.get("local_faults", 0) for r in results.values())),
                          "stale_fills": int(sum(r.get("tlb_stale_fills", 0) for r in results.values())),
                          "shootdowns": int(frozen.stats.get("tlb_shootdowns", 0)),
                          "shootdown_s": float(frozen.stats.get("tlb_shootdown_s", 0.0)),
                          "hits_by_node": {str(h): int(r.get("tlb_hits", 0)) for h, r in sorted(results.items())},
                          "walks_by_node": {str(h): int(r.get("tlb_walks", 0)) for h, r in sorted(results.items())},
                          "local_faults_by_node": {str(h): int(r.get("local_faults", 0))
                                                   for h, r in sorted(results.items())}}
        summary["swapoff_events"] = loc.swapoff_events
        summary["schedule_late_ops"] = self.late
        summary["verified_pages"] = int(self.verified["pages"])
        # where each node's payload lives, and whether its tmpfs gives it huge pages ("" : no tmpfs)
        summary["hosts"] = [{"node": i, "host": h, **self.payload_dirs[i]} for i, h in enumerate(self.placement)]
        summary["remote_nodes"] = list(self.info["remote_nodes"])
        summary["warnings"] = list(self.warnings)
        # how calls reached the coordinator: the same-host channel, or Ray actor calls
        via = frozen.stats.get("transport", {})
        summary["coordinator_calls"] = {"channel": int(via.get("channel", 0)), "actor": int(via.get("actor", 0))}
        # migration calls that answered while their copy still ran (its tail is not in their latency)
        summary["answered_before_copy"] = int(frozen.stats.get("answered_before_copy", 0))
        if self.bugs:
            summary["bugs"] = sorted(self.bugs)
        if self.stress:
            summary["quiescent_checks"] = self.checks
        if self.dump_path is not None:
            summary["dump"] = str(self.dump_path)
        if self.interrupted:
            summary["interrupted"] = True
        if self.dead:
            summary["lost"] = {"nodes": {str(n): why for n, why in self.dead.items()},
                               "pages_by_pid": {str(p): n for p, n in self.lost_pages.items()},
                               "pages": int(sum(self.lost_pages.values())),
                               "verified_intact": self.verified}
        return summary

    def _frozen(self) -> FrozenMachine:
        return FrozenMachine(self.info, self.ray.get(self.coord.stats.remote()))

    def _ask(self, gate: Gate) -> dict[int, Any]:
        """Ask every live node actor for its state, moving its gate: each
        answers within POLL_S, or at once when the runner has something to
        do (see NodeActor.progress)."""
        since = (lambda i: self.lat_seen[i]) if self.metrics is not None else (lambda i: -1)
        # a node already past its wake has said so: it answers at once again only when parked or done
        wake = {i: w if w is not None and self.ops_seen[i] < w else None for i, w in gate.wake.items()}
        return {i: n.progress.remote(since(i), gate.allowed.get(i), wake.get(i), POLL_S)
                for i, n in enumerate(self.nodes) if i not in self.dead}

    def _answers(self, refs: dict[int, Any]) -> dict[int, dict[str, Any]]:
        ray = self.ray
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PING_TIMEOUT_S)
        out = {}
        for i, ref in refs.items():
            if ref not in ready:        # busy, or hung: lost after a few silent polls
                self.silent[i] += 1
                if self.silent[i] >= SILENT_POLLS:
                    self._lost(i, f"no answer for {SILENT_POLLS * PING_TIMEOUT_S:.0f} s")
                continue
            self.silent[i] = 0
            try:
                out[i] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._lost(i, f"actor died: {str(exc).splitlines()[0]}")
                continue
            self.forks_seen[i] = out[i]["forks"]
            self.ops_seen[i] = out[i]["ops"]
            self.local.tlb_hits[i] = out[i].get("tlb_hits", 0)
            self.local.tlb_walks[i] = out[i].get("tlb_walks", 0)
            self.local.local_faults[i] = out[i].get("local_faults", 0)
            if "latency" in out[i]:
                self.lat_seen[i], secs, steps = out[i]["latency"]
                for a, b in zip(secs, steps):
                    self.metrics.observe_fault(i, a, b)
        self.local.forks = sum(self.forks_seen)      # the node actors fork; the runner's tally, for metrics
        if self.metrics is not None:
            self.metrics.operations = sum(s["ops"] for s in out.values())
        return out

    def _lost(self, node: int, why: str) -> None:
        self.dead[node] = why

    def _payload_lost(self) -> None:
        """Nodes the coordinator's payload calls found gone are lost too (one
        whose actor still answers polls included: its frames read as zeros)."""
        for node, why in self.ray.get(self.coord.lost_payloads.remote()).items():
            if int(node) not in self.dead:
                self._lost(int(node), f"payload lost: {why}")

    def _count_lost(self) -> None:
        """Once every driver has stopped: the pages resident on the lost nodes."""
        for node in sorted(self.dead):
            for pid, n in self.ray.get(self.coord.node_lost.remote(node)).items():
                self.lost_pages[pid] = self.lost_pages.get(pid, 0) + n

    def _alive(self, by_home) -> list[int]:
        return [h for h in by_home if h not in self.dead]

    def _each(self, hs: list[int], call: Callable[[Any], Any], timeout: float | None = ANSWER_S,
              why: str = "") -> dict[int, Any]:
        """``call(node actor)`` on each of nodes ``hs``, answers by node: one
        that dies, or does not answer within ``timeout``, is lost (as in
        _answers; ``why`` begins the reason), not taken for the coordinator."""
        refs = {h: call(self.nodes[h]) for h in hs}
        out = {}
        for h, ref in refs.items():
            try:
                out[h] = self.ray.get(ref, timeout=timeout)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError) as exc:
                self._lost(h, f"{why}{type(exc).__name__}: {_first_line(exc)}")
        return out

    def _pause(self, by_home) -> None:
        """Every live driver stops between two operations (one inside a call
        answers once the call does: the model gives up a wait at WAIT_TIMEOUT)."""
        self._each(self._alive(by_home), lambda n: n.pause.remote(), PAUSE_S)

    def _quiescent_check(self, by_home) -> None:
        self._pause(by_home)
        try:
            self._payload_lost()
            if self.dead:       # the run ends with its report; the oracle would read lost frames
                return
            self.checks += 1
            self._oracle()
            self._verify(by_home, final=False)
            if self.violations:
                self._dump()
            elif not self.dead:     # a node lost while paused: its pages are the summary's
                self.ray.get(self.coord.keep_checkpoint.remote())
        finally:
            self._each(self._alive(by_home), lambda n: n.resume.remote())

    def _fork_violation(self, by_home, details: list[str], child: int) -> None:
        """A child read what its parent never wrote (or lost its own write):
        stop every driver between two operations and dump the state, with
        the calls up to that child's exit (what ran after it is no cause)."""
        self._pause(by_home)
        self.details.extend(details[:20])
        self._dump(until_exit=child)

    def _deadlock(self, by_home, what: list[str]) -> None:
        """An operation of the model waited for what never came (the
        coordinator gives up after concurrent.WAIT_TIMEOUT): a bug of the
        model, a violation as it is for the explorer. Every driver stops
        between two operations (one blocked in the same deadlock once its
        own call gives up) and, in stress mode, the calls since the last
        checkpoint are dumped, for ``numaemu explore`` to search."""
        self.deadlocked = True
        self.violations += 1
        self.details.extend(f"deadlock: {w}" for w in what[: max(0, 20 - len(self.details))])
        if self.stress:
            self._pause(by_home)
            self._dump()

    def _verify(self, by_home, final: bool = True) -> None:
        lost = sorted(self.dead)
        # reading every page back takes as long as it takes: no timeout, but a death is a loss
        answers = self._each(self._alive(by_home), lambda n: n.verify.remote(self.coord, self.info, lost), None)
        res = list(answers.values())
        self.verified = {"pages": int(sum(r["checked"] for r in res)),
                         "processes": int(sum(len(by_home[h]) for h in answers))}
        for r in res:
            self.violations += r["bad"]
            self.details.extend(r["details"][: max(0, 20 - len(self.details))])
        if final and not self.violations and not self.dead:
            self._oracle()

    def _oracle(self) -> None:
        """The coordinator's whole oracle; a violation is counted and described."""
        from emulator import InvariantViolation

        seen = self.ray.get(self.coord.check.remote())
        if seen is not None:
            self.violations += 1
            self.details.append(str(InvariantViolation(*seen)))

    def _dump(self, until_exit: int | None = None) -> None:
        """The state a violation was found in, for ``numaemu explore --dump``
        (written while every driver is paused): see Coordinator.dump."""
        import msgpack
        from pathlib import Path

        d = Path(self.dump_dir or ".")
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"numaemu-dump-{self.run_id}.msgpack"
        blob = self.ray.get(self.coord.dump.remote(self.details, with_overrides(self.scenario.path, self.scenario.overrides), until_exit))
        path.write_bytes(msgpack.packb(blob, use_bin_type=True))
        self.dump_path = path

    def _stop(self, by_home) -> dict[int, dict[str, Any]]:
        live = self._alive(by_home)
        for h in live:
            self.nodes[h].stop.remote()
        return self._each(live, lambda n: n.join.remote(30.0), 60, "died while stopping: ")

    def close(self) -> None:
        ray = self.ray
        for i, n in enumerate(self.nodes):
            if i not in self.dead:
                try:
                    ray.get(n.close.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - best effort: the actor may be gone
                    pass
            ray.kill(n)
        if self.coord is not None:
            try:
                ray.get(self.coord.forget_paths.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - best effort: the coordinator may be gone
                pass
            ray.kill(self.coord)
        # whatever the actors on this host left, should they have died first: every name is numaemu-<run_id>-*
        # (where they said they put them: a host's own $NUMAEMU_SHM_DIR may not be this process's)
        from .dataplane import shm_dir, unlink
        dirs = {Path(d["dir"]) for d in self.payload_dirs}
        if self.info.get("steps"):
            dirs.add(Path(self.info["steps"]).parent)
        try:
            dirs.add(shm_dir(self.shm))
        except ValueError:      # no such directory on this host (a driver off the cluster)
            pass
        for d in dirs:
            for path in d.glob(f"numaemu-{self.run_id}-*"):
                unlink(path)


def run_ray(scenario: Scenario, progress: ProgressFn | None = None, *, address: str | None = None,
            stress: bool = False, check_every: int = 0, metrics=None,
            dump_dir: str | None = None, latency=None, bugs: tuple[str, ...] = (),
            min_hosts: int = 0, shm: str = "") -> dict[str, Any]:
    """``min_hosts``: wait until the cluster has that many hosts before placing the node actors.
    ``shm``: where the shared files go on every host (cluster.dataplane.shm_dir)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = ensure_ray(address)     # Ray may install handlers later too: ours come back after
    import ray

    run = None
    try:
        if min_hosts > 1:
            wait_for_hosts(min_hosts, lambda msg: print(f"numaemu: {msg}", file=sys.stderr, flush=True))
        run = RayRun(scenario, stress=stress, check_every=check_every, metrics=metrics, dump_dir=dump_dir,
                     latency=latency, bugs=tuple(bugs), shm=shm)
        return run.run(progress)
    except ray.exceptions.RayError as exc:     # an actor died where no loss is accounted: say so in one line
        raise RunnerError(f"the run failed: {_first_line(exc)}") from None
    finally:
        if run is not None:
            run.close()
        if started:
            ray.shutdown()
        for sig, h in handlers.items():
            if h is not None:
                signal.signal(sig, h)
