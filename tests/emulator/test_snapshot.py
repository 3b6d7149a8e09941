"""snapshot() / Machine.restore(): msgpack plus a checksum, a faithful round trip, and a
clear ValueError (never a crash, never code execution) on a bad blob."""
from __future__ import annotations

import os
import pathlib
import pickle
import random

import numpy as np
import pytest

from emu_support import PAYLOADS, POLICIES, fill, make, pages_of, pattern, where
from emulator import Machine


def busy_machine(policy, payload):
    """A machine in an interesting state: forks, shared pages, COW copies, migrated pages,
    swapped-out pages, swap-cached pages, several mempolicies."""
    from emulator import MPOL_MF_MOVE_ALL
    m = make(policy=policy, payload=payload, nodes=3, frames=24, swap=32)
    p = m.spawn(node=0)
    a = m.mmap(p, 8)
    s = m.mmap(p, 3, shared=True)
    fill(m, p, a, 8, base=10)
    fill(m, p, s, 3, base=50)
    q = m.spawn(node=2)
    m.set_mempolicy(q, "interleave", [0, 1, 2])
    b = m.mmap(q, 6)
    m.touch(q, b, 6)
    c = m.fork(p)
    m.write(c, a + m.page_size, pattern(m, 99))
    m.move_pages(p, pages_of(m, s, 3), [1, 1, 2], flags=MPOL_MF_MOVE_ALL)
    m.move_pages(q, pages_of(m, b, 2), [2, 2])
    m.reclaim(0, 5)
    m.read(p, a, 2 * m.page_size)               # some pages back, maybe swap-cached
    procs = {p: [(a, 8), (s, 3)], q: [(b, 6)], c: [(a, 8), (s, 3)]}
    return m, procs


def contents(m, procs):
    out = {}
    for pid, maps in procs.items():
        for addr, n in maps:
            out[(pid, addr)] = ([int(t) for t in m.read_tokens(pid, addr, n)],
                                where(m, pid, addr, n))
    return out


def full_contents(m, procs):
    return {(pid, addr): m.read(pid, addr, n * m.page_size)
            for pid, maps in procs.items() for addr, n in maps}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("policy", POLICIES)
def test_round_trip(policy, payload):
    from emulator import Machine
    m, procs = busy_machine(policy, payload)
    blob = m.snapshot()
    assert isinstance(blob, bytes) and len(blob) > 0
    m2 = Machine.restore(blob)
    assert (m2.nr_nodes, m2.page_size, m2.policy, m2.payload) == \
        (m.nr_nodes, m.page_size, m.policy, m.payload)
    m2.check()
    assert m2.vmstat() == m.vmstat()
    for n in range(m.nr_nodes):
        assert m2.vmstat(n) == m.vmstat(n)
    assert m2.node_info() == m.node_info()
    assert m2.swap_info() == m.swap_info()
    assert contents(m2, procs) == contents(m, procs)     # no faults: placement preserved
    assert full_contents(m2, procs) == full_contents(m, procs)
    assert m2.vmstat() == m.vmstat()                       # both faulted the same way
    # a snapshot of the restored machine restores to the same state again
    m3 = Machine.restore(m2.snapshot())
    assert m3.vmstat() == m2.vmstat() and m3.node_info() == m2.node_info()


@pytest.mark.parametrize("policy", POLICIES)
def test_restored_machine_keeps_working_identically(policy):
    from emulator import Machine
    m, procs = busy_machine(policy, "bytes")
    m2 = Machine.restore(m.snapshot())
    results = []
    for mm in (m, m2):
        r = []
        pid = mm.spawn(node=1)
        r.append(pid)
        x = mm.mmap(pid, 4)
        r.append(x)
        r.append([int(t) for t in mm.touch(pid, x, 4)])        # machine-generated tokens
        p = 1                                   # busy_machine's first process
        a = procs[p][0][0]
        child = mm.fork(p)
        r.append(child)
        mm.write(child, a, pattern(mm, 1234))
        r.append(mm.move_pages(p, pages_of(mm, a, 8), [2] * 8))
        r.append(mm.reclaim(2, 3))
        r.append(mm.migrate_pages(child, [0, 1, 2], [1, 1, 1]))
        mm.swapoff()
        mm.exit(p)
        r.append(mm.read(child, a, 8 * mm.page_size))
        mm.check()
        r.append(mm.vmstat())
        r.append(mm.node_info())
        results.append(r)
    assert results[0] == results[1]


def test_snapshot_does_not_change_the_machine():
    m, procs = busy_machine("migcache", "token")
    before = (m.vmstat(), m.node_info(), m.swap_info(), contents(m, procs))
    m.snapshot()
    assert (m.vmstat(), m.node_info(), m.swap_info(), contents(m, procs)) == before


