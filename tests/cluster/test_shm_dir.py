"""Where the shared files go (--shm-dir, $NUMAEMU_SHM_DIR, /dev/shm), and
whether their tmpfs gives the payloads huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cluster import dataplane
from cluster.cli import _ray_opts, main
from cluster.dataplane import SHM_DIR_ENV, attach_payload, create_payload, shm_dir, shm_huge
from cluster.runner_ray import RayRun, RunnerError
from cluster.report import payload_dirs, print_summary
from cluster.scenario import load_scenario

from test_cli import runner
from test_ray_runtime import scenario


def test_the_directory_given_wins_over_the_environment_which_wins_over_dev_shm(tmp_path, monkeypatch):
    given, env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    env.mkdir()
    monkeypatch.delenv(SHM_DIR_ENV, raising=False)
    default = shm_dir()
    assert default in (Path("/dev/shm"), Path(os.environ.get("TMPDIR", "/tmp")))
    monkeypatch.setenv(SHM_DIR_ENV, str(env))
    assert shm_dir() == env
    assert shm_dir(str(given)) == given


def test_a_directory_that_is_missing_or_not_writable_is_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=f"{tmp_path / 'nope'}: no such directory"):
        shm_dir(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="file: not a directory"):
        shm_dir(str(tmp_path / "file"))
    monkeypatch.setenv(SHM_DIR_ENV, str(tmp_path / "gone"))
    with pytest.raises(ValueError, match="gone: no such directory"):
        shm_dir()
    if os.geteuid() != 0:           # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ValueError, match="ro: not writable"):
            shm_dir(str(ro))


def _mountinfo(tmp_path: Path, monkeypatch, lines: list[str], shmem_enabled: str = "always within_size "
               "advise [never] deny force") -> None:
    """The mount table and shmem_enabled shm_fs reads, as given."""
    (tmp_path / "mountinfo").write_text("".join(f"{line}\n" for line in lines))
    (tmp_path / "shmem_enabled").write_text(shmem_enabled + "\n")
    monkeypatch.setattr(dataplane, "MOUNTINFO", tmp_path / "mountinfo")
    monkeypatch.setattr(dataplane, "SHMEM_ENABLED", tmp_path / "shmem_enabled")


def _dev(d: Path) -> str:
    st = os.stat(d)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def test_the_mount_is_found_by_device_number_whatever_its_name(tmp_path, monkeypatch):
    here = _dev(tmp_path)
    other = "0:9999" if here != "0:9999" else "0:9998"
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    _mountinfo(tmp_path, monkeypatch, [
        f"25 24 {other} / {tmp_path} rw,relatime - tmpfs tmpfs rw,size=64k,huge=never",   # hidden by the next
        f"30 25 {here} / {tmp_path} rw,relatime - tmpfs tmpfs rw,size=64k,huge=within_size",
        f"31 25 {other} / /mnt/a\\040b rw - tmpfs tmpfs rw,huge=always",     # an escaped name: skipped, not misread
    ])
    assert dataplane.shm_fs(tmp_path) == ("tmpfs", "within_size")
    assert dataplane.shm_fs(tmp_path / "link") == ("tmpfs", "within_size")
    assert shm_huge(tmp_path) == "within_size"


def test_a_tmpfs_without_huge_is_never_and_a_disk_is_no_tmpfs(tmp_path, monkeypatch):
    here = _dev(tmp_path)
    _mountinfo(tmp_path, monkeypatch, [f"30 25 {here} / /x rw - tmpfs tmpfs rw,size=64k"])
    assert dataplane.shm_fs(tmp_path) == ("tmpfs", "never")
    _mountinfo(tmp_path, monkeypatch, [f"30 25 {here} / /x rw - ext4 /dev/vdb rw"])
    assert dataplane.shm_fs(tmp_path) == ("ext4", "") and shm_huge(tmp_path) == ""
    _mountinfo(tmp_path, monkeypatch, [])
    assert dataplane.shm_fs(tmp_path) == ("", "")       # not in the table: unknown
    monkeypatch.setattr(dataplane, "MOUNTINFO", tmp_path / "none")
    assert dataplane.shm_fs(tmp_path) == ("", "")       # no table to read


@pytest.mark.parametrize("system,seen", [("[deny]", "deny"), ("[force]", "force"), ("[advise]", "always")])
def test_shmem_enabled_deny_and_force_override_every_mount(tmp_path, monkeypatch, system, seen):
    _mountinfo(tmp_path, monkeypatch, [f"30 25 {_dev(tmp_path)} / /x rw - tmpfs tmpfs rw,huge=always"],
               shmem_enabled=f"always within_size {system} never")
    assert shm_huge(tmp_path) == seen


def test_a_hugetlbfs_mount_is_refused_by_name(tmp_path, monkeypatch):
    _mountinfo(tmp_path, monkeypatch, [f"30 25 {_dev(tmp_path)} / /x rw - hugetlbfs hugetlbfs rw,pagesize=2M"])
    with pytest.raises(ValueError, match="a hugetlbfs mount; use a tmpfs mounted with huge=always"):
        shm_dir(str(tmp_path))


def _pmd_mapped_kib(path: Path) -> int:
    """ShmemPmdMapped of this process's mapping of ``path``: its huge pages."""
    smaps = Path("/proc/self/smaps").read_text()
    after = smaps.split(str(path), 1)[1]
    return int(after.split("ShmemPmdMapped:", 1)[1].split()[0])


