"""numaemu explore / replay as a user runs them."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from emulator import BUGS

ROOT = Path(__file__).resolve().parents[2]


def numaemu(*args):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_list_bugs_one_per_line():
    r = numaemu("explore", "--list-bugs")
    assert r.returncode == 0
    assert r.stdout.split() == list(BUGS)


def test_violation_exit_1_with_trace_and_token_that_replays():
    r = numaemu("explore", "examples/races/r1-no-pte-recheck.toml", "--bug", "r1-no-pte-recheck", "--quiet")
    assert r.returncode == 1, r.stderr
    assert "VIOLATION of invariant" in r.stdout and "step trace" in r.stdout
    token = re.search(r"numaemu replay (\S+)", r.stdout).group(1)
    again = numaemu("replay", token)
    assert again.returncode == 1
    first = r.stdout[r.stdout.index("VIOLATION"):]
    assert again.stdout.strip() == first.strip()


def test_a_token_replays_from_elsewhere_given_its_scenario(tmp_path):
    """A token names the file as explore was given it: from another directory
    replay says so, and --scenario points it at the file (the same one: its
    digest is checked)."""
    r = numaemu("explore", "examples/races/r1-no-pte-recheck.toml", "--bug", "r1-no-pte-recheck", "--quiet")
    token = re.search(r"numaemu replay (\S+)", r.stdout).group(1)

    def replay(*args):
        return subprocess.run([sys.executable, "-m", "cluster.cli", "replay", token, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT)})
    lost = replay()
    assert lost.returncode == 2 and "not found from" in lost.stderr and "--scenario" in lost.stderr
    found = replay("--scenario", str(ROOT / "examples/races/r1-no-pte-recheck.toml"))
    assert found.returncode == 1 and "VIOLATION of invariant" in found.stdout, found.stderr
    other = replay("--scenario", str(ROOT / "examples/races/r2-anon-vma-not-pinned.toml"))
    assert other.returncode == 2 and "is not the scenario the token was made on" in other.stderr


def test_clean_exit_0_with_summary():
    r = numaemu("explore", "examples/races/r2-anon-vma-not-pinned.toml", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no violation (search complete within the bound)" in r.stdout
    assert re.search(r"explored \d+ schedules", r.stdout)


def test_bad_input_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[machine]\nnodes = 0\n[[task]]\nops=[{op='swapon'}]\n")
    summary = tmp_path / "summary.json"
    summary.write_text("{}")
    for args in (["explore", str(bad)], ["explore", f"{summary}#4"], ["explore", "examples/races/r1-no-pte-recheck.toml", "--bug", "nope"],
                 ["replay", "nx1-garbage"], ["explore"]):
        r = numaemu(*args)
        assert r.returncode == 2, args
        assert "Traceback" not in r.stderr and r.stderr.startswith("error:"), r.stderr
    assert "is not one" in numaemu("explore", f"{summary}#4").stderr    # not "No such file"


def test_random_modes_do_not_claim_distinct_states():
    r = numaemu("explore", "examples/races/r2-anon-vma-not-pinned.toml", "--mode", "random", "--schedules", "20",
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert re.search(r"explored 20 schedules in ", r.stdout) and "distinct states" not in r.stdout


def _token(body) -> str:
    """A token made by hand: the encoding make_token uses, around any body."""
    import base64
    import zlib

    import msgpack
    return "nx1-" + base64.urlsafe_b64encode(zlib.compress(msgpack.packb(body, use_bin_type=True), 9)).decode()


def test_a_hand_made_token_with_a_field_of_the_wrong_type_exits_2_naming_it():
    """A path that is None or a list was an AttributeError, bugs [[1]] an
    unhashable TypeError, a schedule that is a list or a string replayed as if
    it were one: each is now 'replay token: ... <field> ...', exit 2."""
    from emulator.races import load
    r1 = "examples/races/r1-no-pte-recheck.toml"
    digest = load(ROOT / r1).digest     # right, so that only the field at fault is wrong
    for body, field in (([1, None, digest, [], b"\x00"], "path must be a string"),
                        ([1, [1], digest, [], b"\x00"], "path must be a string"),
                        ([1, "", digest, [], b"\x00"], "path must be a string"),
                        ([1, r1, 5, [], b"\x00"], "digest must be a string"),
                        ([1, r1, digest, [[1]], b"\x00"], "bugs must be a list of bug injection names"),
                        ([1, r1, digest, "r1-no-pte-recheck", b"\x00"], "bugs must be a list of bug injection names"),
                        ([1, r1, digest, ["nope"], b"\x00"], "bugs: unknown bug injection 'nope'"),
                        ([1, r1, digest, [], [0, 1]], "schedule must be bytes"),
                        ([1, r1, digest, [], "ab"], "schedule must be bytes"),
                        ([True, r1, digest, [], b"\x00"], "corrupted (not [1, path, digest, bugs, schedule])"),
                        ({"path": r1}, "corrupted (not [1, path, digest, bugs, schedule])")):
        r = numaemu("replay", _token(body))
        assert r.returncode == 2, (body, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: replay token: ") and field in r.stderr, \
            (body, r.stderr)
    # the same fields right: the token replays
    ok = numaemu("replay", _token([1, r1, digest, ["r1-no-pte-recheck"], b"\x00"]))
    assert ok.returncode in (0, 1) and "Traceback" not in ok.stderr, ok.stderr
