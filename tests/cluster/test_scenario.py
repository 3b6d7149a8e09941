"""Scenario files: parsing, validation, and error messages that name file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from cluster.scenario import ScenarioError, Scenario, load_scenario

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.toml"

GOOD = """\
[machine]
nodes = 2
frames_per_node = 256
swap_pages = 512
policy = "migentry"

[[workload]]
node = 0
pages = 64

[[workload]]
node = 1
processes = 2
pages = 32
shared = true
pattern = "zipf"

[run]
operations = 10
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, **kw) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, machine=False, **kw)
    return info.value


# -- what a valid file gives --------------------------------------------------

def test_defaults_are_filled_in(tmp_path):
    s = load_scenario(write(tmp_path, GOOD), machine=False)
    assert isinstance(s, Scenario)
    w0, w1 = s.workload
    assert (w0.node, w0.processes, w0.pages, w0.shared, w0.pattern) == (0, 1, 64, False, "uniform")
    assert (w0.zipf_s, w0.write_ratio, w0.batch) == (1.2, 0.5, 256)
    assert (w1.processes, w1.shared, w1.pattern) == (2, True, "zipf")
    assert (s.migration.every, s.migration.mode) == (0, "move_pages")
    assert (s.run.operations, s.run.seed) == (10, 0)
    assert s.path == str(tmp_path / "s.toml")


def test_machine_config_is_exactly_the_keys_written(tmp_path):
    s = load_scenario(write(tmp_path, GOOD), machine=False)
    assert s.machine.config() == {"nodes": 2, "frames_per_node": 256, "swap_pages": 512, "policy": "migentry"}


def test_nodes_as_a_list_of_tables(tmp_path):
    text = GOOD.replace("nodes = 2\n", "nodes = [{frames = 64}, {frames = 128}]\n")
    s = load_scenario(write(tmp_path, text), machine=False)
    assert s.machine.config()["nodes"] == [{"frames": 64}, {"frames": 128}]


def test_an_integer_is_accepted_where_a_float_is_expected(tmp_path):
    text = GOOD.replace('pattern = "zipf"', 'pattern = "zipf"\nzipf_s = 2\nwrite_ratio = 1')
    s = load_scenario(write(tmp_path, text), machine=False)
    assert s.workload[1].zipf_s == 2.0 and s.workload[1].write_ratio == 1.0


def test_quickstart_example_is_valid():
    s = load_scenario(QUICKSTART, machine=False)
    assert s.machine.config()["policy"] == "migcache"
    assert s.machine.config()["payload"] == "token"
    assert len(s.workload) == 2 and {w.node for w in s.workload} == {0, 1}
    assert (s.migration.every, s.migration.mode) == (50, "move_pages")
    assert s.run.operations == 2000


def test_the_pressure_example_maps_more_than_the_machine_has():
    s = load_scenario(REPO / "examples" / "pressure.toml")
    frames = sum(fr.nframes for fr in s.take_machine().k.nodes)
    mapped = sum(w.pages * w.processes for w in s.workload if not w.shared) + \
        sum(w.pages for w in s.workload if w.shared)
    assert mapped > frames
    assert s.run.stress and s.migration.mode == "migrate_pages" and s.reclaim.every and s.swapoff.every


def test_the_swap_contention_example_shares_swapped_pages_among_many_forking_processes():
    s = load_scenario(REPO / "examples" / "swap-contention.toml")
    shared = [w for w in s.workload if w.shared]
    assert shared and shared[0].processes * shared[0].threads >= 8 and all(w.fork_every for w in s.workload)
    assert s.run.stress and s.reclaim.every and s.swapoff.every and s.machine.config()["swap_pages"] > 0


# -- errors: <file>: <dotted key>: <problem> -------------------------------------

def test_bad_policy_names_file_key_and_choices(tmp_path):
    path = write(tmp_path, GOOD.replace('"migentry"', '"migrate"'))
    err = error_of(path)
    assert str(err).startswith(f"{path}: machine.policy: must be one of swapcache, migcache, migentry")
    assert "'migrate'" in str(err)
    assert (err.file, err.key) == (str(path), "machine.policy")


