"""A node actor on another host that dies while the coordinator reaches its
payload (cluster/dataplane.py RemoteRows): the call in progress completes
on frames whose contents are lost instead of failing half done, and pages
whose contents were on the dead node count as lost with it wherever they go
afterwards (a migration, a swap-out and -in), not as data read back wrong. The coordinator runs in this process (the session's
Ray, one host); node actor 1's payload is reached as another host's is."""
from __future__ import annotations

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
    actors = [Node.options(num_cpus=0).remote(i, 64, 4096, "bytes", run) for i in range(2)]
    descs = ray.get([a.payload.remote() for a in actors])
    for d, a in zip(descs, actors):
        d["handle"] = a
    descs[1]["host"] = "another-host"       # its payload through actor calls, as across hosts
    coord = Coordinator({"nodes": 2, "frames_per_node": 64, "swap_pages": 64, "page_size": 4096,
                         "policy": "migentry", "payload": "bytes"}, descs, run_id=run)
    coord.forget_paths()
    ray.get([a.forget_path.remote() for a in actors])
    yield coord, actors
    for a in actors:
        ray.kill(a)


def call(coord, name, *args, **kw):
    ok, out, _ = coord.call(name, *args, **kw)
    assert ok, out
    return out


def test_a_migration_off_a_dead_node_completes_and_its_pages_count_as_lost(machine, ray_session):
    coord, actors = machine
    pid = call(coord, "spawn", 1)
    addr = call(coord, "mmap", pid, PAGES)
    call(coord, "touch", pid, addr, PAGES)                 # written on node 1, through actor calls
    addrs = [addr + i * 4096 for i in range(PAGES)]
    ray_session.kill(actors[1])
    assert call(coord, "move_pages", pid, addrs[:4], [0] * 4).tolist() == [0] * 4     # no error: contents lost
    assert set(coord.payload_lost) == {1}
    where = coord.resident_nodes(pid, addr, PAGES)
    assert where.tolist() == [1] * PAGES        # the moved pages' contents came from node 1: lost with it
    # a later migration carries the loss on (the contents are the same lost ones)
    assert call(coord, "move_pages", pid, addrs[:2], [1] * 2).tolist() == [1] * 2
    assert call(coord, "move_pages", pid, addrs[:2], [0] * 2).tolist() == [0] * 2
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [1] * PAGES
    assert coord.node_lost(1) == {pid: PAGES}


def test_pages_swapped_out_from_a_dead_node_and_back_in_count_as_lost(machine, ray_session):
    coord, actors = machine
    pid = call(coord, "spawn", 1)
    addr = call(coord, "mmap", pid, PAGES)
    call(coord, "touch", pid, addr, PAGES)
    call(coord, "set_mempolicy", pid, "bind", [0])          # its pages come back in on node 0
    ray_session.kill(actors[1])
    assert call(coord, "reclaim", 1, PAGES) == PAGES        # pageout reads the dead node: contents lost
    assert set(coord.payload_lost) == {1}
    call(coord, "touch", pid, addr, PAGES, write=False)     # swapped in on node 0
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [1] * PAGES
    assert coord.node_lost(1) == {pid: PAGES}


def test_no_node_lost_no_page_counted_lost(machine):
    coord, _ = machine
    pid = call(coord, "spawn", 1)
    addr = call(coord, "mmap", pid, PAGES)
    call(coord, "touch", pid, addr, PAGES)
    call(coord, "move_pages", pid, [addr, addr + 4096], [0, 0])
    assert coord.resident_nodes(pid, addr, PAGES).tolist() == [0, 0] + [1] * (PAGES - 2)
    assert coord.payload_lost == {} and coord.check() is None