def test_snapshots_are_deterministic():
    m, _ = busy_machine("migentry", "token")
    assert m.snapshot() == m.snapshot()
    m2, _ = busy_machine("migentry", "token")
    assert m2.snapshot() == m.snapshot()


@pytest.fixture(scope="module")
def blob():
    m, _ = busy_machine("migcache", "bytes")
    return m.snapshot()


@pytest.mark.parametrize("cut", [0, 1, 7, 0.5, -1])
def test_truncated_blob_is_a_clear_valueerror(blob, cut):
    from emulator import Machine
    n = int(len(blob) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(blob) - 1)
    with pytest.raises(ValueError) as ei:
        Machine.restore(blob[:n])
    msg = str(ei.value).lower()
    assert msg and any(w in msg for w in ("snapshot", "truncat", "checksum", "corrupt",
                                          "short", "invalid")), msg


@pytest.mark.parametrize("seed", range(6))
def test_flipped_byte_is_a_clear_valueerror(blob, seed):
    from emulator import Machine
    rng = random.Random(seed)
    i = rng.randrange(len(blob))
    bad = bytearray(blob)
    bad[i] ^= 1 << rng.randrange(8)
    with pytest.raises(ValueError) as ei:
        Machine.restore(bytes(bad))
    msg = str(ei.value).lower()
    assert any(w in msg for w in ("snapshot", "checksum", "corrupt", "invalid")), msg


def test_flipped_first_and_last_bytes(blob):
    from emulator import Machine
    for i in (0, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 0xFF
        with pytest.raises(ValueError):
            Machine.restore(bytes(bad))


def test_appended_garbage_is_rejected(blob):
    from emulator import Machine
    with pytest.raises(ValueError):
        Machine.restore(blob + b"\x00")


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"hello world", b"\xff" * 64,
                                     bytes(random.Random(3).randbytes(4096))],
                         ids=["empty", "nul", "text", "ff64", "random4k"])
def test_garbage_input(garbage):
    from emulator import Machine
    with pytest.raises(ValueError):
        Machine.restore(garbage)


def test_valid_msgpack_that_is_not_a_snapshot():
    import msgpack
    from emulator import Machine
    for obj in ({"nodes": 2}, [1, 2, 3], "machine", None):
        with pytest.raises(ValueError):
            Machine.restore(msgpack.packb(obj))


class _Boom:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(os.environ.get("NUMAEMU_BOOM",
                                                                 "/tmp/numaemu_pickle_boom")),))


def test_never_unpickles(tmp_path, monkeypatch):
    from emulator import Machine
    target = tmp_path / "boom"
    monkeypatch.setenv("NUMAEMU_BOOM", str(target))
    evil = pickle.dumps(_Boom(), protocol=2)
    for proto_blob in (evil, pickle.dumps(_Boom(), protocol=5)):
        with pytest.raises(ValueError):
            Machine.restore(proto_blob)
    assert not target.exists(), "restore executed a pickle"


def test_no_pickle_in_the_emulator_sources():
    import emulator
    root = pathlib.Path(emulator.__file__).parent
    for f in root.rglob("*.py"):
        src = f.read_text()
        for bad in ("import pickle", "from pickle", "import cPickle", "import dill",
                    "import marshal", "import shelve"):
            assert bad not in src, f"{f.name} uses {bad!r}"


def _with_stat(blob: bytes, columns: int) -> bytes:
    """The snapshot with its vmstat counters cut to (or padded to) ``columns``."""
    import hashlib

    import msgpack

    from emulator.snapshot import MAGIC
    body = msgpack.unpackb(blob[len(MAGIC) + 32:], raw=False, strict_map_key=False)
    st = np.frombuffer(body["stat"]["data"], dtype=body["stat"]["dtype"]).reshape(body["stat"]["shape"])
    st = np.pad(st, ((0, 0), (0, max(0, columns - st.shape[1]))))[:, :columns].copy()
    body["stat"] = {"dtype": st.dtype.name, "shape": list(st.shape), "data": st.tobytes()}
    packed = msgpack.packb(body, use_bin_type=True)
    return MAGIC + hashlib.sha256(packed).digest() + packed


def test_a_snapshot_from_before_a_counter_was_added_restores_with_it_at_zero():
    from emulator.vmstat import EVENTS
    m = Machine.from_config({"nodes": 2, "frames_per_node": 64, "swap_pages": 64})
    pid = m.spawn(0)
    a = m.mmap(pid, 8)
    m.touch(pid, a, 8)
    m.move_pages(pid, [a, a + 4096], [1, 1])
    old = _with_stat(m.snapshot(), len(EVENTS) - 1)       # written before the last counter joined
    r = Machine.restore(old)
    assert r.vmstat(node=1)[EVENTS[-1]] == 0
    assert r.vmstat()["pgmigrate_success"] == m.vmstat()["pgmigrate_success"] == 2
    with pytest.raises(ValueError, match="vmstat counters do not match"):
        Machine.restore(_with_stat(m.snapshot(), len(EVENTS) + 1))   # a newer version's


