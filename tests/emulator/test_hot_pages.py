"""Machine.hot_pages: the most recently accessed resident pages first."""
from __future__ import annotations

from emulator import Machine


def test_latest_touched_first_and_the_target_node_left_out():
    m = Machine.from_config({"nodes": 2, "frames_per_node": 256, "swap_pages": 64})
    pid = m.spawn(node=0)
    a = m.mmap(pid, 40)
    ps = m.page_size
    m.touch(pid, a, 40)                       # all 40 at one tick
    m.touch(pid, a + 30 * ps, 5)              # pages 30..34 later
    m.touch(pid, a + 10 * ps, 3)              # pages 10..12 latest
    hot = m.hot_pages(pid, 8)
    assert [(x - a) // ps for x in hot] == [10, 11, 12, 30, 31, 32, 33, 34]
    assert m.move_pages(pid, hot[:3], [1, 1, 1]) == [1, 1, 1]
    hot = m.hot_pages(pid, 4, exclude_node=1)  # already on node 1: not hot candidates for it
    assert [(x - a) // ps for x in hot] == [30, 31, 32, 33]
    m.reclaim(0, 64)                           # swapped out: not resident, not listed
    assert all(m.move_pages(pid, [x], None)[0] >= 0 for x in m.hot_pages(pid, 40))
