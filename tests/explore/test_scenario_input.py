"""A race-scenario TOML with a bad value is refused at load, naming the file,
the key and the problem: never a traceback, never a value taken for what it
is not (a "no" string is not false, true is not 1), never a failure or a
violation met later, at explore time."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emulator import races
from emulator.races import ScenarioError, load

ROOT = Path(__file__).resolve().parents[2]
MACHINE = "[machine]\nnodes = 2\nframes_per_node = 8\nswap_pages = 4\n"
PROC = "[[process]]\nmappings = [{pages = 2}]\n"
TASK = "[[task]]\nops = [{op = 'swapoff'}]\n"


def write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


BAD = [
    (MACHINE + "[[process]]\nmappings = 5\n" + TASK, "process[0].mappings: must be a list"),
    (MACHINE + "[[process]]\nmappings = [5]\n" + TASK, "process[0].mappings[0]: needs pages"),
    ("process = 5\n" + MACHINE + TASK, "process: must be an array of tables"),
    (MACHINE + "[[process]]\nnode = 7\nmappings = [{pages = 2}]\n" + TASK, "process[0].node: must be in 0..1, got 7"),
    (MACHINE + "[[process]]\nnode = true\n" + TASK, "process[0].node: must be an integer, got True"),
    (MACHINE + "[[process]]\nmappings = [{pages = true}]\n" + TASK,
     "process[0].mappings[0].pages: must be an integer, got True"),
    (MACHINE + "[[process]]\nmappings = [{pages = 2, shared = 'no'}]\n" + TASK,
     "process[0].mappings[0].shared: must be true or false, got 'no'"),
    (MACHINE + "[[process]]\nmappings = [{pages = 2, touched = 'no'}]\n" + TASK,
     "process[0].mappings[0].touched: must be true or false, got 'no'"),
    (MACHINE + "[[process]]\nmappings = [{pages = 2, touched = 0}]\n" + TASK,
     "process[0].mappings[0].touched: must be true or false, got 0"),
    (MACHINE + "[[task]]\nops = [{op = ['fault']}]\n", "task[0].ops[0].op: unknown operation ['fault']"),
    (MACHINE + "[[task]]\nops = [{op = {a = 1}}]\n", "task[0].ops[0].op: unknown operation {'a': 1}"),
    (MACHINE + PROC + "[[task]]\nops = [{op = 'fault', pid = 1, page = 0, write = 'yes'}]\n",
     "task[0].ops[0].write: must be true or false"),
    (MACHINE + PROC + "[[task]]\nops = [{op = 'fault', pid = 1, page = true}]\n",
     "task[0].ops[0].page: must be an integer, got True"),
    (MACHINE + PROC + "[[task]]\nops = [{op = 'migrate_pages', pid = 1, from = [0, true], to = [1]}]\n",
     "task[0].ops[0].from[1]: must be an integer, got True"),
    (MACHINE + TASK + "[expect]\nmay_fail = ['errorcode']\n", "expect.may_fail: 'errorcode' is not an errno name"),
    (MACHINE + TASK + "[expect]\nmay_fail = ['__name__']\n", "expect.may_fail: '__name__' is not an errno name"),
    (MACHINE + TASK + "[expect]\nmay_fail = [['ENOMEM']]\n", "expect.may_fail: ['ENOMEM'] is not an errno name"),
    (MACHINE + TASK + "[expect]\nmay_fail = 'ENOMEM'\n", "expect.may_fail: must be a list of errno names"),
    ("description = {a = 1}\n" + MACHINE + TASK, "description: must be a string, got {'a': 1}"),
    (MACHINE + "[[task]]\nname = {a = 1}\nops = [{op = 'swapoff'}]\n", "task[0].name: must be a string"),
    ("setup = 5\n" + MACHINE + TASK, "setup: must be an array of tables"),
    ("task = 5\n" + MACHINE, "task: must be an array of tables"),
    # an int64 the model cannot hold is refused at load, not met as a 'violation' when explored
    (MACHINE + PROC + "[[task]]\nops = [{op = 'move_pages', pid = 1, pages = [0], node = 9223372036854775808}]\n",
     "task[0].ops[0].node: must be a 64-bit integer, got 9223372036854775808"),
    (MACHINE + PROC + "[[task]]\nops = [{op = 'move_pages', pid = 1, pages = [18446744073709551615], node = 1}]\n",
     "task[0].ops[0].pages[0]: must be a 64-bit integer"),
    (MACHINE + PROC + "[[task]]\nops = [{op = 'move_pages', pid = 1, pages = [9223372036854775807], node = 1}]\n",
     "task[0].ops[0].pages: outside mapping 0 of process 1 and its address space: page 9223372036854775807"),
    # a fork child's mapping is no larger than the largest mapping there is
    (MACHINE + PROC + "[[task]]\nops = [{op = 'fork', pid = 1}, {op = 'fault', pid = 2, page = 0, "
     "npages = 4611686018427387904}]\n", "task[0].ops[1].page: outside mapping 0 of process 2 (pages 0..1)"),
    (MACHINE + PROC + "[[task]]\nops = [{op = 'reclaim', node = 0, pages = -1}]\n",
     "task[0].ops[0].pages: must be at least 0, got -1"),
]


@pytest.mark.parametrize("text, key", BAD, ids=[k.split(":")[0] + f"-{i}" for i, (_, k) in enumerate(BAD)])
def test_a_bad_value_is_refused_at_load_naming_the_key(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}: ") and key in str(e.value), str(e.value)


@pytest.mark.parametrize("i", [0, 3, 6, 9, 10, 14, 19, 22])
def test_the_cli_exits_2_with_the_key_and_no_traceback(tmp_path, i):
    text, key = BAD[i]
    p = write(tmp_path, text)
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "explore", str(p), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith(f"error: {p}: ") and key in r.stderr, r.stderr


@pytest.fixture
def no_allocation(monkeypatch):
    """A size check that let a huge machine through would try to allocate it:
    fail at once instead of exhausting the test machine's memory."""
    def refuse(cfg, bugs=()):
        raise AssertionError(f"a machine was built from {cfg}")
    monkeypatch.setattr(races.Machine, "from_config", refuse)


