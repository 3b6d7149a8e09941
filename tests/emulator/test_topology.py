"""Machine.from_config: validation names the key; valid configs build."""
from __future__ import annotations

import pytest

from emu_support import POLICIES, PAYLOADS


def build(**cfg):
    from emulator import Machine
    return Machine.from_config(cfg)


BASE = {"nodes": 2, "frames_per_node": 8, "swap_pages": 0, "page_size": 4096,
        "policy": "migentry", "payload": "token", "seed": 0}


def with_(**over):
    cfg = dict(BASE)
    cfg.update(over)
    return cfg


BAD = [
    # (key named in the message, config)
    ("nodes", with_(nodes="2")),
    ("nodes", with_(nodes=2.5)),
    ("nodes", with_(nodes=0)),
    ("nodes", with_(nodes=-1)),
    ("nodes", with_(nodes=1025)),
    ("frames_per_node", with_(frames_per_node="64")),
    ("frames_per_node", with_(frames_per_node=1.5)),
    ("frames_per_node", with_(frames_per_node=-1)),
    ("swap_pages", with_(swap_pages=-1)),
    ("swap_pages", with_(swap_pages="8")),
    ("page_size", with_(page_size=1000)),
    ("page_size", with_(page_size=4095)),
    ("page_size", with_(page_size=0)),
    ("page_size", with_(page_size=32)),
    ("page_size", with_(page_size="4096")),
    ("policy", with_(policy="lru")),
    ("policy", with_(policy="")),
    ("policy", with_(policy=1)),
    ("policy", with_(policy=None)),
    ("payload", with_(payload="float")),
    ("payload", with_(payload=3)),
    ("seed", with_(seed="abc")),
    ("distances", with_(distances=[[10, 20, 20], [20, 10, 20]])),
    ("distances", with_(distances="near")),
    ("distances", with_(distances=[[10, 20], [20]])),
    ("distances", with_(distances=[[10, -5], [-5, 10]])),
    ("nodez", with_(nodez=2)),
    ("swap", with_(swap=8)),
]


@pytest.mark.parametrize("key,cfg", BAD, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD)])
def test_invalid_value_names_the_key(key, cfg):
    from emulator import Machine
    with pytest.raises(ValueError) as ei:
        Machine.from_config(cfg)
    assert key in str(ei.value), f"message {str(ei.value)!r} does not name {key!r}"


@pytest.mark.parametrize("key,cfg", BAD[:6] + BAD[15:17], ids=lambda v: str(v)[:20])
def test_keyword_constructor_validates_too(key, cfg):
    from emulator import Machine
    with pytest.raises(ValueError) as ei:
        Machine(**cfg)
    assert key in str(ei.value)


@pytest.mark.parametrize("nodes", [
    [],
    [{"frames": -1}, {"frames": 8}],
    [{"frames": "8"}],
    [{"frams": 8}],
    [8, 16],
    [{"frames": 8}] * 1025,
])
def test_list_of_nodes_invalid(nodes):
    from emulator import Machine
    with pytest.raises(ValueError) as ei:
        Machine.from_config({"nodes": nodes, "page_size": 256})
    msg = str(ei.value)
    assert "nodes" in msg or "frames" in msg or "frams" in msg, msg


def test_list_of_nodes_unknown_per_node_key_is_named():
    from emulator import Machine
    with pytest.raises(ValueError) as ei:
        Machine.from_config({"nodes": [{"frames": 8, "colour": "red"}]})
    assert "nodes" in str(ei.value) or "colour" in str(ei.value)


