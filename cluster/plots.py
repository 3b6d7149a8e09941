"""``numaemu run --report DIR``: PNG plots of a run and an index.html.

:func:`write_report` takes what any backend has at the end of a run: the
summary dict (:mod:`cluster.summary`), its timeline samples and the latency
of every timed call (:mod:`cluster.timeline`), and writes into DIR:

- ``memory.png``: frames used on each node over the run;
- ``migrations.png``: pages migrated (``pgmigrate_success``) and migrations
  that fell back to swap (``pgmigrate_fallback_swap``), cumulative, per node;
- ``swap.png``: swap slots in use, pages in the swap cache and in the
  migration cache over the run;
- ``latency.png``: the distribution of fault-batch and migration-call
  latencies (log-spaced histograms with p50/p90/p99);
- ``index.html``: the run (scenario, policy, payload, ...), the summary
  numbers in small tables, and the four plots.

The figures are drawn with matplotlib's Agg renderer (``Figure`` objects,
no pyplot and no display), each :data:`FIGSIZE` inches at :data:`DPI`.
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Every figure: FIGSIZE inches at DPI dots per inch, i.e. PNG_SIZE pixels (width, height).
FIGSIZE = (10.0, 5.0)
DPI = 100
PNG_SIZE = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))

# The files written, in the order they are returned (index.html last).
PLOTS = ("memory.png", "migrations.png", "swap.png", "latency.png")
INDEX = "index.html"

# Up to this many nodes get a legend entry each; beyond it the lines stay unlabelled.
MAX_LEGEND_NODES = 16


class ReportError(Exception):
    """An output directory cannot be used (the message says why)."""


def prepare_dir(directory: str | os.PathLike) -> Path:
    """Make sure ``directory`` is a directory we can write into: create it
    (and its parents) if missing. Raises :class:`ReportError` otherwise."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ReportError("exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the directory: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".numaemu-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ReportError(f"cannot write into the directory: {exc.strerror or exc}") from None
    return path


# -- figures ----------------------------------------------------------------------

def _figure(nrows: int = 1, ncols: int = 1, **kw):
    from matplotlib.figure import Figure  # the Agg canvas; no pyplot, no display

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _series(timeline: list[dict[str, Any]]):
    """(t, operations, per-node arrays {field: [nodes x samples]}, top-level arrays)."""
    t = np.array([s["t"] for s in timeline], dtype=np.float64)
    ops = np.array([s["operations"] for s in timeline], dtype=np.int64)
    nr = max((len(s["nodes"]) for s in timeline), default=0)

    def per_node(field: str) -> np.ndarray:
        out = np.zeros((nr, len(timeline)), dtype=np.int64)
        for j, s in enumerate(timeline):
            for n, row in enumerate(s["nodes"]):
                out[n, j] = row.get(field, 0)
        return out

    def top(field: str) -> np.ndarray:
        return np.array([s.get(field, 0) for s in timeline], dtype=np.int64)

    return t, ops, per_node, top


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _time_axis(ax, t: np.ndarray, ops: np.ndarray, top: bool = True) -> None:
    """Wall seconds below; operations done on a secondary axis above."""
    ax.set_xlabel("wall time (s)")
    ax.grid(True, alpha=0.3)
    if top and len(t) >= 2 and np.all(np.diff(t) > 0) and np.all(np.diff(ops) >= 0) and ops[-1] > ops[0]:
        sec = ax.secondary_xaxis("top", functions=(lambda x: _interp(x, t, ops), lambda o: _interp(o, ops, t)))
        sec.set_xlabel("operations")
        _ops_ticks(ax, sec, t, ops)


# a tick label's width in pixels per character, at the default 10-point font and DPI (with room)
LABEL_PX_PER_CHAR = 9.0
GAP_CHARS = 4           # and the least room between two, in characters