# -- impossible states: refused at restore, before a later call corrupts them ------------------
def _edit(blob: bytes, change) -> bytes:
    """The snapshot with ``change(body)`` applied, its checksum made right again:
    a well-formed blob describing another state."""
    import hashlib

    import msgpack

    from emulator.snapshot import MAGIC
    body = msgpack.unpackb(blob[len(MAGIC) + 32:], raw=False, strict_map_key=False)
    change(body)
    packed = msgpack.packb(body, use_bin_type=True)
    return MAGIC + hashlib.sha256(packed).digest() + packed


def _arr_of(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}


def _set_at(*keys_and_value):
    *keys, value = keys_and_value

    def change(body):
        d = body
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


def _pop_av_ref(body):
    body["anon_vmas"][0]["vmas"].pop()


def _overlap(body):
    v0, v1 = body["mms"][0]["vmas"][:2]
    v1["start"] = v0["start"] + 1


IMPOSSIBLE = [
    # pids and anon_vma ids are never handed out twice: spawn would replace process 1
    (_set_at("next_pid", 1), "snapshot: next_pid: 1, but pid 3 exists"),
    (_set_at("next_av", 1), "snapshot: next_av: 1, but anon_vma id 3 exists"),
    (_set_at("mms", 0, "node", 99), "snapshot: mms[0].node: must be in 0..2, got 99"),
    (_set_at("mms", 0, "node", -1), "snapshot: mms[0].node: must be in 0..2, got -1"),
    (_set_at("mms", 0, "node", True), "snapshot: mms[0].node: must be an integer, got True"),
    (_set_at("mms", 1, "policy", [2, [99]]), "snapshot: mms[1].policy nodes: must be in 0..2, got 99"),
    (_set_at("mms", 1, "policy", [2, []]), "snapshot: mms[1].policy: mode 2 needs nodes, got []"),
    (_set_at("mms", 1, "policy", [99, []]), "snapshot: mms[1].policy: mode 99 is not a mempolicy mode"),
    (_set_at("mms", 1, "policy", [1.0, [0]]), "snapshot: mms[1].policy: mode 1.0 is not a mempolicy mode"),
    (_set_at("mms", 1, "policy", [1, [0, 1]]), "snapshot: mms[1].policy: mode 1 needs one node, got [0, 1]"),
    (_set_at("mms", 1, "policy", [0, [1]]), "snapshot: mms[1].policy: mode 0 takes no nodes, got [1]"),
    (_set_at("mms", 1, "policy", [3, [1, 0]]), "snapshot: mms[1].policy: nodes [1, 0] are not sorted and distinct"),
    (_set_at("mms", 1, "policy", "bind"), "snapshot: mms[1].policy: must be [mode, [nodes]]"),
    # the mode flags or'ed into the mode, as get_mempolicy() gives them (sanitize_mpol_flags(), mpol_new())
    (_set_at("mms", 1, "policy", [2 | 1 << 15 | 1 << 14, [1]]),
     "snapshot: mms[1].policy: mode 0xc002 has both MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES"),
    (_set_at("mms", 1, "policy", [3 | 1 << 13, [0, 1]]),
     "snapshot: mms[1].policy: mode 0x2003 has MPOL_F_NUMA_BALANCING, which is for bind (2) only"),
    (_set_at("mms", 1, "policy", [4 | 1 << 15, []]), "snapshot: mms[1].policy: mode 4 takes no mode flags, got 0x8000"),
    (_set_at("mms", 1, "policy", [0 | 1 << 14, []]), "snapshot: mms[1].policy: mode 0 takes no mode flags, got 0x4000"),
    (_set_at("mms", 1, "policy", [5, []]), "snapshot: mms[1].policy: mode 5 needs nodes, got []"),
    (_set_at("mms", 1, "policy", [6, [0]]), "snapshot: mms[1].policy: mode 6 is not a mempolicy mode"),
    (_set_at("mms", 1, "policy", [2 | 1 << 12, [0]]), "snapshot: mms[1].policy: mode 4098 is not a mempolicy mode"),
    (_set_at("mms", 0, "vmas", 1, "policy", [5 | 1 << 13, [1]]),
     "snapshot: mms[0].vmas[1].policy: mode 0x2005 has MPOL_F_NUMA_BALANCING"),
    (_set_at("mms", 0, "vmas", 0, "policy", [2, [99]]), "snapshot: mms[0].vmas[0].policy nodes: must be in 0..2"),
    # a vma with no policy of its own has null: mpol_new() makes no policy for default
    (_set_at("mms", 0, "vmas", 0, "policy", [0, []]),
     "snapshot: mms[0].vmas[0].policy: mode 0 (default) is no policy here: a vma with none has null"),
    (_set_at("mms", 2, "pid", 1), "snapshot: mms[2].pid: process 1 twice"),
    (lambda b: b["mms"][0].pop("node"), "snapshot: mms[0].node: missing"),
    (_overlap, "snapshot: mms[0].vmas[1].start: 0x10001 is not past the vma before it"),
    (_set_at("mms", 0, "next_vpn", 0x10000), "snapshot: mms[0].vmas[0]: ends at page 0x10008, past mms[0].next_vpn"),
    (_set_at("mms", 0, "vmas", 0, "av", 999), "snapshot: mms[0].vmas[0].av: 999 is no anon_vma of the snapshot"),
    (_set_at("mms", 0, "vmas", 0, "shadow", [0, -1]), "snapshot: mms[0].vmas[0].shadow offset: must be in 0.."),
    (_set_at("mms", 0, "vmas", 0, "pte", _arr_of(np.zeros(7, np.int64))),
     "snapshot: mms[0].vmas[0].pte: shape [7], not 8"),
    (_set_at("anon_vmas", 0, "vmas", [[99, 0]]), "snapshot: anon_vmas[0].vmas[0]: [99, 0] names no vma"),
    (_pop_av_ref, "snapshot: anon_vmas: pid "),
    (_set_at("migcache", "counter", _arr_of(np.zeros((2, 32), np.int64))),
     "snapshot: migcache.counter: shape [2, 32], not N"),
    (_set_at("migcache", "page", _arr_of(np.full(65, -1, np.int64))), "snapshot: migcache.page: shape [65], not 64"),
    (_set_at("migcache", "page", _arr_of(np.full(64, -1, np.int32))), "snapshot: migcache.page: dtype int32, not int64"),
    (_set_at("migcache", "next_id", 65), "snapshot: migcache.next_id: must be in 1..64, got 65"),
    (_set_at("migcache", "free_ids", [0]), "snapshot: migcache.free_ids: 0 is no id handed out"),
    (_set_at("migcache", "page", _arr_of(np.array([99 << 32] + [-1] * 63, np.int64))),
     "snapshot: migcache.page: an entry names no frame"),
    # numpy's own ValueErrors (a reshape, a broadcast) used to pass through without the prefix
    (_set_at("stat", {"dtype": "int64", "shape": [-2, -4], "data": bytes(64)}),
     "snapshot: stat: shape [-2, -4] is not a list of sizes"),
    (_set_at("nodes", 0, "free", _arr_of(np.zeros(25, np.int32))),
     "snapshot: nodes[0].free: not a stack of the node's 24 frames"),
    (_set_at("swap", "free", _arr_of(np.array([0], np.int64))), "snapshot: swap.free: not a stack of the device's"),
    (_set_at("topology", "nodes", 0), "snapshot: topology: machine.nodes: must be 1..1024, got 0"),
    (_set_at("bugs", ["nope"]), "snapshot: bugs: unknown bug injection 'nope'"),
]