@pytest.fixture
def advise_tmpfs(tmp_path):
    """A tmpfs mounted huge=advise (needs root and mount(2); skipped otherwise)."""
    d = tmp_path / "adv"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=advise,size=64m", "tmpfs", str(d)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_payloads_ask_for_huge_pages(advise_tmpfs):
    """On a huge=advise tmpfs only a mapping that asks gets huge pages: the
    payload's owner and whoever attaches it do; a plain memmap does not."""
    assert shm_huge(advise_tmpfs) == "advise"
    shape, dtype = (1024, 4096), np.dtype(np.uint8)      # 4 MiB: two huge pages
    own = create_payload(advise_tmpfs / "p", shape, dtype)
    own[:] = 1
    assert _pmd_mapped_kib(advise_tmpfs / "p") == 4096
    other = attach_payload(advise_tmpfs / "p", shape, dtype)
    assert int(other[1023, 4095]) == 1
    plain = np.memmap(advise_tmpfs / "q", dtype=dtype, mode="w+", shape=shape)
    plain[:] = 1
    assert _pmd_mapped_kib(advise_tmpfs / "q") == 0
    del own, other, plain


def test_a_run_puts_every_shared_file_in_the_directory_given(ray_session, tmp_path):
    d = tmp_path / "shm"
    d.mkdir()
    r = RayRun(load_scenario(scenario(tmp_path, nodes=2)), shm=str(d))
    try:
        assert Path(r.info["steps"]).parent == d
        assert Path(r.info["frames"]["path"]).parent == d
        summary = r.run()
    finally:
        r.close()
    assert summary["violations"] == 0, summary["violation_details"]
    huge = shm_huge(d)                      # "" here; "never" where /tmp is a tmpfs
    assert [(h["node"], h["dir"], h["huge"]) for h in summary["hosts"]] == [(0, str(d), huge), (1, str(d), huge)]
    assert list(d.iterdir()) == []          # every name went once mapped
    con = Console(record=True, width=200)
    print_summary(summary, con)
    assert f"payloads: {payload_dirs(summary)}\n" in con.export_text()
    assert payload_dirs(summary).startswith(f"{d} (")


def test_the_summary_says_where_each_nodes_payload_was():
    hosts = [{"node": 0, "host": "a", "dir": "/dev/shm", "huge": "never"},
             {"node": 1, "host": "b", "dir": "/mnt/h", "huge": "always"},
             {"node": 2, "host": "a", "dir": "/dev/shm", "huge": "never"}]
    assert payload_dirs({"hosts": hosts[:1]}) == "/dev/shm (tmpfs, huge=never: 4 KiB pages)"
    assert payload_dirs({"hosts": hosts}) == ("nodes 0, 2 in /dev/shm (tmpfs, huge=never: 4 KiB pages); "
                                              "node 1 in /mnt/h (tmpfs, huge=always)")
    assert payload_dirs({"hosts": [{"node": 0, "host": "a"}]}) == ""      # a summary from before --shm-dir


def test_a_run_whose_directory_is_missing_does_not_start_and_says_why(ray_session, tmp_path):
    gone = tmp_path / "gone"
    with pytest.raises(RunnerError, match=f"{gone}: no such directory"):
        RayRun(load_scenario(scenario(tmp_path, nodes=2)), shm=str(gone))


def _cli(args: list[str], env: dict[str, str] | None = None):
    return runner().invoke(main, args, env=env)


@pytest.mark.parametrize("command", ["run", "compare"])
def test_the_cli_refuses_a_bad_shm_dir_before_it_starts_anything(tmp_path, command):
    toml = str(scenario(tmp_path, nodes=2))
    gone = str(tmp_path / f"gone-{uuid.uuid4().hex[:6]}")
    out = _cli([command, toml, "--shm-dir", gone])
    assert out.exit_code == 2 and f"error: --shm-dir: shared memory directory {gone}: no such directory" in out.stderr
    out = _cli([command, toml], env={SHM_DIR_ENV: gone})
    assert out.exit_code == 2 and f"error: {SHM_DIR_ENV}: shared memory directory {gone}" in out.stderr
    out = _cli([command, toml, "--backend", "local", "--shm-dir", str(tmp_path)])
    assert out.exit_code == 2 and "--shm-dir needs --backend ray" in out.stderr


def test_a_relative_shm_dir_is_made_absolute(tmp_path, monkeypatch):
    """On a cluster each raylet has its own working directory: the path the actors get is absolute."""
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _ray_opts("ray", None, None, "rel")["shm"] == str(tmp_path / "rel")
    assert _ray_opts("ray", None, None, None)["shm"] == ""


def test_numaemu_shm_dir_reaches_the_actors_of_an_embedded_ray(tmp_path):
    """The variable, set where numaemu starts its own Ray, is what the node actors and the
    coordinator use (their workers inherit it)."""
    d = tmp_path / "shm"
    d.mkdir()
    out = tmp_path / "s.json"
    env = {**os.environ, SHM_DIR_ENV: str(d)}
    done = subprocess.run([str(Path(sys.executable).with_name("numaemu")), "run", str(scenario(tmp_path)),
                           "--set", "run.operations=40", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert {h["dir"] for h in summary["hosts"]} == {str(d)}
    assert list(d.iterdir()) == []