def _ops_ticks(ax, sec, t: np.ndarray, ops: np.ndarray) -> None:
    """Round operation counts on the top axis, none drawn over another. The
    operations do not advance evenly in wall time (a run slows down while
    it migrates or swaps), so evenly spaced counts crowd where they advance
    fast: of the round counts, keep those at least a label's width apart
    on the panel as drawn."""
    from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator

    label = "{:,.0f}".format

    class SpacedTicks(Locator):
        def __call__(self):
            # the run's counts only: beyond its samples the axis is an extrapolation
            lo, hi = max(min(self.axis.get_view_interval()), ops[0]), min(max(self.axis.get_view_interval()), ops[-1])
            fit = int(ax.bbox.width // (LABEL_PX_PER_CHAR * (len(label(hi)) + GAP_CHARS)))   # labels if even
            cands = [c for c in MaxNLocator(nbins=max(4, 2 * fit), steps=[1, 2, 5, 10],
                                            integer=True).tick_values(lo, hi) if lo <= c <= hi]
            x = ax.transData.transform(np.column_stack([_interp(cands, ops, t), np.zeros(len(cands))]))[:, 0]
            half = [LABEL_PX_PER_CHAR * len(label(c)) / 2 for c in cands]

            def overlaps(j: int, i: int) -> bool:
                return x[i] - half[i] < x[j] + half[j] + GAP_CHARS * LABEL_PX_PER_CHAR

            keep: list[int] = []            # indexes into cands, left to right, the last one always
            for i in range(len(cands)):
                if i == len(cands) - 1:
                    while keep and overlaps(keep[-1], i):
                        keep.pop()
                elif keep and overlaps(keep[-1], i):
                    continue
                keep.append(i)
            return [cands[i] for i in keep]

    sec.xaxis.set_major_locator(SpacedTicks())
    sec.xaxis.set_major_formatter(FuncFormatter(lambda x, _: label(x)))


def _interp(x, xp: np.ndarray, fp: np.ndarray):
    """np.interp, but extended linearly (at the run's mean rate) beyond the
    samples, so the margins of the axes are not pinned to the first/last value."""
    x = np.asarray(x, dtype=np.float64)
    slope = (float(fp[-1]) - float(fp[0])) / (float(xp[-1]) - float(xp[0]))
    y = np.interp(x, xp, fp.astype(np.float64))
    y = np.where(x < xp[0], fp[0] + (x - xp[0]) * slope, y)
    return np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * slope, y)


def _node_colors(nr: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if nr <= 10 else "tab20" if nr <= 20 else "viridis"]
    if nr <= 20:
        return [cmap(i) for i in range(nr)]
    return [cmap(i / max(1, nr - 1)) for i in range(nr)]


def _node_legend(ax, nr: int) -> None:
    if nr <= MAX_LEGEND_NODES:
        ax.legend(loc="best", fontsize="small", ncols=1 if nr <= 8 else 2)
    else:
        ax.text(0.01, 0.98, f"{nr} nodes (one line each)", transform=ax.transAxes, va="top",
                fontsize="small", color="0.3")


def plot_memory(path: Path, summary: dict, timeline: list[dict]) -> Path:
    fig, axes = _figure()
    ax = axes[0][0]
    ax.set_title(f"Frames used per node ({_title(summary)})", fontsize="medium")
    if not timeline:
        _no_data(ax, "no timeline samples")
        return _save(fig, path)
    t, ops, per_node, _ = _series(timeline)
    used = per_node("used")
    nr = used.shape[0]
    colors = _node_colors(nr)
    for n in range(nr):
        ax.plot(t, used[n], color=colors[n], label=f"node {n}", linewidth=1.5)
    frames = [int(e.get("frames", 0)) for e in summary.get("nodes", [])]
    if frames and len(set(frames)) == 1:
        ax.axhline(frames[0], color="0.5", linestyle="--", linewidth=1, label=f"frames per node ({frames[0]})")
    elif frames and nr <= MAX_LEGEND_NODES:
        for n, f in enumerate(frames[:nr]):
            ax.axhline(f, color=colors[n], linestyle="--", linewidth=0.8)
    ax.set_ylabel("frames used")
    ax.set_ylim(bottom=0)
    _time_axis(ax, t, ops)
    _node_legend(ax, nr)
    return _save(fig, path)


def plot_migrations(path: Path, summary: dict, timeline: list[dict]) -> Path:
    fig, axes = _figure(1, 2)
    (ok, fb) = axes[0]
    fig.suptitle(f"Migrations per node, cumulative ({_title(summary)})", fontsize="medium")
    if not timeline:
        _no_data(ok, "no timeline samples")
        _no_data(fb, "no timeline samples")
        return _save(fig, path)
    t, ops, per_node, _ = _series(timeline)
    success = per_node("pgmigrate_success")
    fallback = per_node("pgmigrate_fallback_swap")
    nr = success.shape[0]
    colors = _node_colors(nr)
    for n in range(nr):
        ok.plot(t, success[n], color=colors[n], label=f"node {n}", linewidth=1.5)
        fb.plot(t, fallback[n], color=colors[n], label=f"node {n}", linewidth=1.5)
    ok.set_title("pages migrated (pgmigrate_success)", fontsize="small")
    fb.set_title("fell back to swap (pgmigrate_fallback_swap)", fontsize="small")
    for ax in (ok, fb):
        ax.set_ylabel("pages")
        ax.set_ylim(bottom=0)
        _time_axis(ax, t, ops)
    if not fallback.any():
        fb.set_ylim(0, 1)
        fb.text(0.5, 0.5, "no fallbacks", ha="center", va="center", transform=fb.transAxes, color="0.4")
    _node_legend(ok, nr)
    return _save(fig, path)


