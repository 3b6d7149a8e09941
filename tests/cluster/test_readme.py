"""The README documents what works: its commands, its API tour, its key tables."""

from __future__ import annotations

import re
from pathlib import Path

from cluster.scenario import MachineSpec, MigrationSpec, ReclaimSpec, RunSpec, WorkloadSpec

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_commands():
    lines = [line for line in README.splitlines() if line.strip()]
    assert lines[0] == "# numaemu"
    assert lines[2:6] == [
        "```sh",
        "pip install -e '.[test]' && numaemu run examples/quickstart.toml",
        "python -m pytest -q",
        "```",
    ]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci
    assert "pip install -e '.[test]'" in ci


def test_every_scenario_key_is_documented():
    for table, model in (("machine", MachineSpec), ("workload", WorkloadSpec),
                         ("migration", MigrationSpec), ("reclaim", ReclaimSpec), ("run", RunSpec)):
        section = README.split(f"`[{table}]`" if table != "workload" else "`[[workload]]`", 1)[1]
        rows = re.findall(r"^\| `(\w+)` \|", section.split("\n\n`[", 1)[0], flags=re.M)
        assert rows == list(model.model_fields), table


def test_python_tour_runs():
    (tour,) = [b for b in blocks("python") if "Machine.from_config" in b]
    exec(compile(tour, "README.md", "exec"), {})


def test_documented_machine_defaults_are_the_models():
    from emulator import Machine

    section = README.split("`[machine]`", 1)[1].split("\n\n`[", 1)[0]
    documented = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, flags=re.M))
    m = Machine.from_config({})
    actual = {
        "nodes": str(m.nr_nodes),
        "frames_per_node": str(m.node_info()[0]["frames"]),
        "swap_pages": str(m.swap_info()["slots"]),
        "page_size": str(m.page_size),
        "policy": f'"{m.policy}"',
        "payload": f'"{m.payload}"',
    }
    for key, value in actual.items():
        assert documented[key] == value, key


def test_documented_vmstat_counters_are_the_models():
    from emulator import Machine

    section = README.split("## vmstat counters", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", section)) - {"m", "vmstat"}
    assert documented == set(Machine.from_config({}).vmstat())
