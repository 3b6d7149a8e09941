"""Machine topology: nodes, frames per node, distances, swap size, payload.

Validated once, up front: every later layer trusts these numbers. An invalid
value raises ValueError naming the key (``machine.<key>``) and the problem,
so a scenario file error points at the line a user must fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

POLICIES = ("swapcache", "migcache", "migentry")
PAYLOADS = ("token", "bytes")
MAX_NODES = 1024
MAX_FRAMES_PER_NODE = 1 << 31
LOCAL_DISTANCE = 10
REMOTE_DISTANCE = 20

KEYS = ("nodes", "frames_per_node", "swap_pages", "page_size", "policy",
        "payload", "seed", "distances")


def _int(key: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"machine.{key}: must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"machine.{key}: must be {rng}, got {value}")
    return value


@dataclass(frozen=True)
class Topology:
    frames: tuple[int, ...]                 # frames of each node
    swap_pages: int = 0
    page_size: int = 4096
    policy: str = "migentry"
    payload: str = "token"
    seed: int = 0
    distances: tuple[tuple[int, ...], ...] = field(default=())

    @property
    def nr_nodes(self) -> int:
        return len(self.frames)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Topology":
        if not isinstance(cfg, dict):
            raise ValueError(f"machine: must be a table of settings, got {type(cfg).__name__}")
        unknown = sorted(set(cfg) - set(KEYS))
        if unknown:
            raise ValueError(f"machine.{unknown[0]}: unknown key (known: {', '.join(KEYS)})")
        nodes = cfg.get("nodes", 1)
        if isinstance(nodes, list):
            if not 1 <= len(nodes) <= MAX_NODES:
                raise ValueError(f"machine.nodes: must list 1..{MAX_NODES} nodes, got {len(nodes)}")
            frames = []
            for i, n in enumerate(nodes):
                if not isinstance(n, dict) or set(n) - {"frames"} or "frames" not in n:
                    raise ValueError(f"machine.nodes[{i}]: must be a table with exactly the key 'frames'")
                frames.append(_int(f"nodes[{i}].frames", n["frames"], 1, MAX_FRAMES_PER_NODE))
            if "frames_per_node" in cfg:
                raise ValueError("machine.frames_per_node: not allowed when machine.nodes lists per-node frames")
        else:
            nr = _int("nodes", nodes, 1, MAX_NODES)
            fpn = _int("frames_per_node", cfg.get("frames_per_node", 1024), 1, MAX_FRAMES_PER_NODE)
            frames = [fpn] * nr
        swap = _int("swap_pages", cfg.get("swap_pages", 0), 0, 1 << 40)
        ps = _int("page_size", cfg.get("page_size", 4096), 64, 1 << 30)
        if ps & (ps - 1):
            raise ValueError(f"machine.page_size: must be a power of two, got {ps}")
        policy = cfg.get("policy", "migentry")
        if policy not in POLICIES:
            raise ValueError(f"machine.policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
        payload = cfg.get("payload", "token")
        if payload not in PAYLOADS:
            raise ValueError(f"machine.payload: must be one of {', '.join(PAYLOADS)}, got {payload!r}")
        seed = _int("seed", cfg.get("seed", 0), 0, (1 << 63) - 1)
        nr = len(frames)
        dist = cfg.get("distances")
        if dist is None:
            dist = [[LOCAL_DISTANCE if i == j else REMOTE_DISTANCE for j in range(nr)] for i in range(nr)]
        else:
            if not isinstance(dist, list) or len(dist) != nr or any(
                    not isinstance(r, list) or len(r) != nr for r in dist):
                raise ValueError(f"machine.distances: must be a {nr}x{nr} table of integers")
            for i, row in enumerate(dist):
                for j, d in enumerate(row):
                    _int(f"distances[{i}][{j}]", d, 1, 255)
                    if i == j and d != LOCAL_DISTANCE:
                        raise ValueError(f"machine.distances[{i}][{i}]: local distance must be {LOCAL_DISTANCE}, got {d}")
        return cls(tuple(frames), swap, ps, policy, payload, seed,
                   tuple(tuple(r) for r in dist))

    def to_config(self) -> dict[str, Any]:
        return {"nodes": [{"frames": f} for f in self.frames], "swap_pages": self.swap_pages,
                "page_size": self.page_size, "policy": self.policy, "payload": self.payload,
                "seed": self.seed, "distances": [list(r) for r in self.distances]}

    def fallback_order(self, node: int) -> list[int]:
        """The zonelist of `node`: nodes by distance, the local node first."""
        return sorted(range(self.nr_nodes), key=lambda n: (self.distances[node][n], n))