def plot_swap(path: Path, summary: dict, timeline: list[dict]) -> Path:
    fig, axes = _figure()
    ax = axes[0][0]
    swap = summary.get("swap", {})
    slots = int(swap.get("slots", 0))
    state = f"{slots} slots" if slots else "no swap device"
    ax.set_title(f"Swap ({state}; {_title(summary)})", fontsize="medium")
    if not timeline:
        _no_data(ax, "no timeline samples")
        return _save(fig, path)
    t, ops, _, top = _series(timeline)
    ax.plot(t, top("swap_used"), label="swap slots used", linewidth=1.8, color="tab:red")
    ax.plot(t, top("swapcached"), label="in the swap cache", linewidth=1.5, color="tab:blue")
    ax.plot(t, top("migcache_entries"), label="in the migration cache", linewidth=1.5, color="tab:green",
            linestyle="--")
    ax.set_ylabel("pages")
    ax.set_ylim(bottom=0)
    if not (top("swap_used").any() or top("swapcached").any() or top("migcache_entries").any()):
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "nothing swapped or cached during the run", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    _time_axis(ax, t, ops)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def _histogram(ax, values_us: np.ndarray, title: str, what: str, color: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize="small")
    v = np.asarray(values_us, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        _no_data(ax, f"no {what}")
        return
    v = np.maximum(v, 1e-3)  # a log axis: clamp zeros to a nanosecond
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo * 1.01:
        lo, hi = lo / 1.5, hi * 1.5
    bins = np.geomspace(lo, hi, 50)
    ax.hist(v, bins=bins, color=color, alpha=0.75, label=f"{v.size} {what}")
    ax.set_xscale("log")
    _duration_axis(ax)
    ax.set_xlabel("latency (log scale)")
    ax.set_ylabel(what)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))      # a count of calls
    ax.grid(True, alpha=0.3, which="both")
    for p, style in ((50, "-"), (90, "--"), (99, ":")):
        x = float(np.percentile(v, p))
        ax.axvline(x, color="0.15", linestyle=style, linewidth=1.2, label=f"p{p} {duration(x)}")
    ax.legend(loc="best", fontsize="small")


def duration(us: float) -> str:
    """Microseconds as a reader says them: 850 µs, 5.1 ms, 2 s."""
    for scale, unit in ((1e6, "s"), (1e3, "ms"), (1.0, "µs")):
        if us >= scale:
            return f"{us / scale:.3g} {unit}"
    return f"{us * 1e3:.3g} ns"