def test_fork_every_must_not_be_negative(tmp_path):
    path = write(tmp_path, GOOD.replace('"zipf"', '"zipf"\nfork_every = -1'))
    assert str(error_of(path)).startswith(f"{path}: workload[1].fork_every: must be >= 0")


def test_swapoff_needs_a_swap_device(tmp_path):
    path = write(tmp_path, GOOD.replace("swap_pages = 512", "swap_pages = 0") + "\n[swapoff]\nevery = 10\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == f"{path}: swapoff.every: the machine has no swap device (machine.swap_pages = 0)"


def test_bad_pattern_in_second_workload(tmp_path):
    path = write(tmp_path, GOOD.replace('"zipf"', '"random"'))
    assert str(error_of(path)).startswith(
        f"{path}: workload[1].pattern: must be one of sequential, uniform, zipf")


def test_unknown_keys_are_rejected_everywhere(tmp_path):
    cases = {
        GOOD.replace("swap_pages = 512", "swap_page = 512"): "machine.swap_page: unknown key",
        GOOD.replace("pages = 64", "pages = 64\nthread = 4"): "workload[0].thread: unknown key",
        GOOD + "\n[migrate]\nevery = 5\n": "migrate: unknown key",
        GOOD.replace("operations = 10", "operations = 10\nsteps = 3"): "run.steps: unknown key",
    }
    for text, expected in cases.items():
        path = write(tmp_path, text)
        assert str(error_of(path)) == f"{path}: {expected}"


def test_wrong_types(tmp_path):
    cases = {
        GOOD.replace("frames_per_node = 256", 'frames_per_node = "256"'):
            "machine.frames_per_node: must be an integer, not a string ('256')",
        GOOD.replace("shared = true", "shared = 1"):
            "workload[1].shared: must be true or false, not an integer (1)",
        GOOD.replace("pages = 64", "pages = true"):
            "workload[0].pages: must be an integer, not a boolean (True)",
        GOOD.replace("operations = 10", "operations = 10.5"):
            "run.operations: must be an integer, not a float (10.5)",
        GOOD.replace('pattern = "zipf"', 'pattern = "zipf"\nzipf_s = "big"'):
            "workload[1].zipf_s: must be a number, not a string ('big')",
        GOOD.replace("nodes = 2\n", 'nodes = "two"\n'):
            "machine.nodes: must be an integer or a list of tables like {frames = N}",
        GOOD.replace("nodes = 2\n", "nodes = [{frames = 64}, {frame = 64}]\n"):
            "machine.nodes[1].frames: required key is missing",
    }
    for text, expected in cases.items():
        path = write(tmp_path, text)
        assert str(error_of(path)).splitlines()[0] == f"{path}: {expected}"


def test_every_problem_is_listed_one_per_line(tmp_path):
    text = GOOD.replace("nodes = 2\n", "nodes = [{frames = 64}, {frame = 64}]\n")
    path = write(tmp_path, text)
    lines = str(error_of(path)).splitlines()
    assert lines == [f"{path}: machine.nodes[1].frames: required key is missing",
                     f"{path}: machine.nodes[1].frame: unknown key"]


def test_out_of_range_values(tmp_path):
    cases = {
        GOOD.replace('pattern = "zipf"', 'pattern = "zipf"\nzipf_s = 1.0'):
            "workload[1].zipf_s: must be > 1",
        GOOD.replace('pattern = "zipf"', 'pattern = "zipf"\nwrite_ratio = 1.5'):
            "workload[1].write_ratio: must be <= 1",
        GOOD.replace("processes = 2", "processes = 0"): "workload[1].processes: must be >= 1",
        GOOD.replace("pages = 64", "pages = 0"): "workload[0].pages: must be >= 1",
        GOOD + "\n[migration]\nevery = -1\n": "migration.every: must be >= 0",
        GOOD + '\n[migration]\nmode = "teleport"\n':
            "migration.mode: must be one of move_pages, migrate_pages",
    }
    for text, expected in cases.items():
        path = write(tmp_path, text)
        assert str(error_of(path)).startswith(f"{path}: {expected}")


def test_required_tables_and_keys(tmp_path):
    no_workload = GOOD.split("[[workload]]")[0] + "[run]\noperations = 1\n"
    path = write(tmp_path, no_workload)
    assert str(error_of(path)) == f"{path}: workload: required key is missing"

    path = write(tmp_path, GOOD.replace("[run]\noperations = 10\n", ""))
    assert str(error_of(path)) == f"{path}: run: required key is missing"

    path = write(tmp_path, GOOD.replace("operations = 10", "seed = 3"))
    assert str(error_of(path)) == f"{path}: run.operations: required key is missing"

    path = write(tmp_path, GOOD.replace("node = 0\n", ""))
    assert str(error_of(path)) == f"{path}: workload[0].node: required key is missing"


def test_toml_syntax_error_names_file_and_line(tmp_path):
    text = GOOD.replace("swap_pages = 512", "swap_pages 512")
    path = write(tmp_path, text)
    err = error_of(path)
    line = text.splitlines().index("swap_pages 512") + 1
    assert str(err).startswith(f"{path}: line {line}, column ")
    assert "invalid TOML" in str(err)


def test_toml_duplicate_key_is_a_syntax_error(tmp_path):
    path = write(tmp_path, GOOD.replace("swap_pages = 512", "swap_pages = 512\nswap_pages = 1"))
    assert "invalid TOML" in str(error_of(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    assert str(error_of(path)).startswith(f"{path}: cannot read the file")


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"[machine]\nnodes = \xff\n")
    assert str(error_of(path)).startswith(f"{path}: not UTF-8")


# -- the [machine] table is also validated by the model -------------------------------

def test_machine_values_are_checked_by_the_model(tmp_path):
    path = write(tmp_path, GOOD.replace("nodes = 2\n", "nodes = 2\npage_size = 1000\n"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: machine.page_size: ")
    assert info.value.key == "machine.page_size"


def test_bad_distances_are_checked_by_the_model(tmp_path):
    path = write(tmp_path, GOOD.replace("nodes = 2\n", "nodes = 2\ndistances = [[10, 20]]\n"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: machine.distances: ")


def test_workload_on_a_node_that_does_not_exist(tmp_path):
    path = write(tmp_path, GOOD.replace("node = 1\n", "node = 2\n"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == (f"{path}: workload[1].node: node 2 does not exist "
                               "(the machine has 2 nodes: 0..1)")


def test_valid_file_builds_its_machine_once(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    m = s.take_machine()
    assert (m.nr_nodes, m.policy, m.payload, m.page_size) == (2, "migentry", "token", 4096)
    assert [row["frames"] for row in m.node_info()] == [256, 256]
    assert m.swap_info()["slots"] == 512
    m2 = s.take_machine()
    assert m2 is not m and m2.nr_nodes == 2


# -- --set KEY=VALUE ------------------------------------------------------------

def test_overrides_change_values_of_every_kind_and_are_recorded(tmp_path):
    sets = ("machine.policy=migcache", "run.operations=25", "workload.1.pattern=sequential",
            "workload.0.write_ratio=0.25", "reclaim.every=5", 'machine.payload="bytes"', "run.stress=true")
    s = load_scenario(write(tmp_path, GOOD), machine=False, overrides=sets)
    assert (s.machine.policy, s.run.operations, s.workload[1].pattern) == ("migcache", 25, "sequential")
    assert (s.workload[0].write_ratio, s.reclaim.every, s.machine.payload, s.run.stress) == (0.25, 5, "bytes", True)
    assert s.overrides == sets
    assert load_scenario(write(tmp_path, GOOD), machine=False).overrides == ()


@pytest.mark.parametrize("item, expected", [
    ("machine.policy=lru", "machine.policy: must be one of swapcache, migcache, migentry (got 'lru') "
                           "(with --set machine.policy=lru)"),
    ("run.operations=many", "run.operations: must be an integer, not a string ('many') (with --set run.operations=many)"),
    ("workload.2.pages=8", "--set workload.2.pages=8: workload.2: no such entry (workload has 2: 0..1)"),
    ("workload.pages=8", "--set workload.pages=8: workload.pages: no such entry (workload has 2: 0..1)"),
    ("workload.0=8", "--set workload.0=8: workload.0 is a table: set a key of it (workload.0.KEY)"),
    ("run.operations.x=1", "--set run.operations.x=1: run.operations is a value, not a table"),
    ("run.operations", "--set run.operations: expected KEY=VALUE"),
    ("machine.colour=1", "machine.colour: unknown key (with --set machine.colour=1)"),
])
def test_a_bad_override_names_itself(tmp_path, item, expected):
    path = write(tmp_path, GOOD)
    err = error_of(path, overrides=(item,))
    assert str(err).startswith(f"{path}: {expected}"), str(err)


@pytest.mark.parametrize("item, expected", [
    ("workload.\u00b2.pages=5", "--set workload.\u00b2.pages=5: workload.\u00b2: no such entry (workload has 2: 0..1)"),
    ("workload.\u0663.pages=5", "--set workload.\u0663.pages=5: workload.\u0663: no such entry (workload has 2: 0..1)"),
    (".=x", "--set .=x: .: a dotted key has an empty part (for example machine.policy)"),
    ("machine..policy=lru", "--set machine..policy=lru: machine..policy: a dotted key has an empty part "
                            "(for example machine.policy)"),
    ("machine.distances.0.0=5", "--set machine.distances.0.0=5: machine.distances: not in the file, so it has "
                                "no entry 0 to set (set it whole: machine.distances=[...])"),
    ("run.seed=-1", "run.seed: must be >= 0 (got -1) (with --set run.seed=-1)"),
])
def test_more_bad_overrides_name_themselves(tmp_path, item, expected):
    path = write(tmp_path, GOOD)
    err = error_of(path, overrides=(item,))
    assert str(err) == f"{path}: {expected}"


def test_an_override_is_named_only_where_it_changed_the_key_at_fault(tmp_path):
    path = write(tmp_path, GOOD.replace('policy = "migentry"', 'policy = "lru"'))
    err = error_of(path, overrides=("machine.seed=1", "run.operations=5"))
    assert str(err) == f"{path}: machine.policy: must be one of swapcache, migcache, migentry (got 'lru')"
    # two problems, each with the --set that made it
    err = error_of(write(tmp_path, GOOD), overrides=("machine.policy=lru", "run.seed=-1", "workload.0.pages=5"))
    assert str(err).splitlines() == [
        f"{path}: machine.policy: must be one of swapcache, migcache, migentry (got 'lru') "
        "(with --set machine.policy=lru)",
        f"{path}: run.seed: must be >= 0 (got -1) (with --set run.seed=-1)"]
    # a problem of the machine the file and an override make together names the override
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, GOOD), overrides=("machine.nodes=1", "run.operations=5"))
    assert str(info.value) == (f"{path}: workload[1].node: node 1 does not exist (the machine has 1 nodes: 0..0) "
                               "(with --set machine.nodes=1)")


DISTANCES = GOOD.replace('policy = "migentry"', 'policy = "migentry"\ndistances = [[10, 20], [20, 10]]')


def test_an_override_sets_an_entry_of_an_array_of_arrays(tmp_path):
    path = write(tmp_path, DISTANCES)
    s = load_scenario(path, overrides=("machine.distances.0.1=30", "machine.distances.1.0=30"))
    assert s.machine.distances == [[10, 30], [30, 10]]
    assert s.take_machine().topology.distances == ((10, 30), (30, 10))
    s = load_scenario(path, overrides=("machine.distances=[[10, 40], [40, 10]]",))
    assert s.machine.distances == [[10, 40], [40, 10]]
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides=("machine.distances.0.0=5",))
    assert str(info.value) == (f"{path}: machine.distances[0][0]: local distance must be 10, got 5 "
                               "(with --set machine.distances.0.0=5)")
    assert str(error_of(path, overrides=("machine.distances.2.0=5",))) == (
        f"{path}: --set machine.distances.2.0=5: machine.distances.2: no such entry "
        "(machine.distances has 2: 0..1)")
    assert str(error_of(path, overrides=("machine.distances.0.0.1=5",))) == (
        f"{path}: --set machine.distances.0.0.1=5: machine.distances.0.0 is a value, not a table")


def test_a_key_toml_quotes_is_shown_quoted(tmp_path):
    path = write(tmp_path, '"" = 1\n"a.b" = 2\n' + GOOD)
    assert str(error_of(path)).splitlines() == [f'{path}: "": unknown key', f'{path}: "a.b": unknown key']


# -- bounds the model needs, checked when the file is loaded -----------------------

def test_the_run_seed_is_a_non_negative_64_bit_integer(tmp_path):
    path = write(tmp_path, GOOD.replace("operations = 10", "operations = 10\nseed = -1"))
    assert str(error_of(path)) == f"{path}: run.seed: must be >= 0 (got -1)"
    top = (1 << 63) - 1
    assert load_scenario(write(tmp_path, GOOD), machine=False, overrides=(f"run.seed={top}",)).run.seed == top


def test_workload_pages_stop_where_the_models_address_space_does(tmp_path):
    """A process maps its pages from vpn MMAP_BASE_VPN, and the model's mmap
    refuses a mapping that reaches vpn 2**31 (ENOMEM): one page more than
    MAX_WORKLOAD_PAGES is refused at load time, naming the key."""
    import errno

    from emulator import Machine
    from emulator.mm import MMAP_BASE_VPN

    from cluster.scenario import MAX_WORKLOAD_PAGES

    assert MAX_WORKLOAD_PAGES == (1 << 31) - MMAP_BASE_VPN - 1
    m = Machine.from_config({})
    with pytest.raises(OSError) as info:
        m.mmap(m.spawn(), MAX_WORKLOAD_PAGES + 1)
    assert info.value.errno == errno.ENOMEM
    path = write(tmp_path, GOOD)
    err = error_of(path, overrides=(f"workload.1.pages={MAX_WORKLOAD_PAGES + 1}",))
    assert str(err) == (f"{path}: workload[1].pages: must be <= {MAX_WORKLOAD_PAGES} (got {MAX_WORKLOAD_PAGES + 1}) "
                        f"(with --set workload.1.pages={MAX_WORKLOAD_PAGES + 1})")
    s = load_scenario(path, machine=False, overrides=(f"workload.1.pages={MAX_WORKLOAD_PAGES}",))
    assert s.workload[1].pages == MAX_WORKLOAD_PAGES


def test_the_memory_estimate_is_what_the_machine_allocates():
    """memory_estimate's machine parts are the bytes of the arrays a built
    machine holds (frame tables, swap device), for both payloads."""
    from emulator import Machine, Topology

    from cluster.scenario import memory_estimate

    def array_bytes(obj) -> int:
        return sum(a.nbytes for a in vars(obj).values() if isinstance(a, np.ndarray))

    for cfg in ({"nodes": 3, "frames_per_node": 500, "swap_pages": 700},
                {"nodes": [{"frames": 100}, {"frames": 300}], "swap_pages": 50, "payload": "bytes",
                 "page_size": 1024}):
        topo = Topology.from_config(cfg)
        m = Machine(topo)
        parts = {keys[0]: n for n, _, keys in memory_estimate(topo)}
        assert set(parts) == {"machine.swap_pages", "machine.frames_per_node" if "frames_per_node" in cfg
                              else "machine.nodes"}
        frames = sum(array_bytes(fr) for fr in m.k.nodes)
        assert abs(parts.pop("machine.swap_pages") - array_bytes(m.k.swap)) <= 64
        assert abs(parts.popitem()[1] - frames) <= 64 * len(m.k.nodes)