@pytest.fixture(scope="module")
def token_blob():
    m, _ = busy_machine("migcache", "token")
    return m.snapshot()


@pytest.mark.parametrize("checked", [True, False])
@pytest.mark.parametrize("change, message", IMPOSSIBLE, ids=[m.split(":")[1].strip() + f"-{i}"
                                                              for i, (_, m) in enumerate(IMPOSSIBLE)])
def test_an_impossible_state_is_refused_naming_the_field(token_blob, change, message, checked):
    """Checked or not (the oracle's verdict aside), a restore refuses what later
    calls would corrupt the machine with, with the snapshot prefix and the field."""
    with pytest.raises(ValueError) as e:
        Machine.restore(_edit(token_blob, change), checked=checked)
    assert str(e.value).startswith(message) or message in str(e.value), str(e.value)
    assert str(e.value).startswith("snapshot: ") and "malformed body" not in str(e.value), str(e.value)


def test_a_restored_machine_hands_out_new_pids(token_blob):
    """What next_pid = 1 let happen: spawn replaced process 1. A valid snapshot's
    counters are past every id, so a spawn (and a fork) gets a new one."""
    m = Machine.restore(token_blob)
    before = set(m.processes())
    pid = m.spawn(0)
    assert pid not in before and set(m.processes()) == before | {pid}
