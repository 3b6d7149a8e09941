"""The same-host channel to the coordinator (cluster/channel.py), without Ray:
what a call carries, how failures reach the caller, and that an interrupted
call never hands its late reply to the next one."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cluster import channel

pytestmark = pytest.mark.skipif(not channel.available(), reason="abstract Unix sockets are Linux's")
REPO = Path(__file__).resolve().parents[2]


def echo(name, *args, **kw):
    if name == "boom":
        raise KeyError("no such thing")
    return [name, list(args), kw]


@pytest.fixture
def server():
    s = channel.Server(echo)
    yield s
    s.close()


def test_a_call_carries_arrays_scalars_and_containers(server):
    c = channel.Client(server.name)
    pages = np.arange(4096, dtype=np.int64) * 4096
    rows = np.arange(24, dtype=np.uint8).reshape(3, 8)
    name, args, kw = c.call("move_pages", 7, pages, rows[:, ::2], np.int64(3), (1, 2), b"\x00\xff", None,
                            write=True, _fill=np.int32(-1), info={5: "five"})
    assert name == "move_pages"
    np.testing.assert_array_equal(args[1], pages)
    assert args[1].dtype == np.int64
    np.testing.assert_array_equal(args[2], rows[:, ::2])        # a strided view arrives contiguous
    assert not args[1].flags.writeable                          # read-only, as from Ray
    assert args[0] == 7 and args[3] == 3 and type(args[3]) is int
    assert args[4] == [1, 2] and args[5] == b"\x00\xff" and args[6] is None
    assert kw == {"write": True, "_fill": -1, "info": {5: "five"}}


def test_a_failing_call_raises_in_the_caller_and_the_connection_goes_on(server):
    c = channel.Client(server.name)
    with pytest.raises(RuntimeError, match="KeyError: 'no such thing'") as exc:
        c.call("boom")
    assert not isinstance(exc.value, OSError)       # OSError is the emulated syscalls' errors only
    assert c.call("again")[0] == "again"


def test_what_cannot_be_sent_is_named_and_nothing_is_half_sent(server):
    c = channel.Client(server.name)
    with pytest.raises(TypeError, match="cannot send object"):
        c.call("touch", object())
    assert c.call("touch", 1)[1] == [1]


def test_each_thread_has_its_own_connection(server):
    c = channel.Client(server.name)
    out = {}

    def caller(i):
        out[i] = [c.call("t", i, j)[1] for j in range(50)]

    ts = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert out == {i: [[i, j] for j in range(50)] for i in range(4)}


def test_an_interrupted_call_does_not_hand_its_late_reply_to_the_next():
    release = threading.Event()

    def slow(name, *args, **kw):
        if name == "slow":
            release.wait()
        return name

    s = channel.Server(slow)
    try:
        c = channel.Client(s.name)
        assert c.call("first") == "first"
        c.local.sock.settimeout(0.2)            # the caller gives up while the call runs
        with pytest.raises(channel.CoordinatorGone):
            c.call("slow")
        release.set()                           # its reply now goes to a closed connection
        assert c.call("next") == "next"         # not "slow"
    finally:
        s.close()


def test_a_coordinator_that_dies_is_coordinator_gone_not_an_oserror(tmp_path):
    code = ("import sys, threading; sys.path.insert(0, %r)\n"
            "from cluster import channel\n"
            "s = channel.Server(lambda name, *a, **k: name)\n"
            "print(s.name[1:], flush=True)\n"
            "threading.Event().wait()\n") % str(REPO)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        c = channel.Client("\0" + proc.stdout.readline().strip())
        assert c.call("ping") == "ping"
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(channel.CoordinatorGone) as exc:
        c.call("ping")
    assert not isinstance(exc.value, OSError)
    with pytest.raises(channel.CoordinatorGone):        # a new connection finds no one either
        c.call("ping")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_another_users_process_cannot_call(server):
    code = ("import os, sys; sys.path.insert(0, %r)\n"
            "from cluster import channel\n"
            "os.setgid(65534); os.setuid(65534)       # after the imports: nobody cannot read /root\n"
            "try:\n"
            "    channel.Client(%r).call('swapoff')\n"
            "except channel.CoordinatorGone as e:\n"
            "    print('refused', e)\n") % (str(REPO), server.name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused"), out.stdout + out.stderr
    assert channel.Client(server.name).call("mine")[0] == "mine"      # its own user's calls go on
