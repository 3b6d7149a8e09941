"""A node actor on another host that dies while the coordinator reaches its
payload (cluster/dataplane.py RemoteRows): the call in progress completes
on frames whose contents are lost instead of failing half done, and the
pages whose contents were on the dead node count as lost with it wherever
they go afterwards (a migration, a swap-out and back in), not as data read
back wrong. The coordinator runs in this process (the session's Ray, one
host); node actors 1 and 2 are reached as other hosts' are."""
from __future__ import annotations

import time
import uuid

import pytest

PAGES = 8


@pytest.fixture
def machine(ray_session):
    ray = ray_session
    from cluster.coordinator import Coordinator
    from cluster.node import NodeActor

    run = uuid.uuid4().hex[:8]
    Node = ray.remote(NodeActor)
    actors = [Node.options(num_cpus=0).remote(i, 64, 4096, "bytes", run) for i in range(3)]
    descs = ray.get([a.payload.remote() for a in actors])
    for d, a in zip(descs, actors):
        d["handle"] = a
    descs[1]["host"] = descs[2]["host"] = "another-host"    # their payloads through actor calls
    coord = Coordinator({"nodes": 3, "frames_per_node": 64, "swap_pages": 64, "page_size": 4096,
                         "policy": "migentry", "payload": "bytes"}, descs, run_id=run)
    coord.forget_paths()
    ray.get([a.forget_path.remote() for a in actors])
    yield coord, actors
    for a in actors:
        ray.kill(a)


def kill(ray, actor) -> None:
    """ray.kill returns before the actor is gone: wait until a call fails."""
    ray.kill(actor)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(actor.payload.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.1)
    raise AssertionError("the actor is still answering")


def call(coord, name, *args, **kw):
    ok, out, _ = coord.call(name, *args, **kw)
    assert ok, out
    return out


def written(coord, node):
    pid = call(coord, "spawn", node)
    addr = call(coord, "mmap", pid, PAGES)
    tokens = call(coord, "touch", pid, addr, PAGES)        # written on its node, through actor calls
    return pid, addr, [addr + i * 4096 for i in range(PAGES)], list(tokens)


def test_a_migration_off_a_dead_node_completes_and_its_pages_count_as_lost(machine, ray_session):
    coord, actors = machine
    pid, addr, addrs, _ = written(coord, 1)
    kill(ray_session, actors[1])
    assert call(coord, "move_pages", pid, addrs[:4], [0] * 4).tolist() == [0] * 4     # no error: contents lost
    assert set(coord.lost_payloads()) == {1}
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [1] * PAGES
    # moved again, the contents are still the lost ones
    assert call(coord, "move_pages", pid, addrs[:2], [2] * 2).tolist() == [2] * 2
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [1] * PAGES
    assert coord.node_lost(1) == {pid: PAGES}


def test_a_migration_between_two_other_hosts_loses_only_the_dead_one(machine, ray_session):
    """Node 2 pulls the rows from node 1 itself; node 1 dead, node 2 is not lost."""
    coord, actors = machine
    pid, addr, addrs, _ = written(coord, 1)
    other, oaddr, _, tokens = written(coord, 2)
    kill(ray_session, actors[1])
    assert call(coord, "move_pages", pid, addrs, [2] * PAGES).tolist() == [2] * PAGES
    assert set(coord.lost_payloads()) == {1}
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [1] * PAGES
    assert coord.resident_nodes(other, oaddr, PAGES).tolist() == [2] * PAGES
    assert list(call(coord, "read_tokens", other, oaddr, PAGES)) == tokens     # node 2's frames still its own


def test_pages_swapped_out_from_a_dead_node_and_back_in_count_as_lost(machine, ray_session):
    coord, actors = machine
    pid, addr, _, _ = written(coord, 1)
    call(coord, "set_mempolicy", pid, "bind", [0])          # its pages come back in on node 0
    kill(ray_session, actors[1])
    assert call(coord, "reclaim", 1, PAGES) == PAGES        # pageout reads the dead node: contents lost
    assert set(coord.lost_payloads()) == {1}
    call(coord, "touch", pid, addr, PAGES, write=False)     # swapped in on node 0
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [1] * PAGES
    assert coord.node_lost(1) == {pid: PAGES}


def test_no_node_lost_no_page_counted_lost(machine):
    coord, _ = machine
    pid, addr, addrs, _ = written(coord, 1)
    call(coord, "move_pages", pid, addrs[:2], [2, 2])
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [2, 2] + [1] * (PAGES - 2)
    assert coord.lost_payloads() == {} and coord.check() is None