def test_list_of_nodes_form_has_per_node_frames():
    from emulator import Machine
    m = Machine.from_config({"nodes": [{"frames": 8}, {"frames": 16}, {"frames": 32}],
                             "page_size": 256})
    assert m.nr_nodes == 3
    info = m.node_info()
    assert [n["node"] for n in info] == [0, 1, 2]
    assert [n["frames"] for n in info] == [8, 16, 32]
    assert [n["free"] for n in info] == [8, 16, 32]
    assert [n["used"] for n in info] == [0, 0, 0]
    m.check()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_valid_config_builds(policy, payload):
    m = build(nodes=3, frames_per_node=16, swap_pages=32, page_size=128, policy=policy,
              payload=payload, seed=7)
    assert m.nr_nodes == 3
    assert m.page_size == 128
    assert m.policy == policy
    assert m.payload == payload
    info = m.node_info()
    assert len(info) == 3
    assert all(n["frames"] == 16 and n["free"] == 16 and n["used"] == 0 for n in info)
    sw = m.swap_info()
    assert sw["slots"] == 32 and sw["used"] == 0 and sw["on"] is True
    vm = m.vmstat()
    for k in ("pgmigrate_success", "pgmigrate_fail", "pswpin", "pswpout", "pgmajfault",
              "pgfault", "numa_hit", "numa_miss", "numa_foreign", "numa_local",
              "numa_other", "numa_interleave", "migcache_add", "migcache_remove",
              "migcache_move_to_swap", "pgmigrate_fallback_swap"):
        assert vm[k] == 0, k
    for k in ("nr_swapcached", "nr_isolated_anon", "nr_anon_pages", "nr_migcache_entries"):
        assert vm[k] == 0, k
    assert vm["nr_free_pages"] == 48
    m.check()


def test_keyword_constructor_builds():
    from emulator import Machine
    m = Machine(nodes=2, frames_per_node=8, page_size=64, policy="migcache", payload="bytes")
    assert (m.nr_nodes, m.page_size, m.policy, m.payload) == (2, 64, "migcache", "bytes")


def test_no_swap_configured():
    m = build(**with_(swap_pages=0))
    sw = m.swap_info()
    assert sw["slots"] == 0 and sw["used"] == 0 and sw["on"] is False


@pytest.mark.parametrize("nodes", [1, 1024])
def test_node_count_bounds_are_inclusive(nodes):
    m = build(nodes=nodes, frames_per_node=8, page_size=64)
    assert m.nr_nodes == nodes
    assert len(m.node_info()) == nodes


@pytest.mark.parametrize("ps", [64, 128, 4096, 65536])
def test_power_of_two_page_sizes(ps):
    m = build(nodes=1, frames_per_node=4, page_size=ps, payload="bytes")
    pid = m.spawn(node=0)
    a = m.mmap(pid, 1)
    assert a > 0 and a % ps == 0
    assert m.read(pid, a, ps) == bytes(ps)


def test_valid_distances_accepted():
    m = build(nodes=2, frames_per_node=8, page_size=64, distances=[[10, 30], [30, 10]])
    assert m.nr_nodes == 2


def test_bad_input_builds_nothing_partial():
    """A rejected config raises before anything is built: the next valid build is clean."""
    from emulator import Machine
    with pytest.raises(ValueError):
        Machine.from_config(with_(policy="bogus"))
    m = Machine.from_config(with_(page_size=64))
    assert m.swap_info()["slots"] == 0


def test_a_topology_runs_under_another_policy_payload_or_seed():
    """DESIGN.md's Machine(topology, policy=..., payload=..., seed=...): the same
    nodes, swap and distances, run another way; the topology's own keys stay its."""
    from emulator import Machine
    from emulator.topology import Topology
    t = Topology.from_config({"nodes": [{"frames": 32}, {"frames": 64}], "swap_pages": 16,
                              "distances": [[10, 30], [30, 10]]})
    m = Machine(t, policy="swapcache", payload="bytes", seed=7)
    assert (m.policy, m.payload, m.topology.seed) == ("swapcache", "bytes", 7)
    assert (m.topology.frames, m.topology.swap_pages, m.topology.distances) == (t.frames, t.swap_pages, t.distances)
    pid = m.spawn(0)
    addr = m.mmap(pid, 4)
    m.write(pid, addr, b"x" * 100)
    assert m.read(pid, addr, 100) == b"x" * 100 and m.move_pages(pid, [addr], [1]) == [1]
    with pytest.raises(TypeError, match="frames_per_node is the topology's"):
        Machine(t, frames_per_node=8)
    with pytest.raises(ValueError, match="machine.payload"):
        Machine(t, payload="pages")
