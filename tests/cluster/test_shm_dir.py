"""Where the shared files go (--shm-dir, $NUMAEMU_SHM_DIR, /dev/shm), and
whether their tmpfs gives the payloads huge pages."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from cluster.cli import main
from cluster.dataplane import SHM_DIR_ENV, attach_payload, create_payload, shm_dir, shm_huge
from cluster.runner_ray import RayRun, RunnerError
from cluster.report import payload_dirs, print_summary
from cluster.scenario import load_scenario

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
    with pytest.raises(ValueError, match="file: no such directory"):
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


MOUNTS = """\
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
tmpfs /mnt/huge tmpfs rw,relatime,size=4194304k,huge=always 0 0
/dev/vdb /mnt/huge/disk ext4 rw,relatime 0 0
tmpfs /mnt/adv tmpfs rw,huge=advise 0 0
/dev/vda / ext4 rw 0 0
"""


def test_the_huge_setting_is_the_innermost_mounts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert shm_huge(Path("/dev/shm"), mounts) == "never"          # a tmpfs without huge=
    assert shm_huge(Path("/mnt/huge"), mounts) == "always"
    assert shm_huge(Path("/mnt/huge/x/y"), mounts) == "always"
    assert shm_huge(Path("/mnt/huge/disk/x"), mounts) == ""       # a disk mounted inside it
    assert shm_huge(Path("/mnt/hugely"), mounts) == ""            # not under /mnt/huge: the root's
    assert shm_huge(Path("/mnt/adv"), mounts) == "advise"
    assert shm_huge(Path("/mnt/adv"), tmp_path / "none") == ""    # no mount table to read


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
    assert [(h["node"], h["dir"], h["huge"]) for h in summary["hosts"]] == [(0, str(d), ""), (1, str(d), "")]
    assert list(d.iterdir()) == []          # every name went once mapped
    con = Console(record=True, width=200)
    print_summary(summary, con)
    assert f"payloads: {d} (not a tmpfs)\n" in con.export_text()


def test_the_summary_says_where_each_nodes_payload_was():
    hosts = [{"node": 0, "host": "a", "dir": "/dev/shm", "huge": "never"},
             {"node": 1, "host": "b", "dir": "/mnt/h", "huge": "always"},
             {"node": 2, "host": "a", "dir": "/dev/shm", "huge": "never"}]
    assert payload_dirs({"hosts": hosts[:1]}) == "/dev/shm (tmpfs, 4 KiB pages (huge=never))"
    assert payload_dirs({"hosts": hosts}) == ("nodes 0, 2 in /dev/shm (tmpfs, 4 KiB pages (huge=never)); "
                                              "node 1 in /mnt/h (tmpfs, huge=always)")
    assert payload_dirs({"hosts": [{"node": 0, "host": "a"}]}) == ""      # a summary from before --shm-dir


def test_a_run_whose_directory_is_missing_does_not_start_and_says_why(ray_session, tmp_path):
    gone = tmp_path / "gone"
    with pytest.raises(RunnerError, match=f"{gone}: no such directory"):
        RayRun(load_scenario(scenario(tmp_path, nodes=2)), shm=str(gone))


def _cli(args: list[str], env: dict[str, str] | None = None):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, args, env=env)


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
