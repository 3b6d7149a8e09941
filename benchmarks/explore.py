"""Race explorer speed (issue 3's targets), measured in one run.
Usage: python benchmarks/explore.py [--quick] [--catalogue]

- schedules per second, systematic (dfs, bound 2) on the r1-no-pte-recheck
  scenario without the injection (target >= 2,000/s)
- time to find the r1-no-pte-recheck violation, median of 5 seeds, for the
  systematic and the random modes (target < 1 s)
- with --catalogue: schedules each catalogue scenario takes to explore completely, bound 2
- with --quick: 1 s of the rate and 3 seeds (a smoke run, not the targets)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))      # measure this checkout's emulator, not an installed one

from emulator import explore as X  # noqa: E402
from emulator.races import load  # noqa: E402

RACES = ROOT / "examples" / "races"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 s of the rate and 3 seeds (a smoke run, not the targets)")
    ap.add_argument("--catalogue", action="store_true",
                    help="also explore every catalogue scenario completely, bound 2")
    args = ap.parse_args()
    sc = load(RACES / "r1-no-pte-recheck.toml")
    bug = ["r1-no-pte-recheck"]
    runs, total, t0 = 0, 0, time.perf_counter()
    each = []
    seconds, seeds = (1.0, 3) if args.quick else (3.0, 5)
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        _, st = X.explore_dfs(sc, (), bound=2, seed=runs)
        each.append(st.schedules / (time.perf_counter() - t))
        runs += 1
        total += st.schedules
    rate = total / (time.perf_counter() - t0)
    print(f"dfs bound 2, r1 scenario, no injection: {rate:,.0f} schedules/s "
          f"({runs} complete searches of {total // runs} schedules) target 2,000; ratio {rate / 2000:.2f}")
    print(f"  per search: median {statistics.median(each):,.0f}/s, best {max(each):,.0f}/s, "
          f"worst {min(each):,.0f}/s (a busy machine shows as a wide spread)")
    for mode in ("dfs", "random", "pct"):
        times = []
        for seed in range(seeds):
            t = time.perf_counter()
            if mode == "dfs":
                out, _ = X.explore_dfs(sc, bug, bound=2, seed=seed)
            else:
                out, _ = X.explore_random(sc, bug, seed=seed, pct_depth=3 if mode == "pct" else 0)
            times.append(time.perf_counter() - t)
            assert out is not None
        print(f"time to find r1 ({mode}), median of {seeds} seeds: {statistics.median(times) * 1e3:.1f} ms "
              f"(max {max(times) * 1e3:.1f} ms; target < 1000 ms)")
    if args.catalogue:
        for p in sorted(RACES.glob("*.toml")):
            t = time.perf_counter()
            out, st = X.explore_dfs(load(p), (), bound=2)
            print(f"  {p.stem:26} {st.schedules:7,} schedules ({st.pruned:,} cut) "
                  f"{time.perf_counter() - t:6.1f}s {'VIOLATION' if out else 'clean'}")


if __name__ == "__main__":
    main()