@pytest.mark.parametrize("machine, key", [
    ("nodes = 64\nframes_per_node = 2147483648", "machine.frames_per_node: 137438953472 frames in all"),
    ("nodes = [{frames = 1048576}, {frames = 1}]", "machine.nodes: 1048577 frames in all"),
    ("swap_pages = 1099511627776", "machine.swap_pages: 1099511627776; a race scenario's machine has at most"),
    ("nodes = 2\nframes_per_node = 4\npayload = 'bytes'\npage_size = 1073741824", "machine.page_size: 8 frames"),
])
def test_a_machine_too_large_to_explore_is_refused_before_it_is_built(tmp_path, no_allocation, machine, key):
    p = write(tmp_path, f"[machine]\n{machine}\n" + TASK)
    with pytest.raises(ScenarioError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}: ") and key in str(e.value), str(e.value)


def test_mapped_pages_are_bounded_in_all(tmp_path, no_allocation):
    p = write(tmp_path, MACHINE + "[[process]]\nmappings = [{pages = 1048576, touched = false}]\n"
              "[[process]]\nmappings = [{pages = 8, touched = false}]\n" + TASK)
    with pytest.raises(ScenarioError, match=r"process: 1048584 pages mapped in all; a race scenario maps at most"):
        load(p)


def test_running_out_of_memory_building_the_state_is_a_scenario_error(tmp_path, monkeypatch):
    def oom(cfg, bugs=()):
        raise MemoryError
    monkeypatch.setattr(races.Machine, "from_config", oom)
    p = write(tmp_path, MACHINE + TASK)
    with pytest.raises(ScenarioError, match=r"bad.toml: machine: the starting state does not fit in memory"):
        load(p)


def test_flags_and_errno_names_that_are_right_still_load(tmp_path):
    """The checks refuse what is wrong only: true/false, errno names and a
    shared, untouched mapping build as they say."""
    p = write(tmp_path, MACHINE + "[[process]]\nnode = 1\nmappings = [{pages = 2, shared = true, touched = false}]\n"
              "[[task]]\nname = 'A'\nops = [{op = 'fault', pid = 1, page = 0, write = true}]\n"
              "[expect]\nmay_fail = ['ENOMEM', 'ESRCH']\n")
    sc = load(p)
    w = sc.fresh()
    vma = w.m.k.mms[1].vmas[0]
    assert vma.shared and not vma.pte.any() and w.m.k.mms[1].node == 1
    assert sc.tasks[0].name == "A" and sc.may_fail == {12, 3}
