"""Helpers of the metrics tests: ports, subprocesses, polling with deadlines,
and a text scrape parsed into samples."""
from __future__ import annotations

import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]

# A scenario with memory pressure (reclaim, swap in and out), migrations
# every 5 operations on two nodes, and the migration cache.
PRESSURE_TOML = """
[machine]
nodes = 2
frames_per_node = 512
swap_pages = 4096
policy = "migcache"

[[workload]]
node = 0
processes = 3
pages = 300
pattern = "zipf"
write_ratio = 0.7
batch = 32

[[workload]]
node = 1
processes = 2
pages = 200
pattern = "uniform"
batch = 16

[migration]
every = 5
mode = "move_pages"

[run]
operations = {operations}
seed = 2
"""


def write_scenario(path: Path, operations: int = 600) -> Path:
    path.write_text(PRESSURE_TOML.format(operations=operations), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def numaemu_cmd() -> list[str]:
    script = Path(sys.executable).with_name("numaemu")
    assert script.exists(), f"numaemu is not installed next to {sys.executable}: pip install -e '.[test]'"
    return [str(script)]


def wait_for(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # not up yet
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8")


def scrape(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a text exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample_names(text: str) -> set[str]:
    return {name for name, _ in samples(text)}


def value(text: str, name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``."""
    hits = [v for (n, ls), v in samples(text).items()
            if n == name and all(dict(ls).get(k) == w for k, w in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def promql_query(prom: str, expr: str) -> list[dict]:
    """An instant query against the Prometheus at ``prom`` (host:port)."""
    import json

    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    doc = json.loads(http_get(url))
    assert doc["status"] == "success", doc
    return doc["data"]["result"]