def _duration_axis(ax) -> None:
    """Label a log axis of microseconds in durations, at 1, 2 and 5 of each
    decade over a few decades, at every decade or every few over more, and
    at round values inside a range narrower than that. Matplotlib's default
    labels every minor tick of a range under a decade wide, in scientific
    notation, and those run into each other (2×10³3×10⁴×10³...)."""
    from matplotlib.ticker import FuncFormatter, Locator, LogLocator, NullFormatter

    class DurationTicks(Locator):
        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            return _duration_ticks(*sorted((float(vmin), float(vmax))))

    ax.xaxis.set_major_locator(DurationTicks())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: duration(x)))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10)), numticks=40))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _duration_ticks(vmin: float, vmax: float) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    lo, hi = int(np.floor(np.log10(vmin))), int(np.ceil(np.log10(vmax)))
    subs = (1, 2, 5) if hi - lo <= 3 else (1,)
    step = max(1, -(-(hi - lo) // 7))           # at most about 7 decades labelled
    ticks = [s * 10.0 ** e for e in range(lo - lo % step, hi + 1, step) for s in subs]
    ticks = [t for t in ticks if vmin <= t <= vmax]
    if len(ticks) < 2:                          # under a 1-2-5 step wide
        ticks = [t for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
                 if vmin <= t <= vmax]
    return ticks


def plot_latency(path: Path, summary: dict, latencies: dict[str, np.ndarray]) -> Path:
    fig, axes = _figure(1, 2)
    fault, mig = axes[0]
    fig.suptitle(f"Latency distribution ({_title(summary)})", fontsize="medium")
    ray = summary.get("tlb") is not None       # only the touch calls that faulted through the coordinator
    _histogram(fault, latencies.get("fault_us", np.empty(0)),
               "fault batches through the coordinator" if ray else "fault batches (one touch call each)",
               "touch calls", "tab:blue")
    _histogram(mig, latencies.get("migration_us", np.empty(0)), "migration calls (move_pages / migrate_pages)",
               "migration calls", "tab:orange")
    return _save(fig, path)


def _title(summary: dict) -> str:
    return f"policy {summary.get('policy', '?')}, payload {summary.get('payload', '?')}"


# -- index.html -------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.wide { overflow-x: auto; }
.bad { color: #b00; font-weight: bold; } .good { color: #070; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def index_html(summary: dict, images: list[str]) -> str:
    from .report import LATENCIES, _ops_done, node_rows, payload_dirs, run_name

    s = summary
    name = run_name(s)
    ops = _ops_done(s) if "operations" in s else "?"
    facts = [
        ["scenario", name],
        ["backend", s.get("backend", "?")],
        ["policy", s.get("policy", "?")],
        ["payload", s.get("payload", "?")],
        *([["payloads in", where]] if (where := payload_dirs(s)) else []),
        ["operations", ops],
        ["seed", s.get("seed", "?")],
        ["processes", s.get("processes", "?")],
        ["migration events", s.get("migration_events", "?")],
        ["elapsed (s)", s.get("elapsed_s", "?")],
        ["violations", s.get("violations", "?")],
    ]
    nodes = s.get("nodes", [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>numaemu: {_e(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>numaemu run: {_e(name)}</h1>",
        f"<p>policy <b>{_e(s.get('policy', '?'))}</b>, payload <b>{_e(s.get('payload', '?'))}</b>, "
        f"backend {_e(s.get('backend', '?'))}, {_e(ops)} operations, "
        f"{_e(s.get('processes', '?'))} processes, {_e(s.get('migration_events', '?'))} migrations, "
        f"{_e(s.get('elapsed_s', '?'))} s</p>",
    ]
    if s.get("interrupted"):
        parts.append('<p class="bad">interrupted (Ctrl-C or SIGTERM): this run is partial</p>')
    for line in s.get("warnings", []):
        parts.append(f'<p class="bad">warning: {_e(line)}</p>')
    violations = s.get("violations", 0)
    if violations:
        parts.append(f'<p class="bad">violations: {_e(violations)}</p><ul>'
                     + "".join(f"<li>{_e(d)}</li>" for d in s.get("violation_details", [])) + "</ul>")
    else:
        parts.append('<p class="good">violations: 0 (data read back as written; invariants hold)</p>')
    parts.append("<h2>Run</h2>" + _table(["", "value"], facts))
    rows = [["" if c is None else c for c in row] for row in node_rows(s)] if nodes else []
    parts.append("<h2>Per node</h2>"
                 + _table(["", *(f"node {n.get('node', i)}" for i, n in enumerate(nodes)), "all"], rows))
    swap = s.get("swap")
    if swap:
        parts.append("<h2>Swap</h2>" + _table(["", "value"], [[k, v] for k, v in swap.items()]))
    latency = s.get("latency") or {}
    lat_rows = [[label, st.get("count", 0), *(_fmt(st.get(k)) for k in ("p50", "p90", "p99", "max"))]
                for key, label, _unit, _what in LATENCIES if (st := latency.get(key)) is not None]
    if lat_rows:
        parts.append("<h2>Latency</h2>" + _table(["", "count", "p50", "p90", "p99", "max"], lat_rows))
    errors = s.get("errors") or {}
    if errors:
        parts.append("<h2>Failed calls</h2>" + _table(["call:errno", "count"], [[k, v] for k, v in errors.items()]))
    parts.append("<h2>Plots</h2>")
    for name in images:
        parts.append(f'<p><img src="{_e(name)}" alt="{_e(name)}" width="{PNG_SIZE[0]}" '
                     f'height="{PNG_SIZE[1]}"></p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- all of it --------------------------------------------------------------------

def write_report(directory: Path, summary: dict, timeline: list[dict] | None = None,
                 latencies: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Write the four PNGs and index.html into ``directory`` (created if
    missing) and return their paths (index.html last). ``timeline``: the
    samples (default ``summary["timeline"]``); ``latencies``:
    ``{"fault_us": array, "migration_us": array}``, every duration in
    microseconds (``LatencyRecorder.arrays()``). Raises OSError if a file
    cannot be written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if timeline is None:
        timeline = summary.get("timeline") or []
    latencies = latencies or {}
    written = [
        plot_memory(directory / PLOTS[0], summary, timeline),
        plot_migrations(directory / PLOTS[1], summary, timeline),
        plot_swap(directory / PLOTS[2], summary, timeline),
        plot_latency(directory / PLOTS[3], summary, latencies),
    ]
    index = directory / INDEX
    index.write_text(index_html(summary, [p.name for p in written]), encoding="utf-8")
    return written + [index]
