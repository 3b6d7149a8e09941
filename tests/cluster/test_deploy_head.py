"""The ways a driver joins a Ray cluster whose head was started with
``ray start --head`` (as KubeRay, the cluster launcher and a person do),
short of Kubernetes:

- the RayJob of deploy/kuberay/rayjob.yaml: its entrypoint, as Ray's job
  supervisor runs it on the head (RAY_ADDRESS set, ``--address auto``), and,
  where ray[default] is installed, submitted for real through the head's Job
  Submission API with ``ray job submit``;
- ``--address ray://HOST:PORT``: a Ray Client driver, on no Ray node.

The head is a Ray cluster of its own beside the session's: its own ports,
temp dir and token (token authentication on, as KubeRay's authOptions set
it), stopped by its own processes only (never ``ray stop``)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from ray_procs import stop_ray

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kuberay" / "rayjob.yaml"
HOLD = 2.0


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _jobs_api_missing() -> str | None:
    """Why this Ray has no Job Submission API (None: it has one)."""
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:  # pragma: no cover - another Ray
        import importlib.util
        return None if importlib.util.find_spec("aiohttp") else "no aiohttp"
    err = get_dashboard_dependency_error()
    return None if err is None else str(err)


@pytest.fixture(scope="module")
def head():
    """`ray start --head` with its own ports, temp dir and token; PYTHONPATH
    and PATH as the KubeRay containers set them."""
    # short: the raylet's socket paths under the temp dir must fit in 107 bytes
    temp_dir = tempfile.mkdtemp(prefix="nmh", dir="/tmp")
    gcs, client, dashboard, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               PATH=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))))
    jobs = _jobs_api_missing() is None
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus=1",
           f"--port={gcs}", f"--ray-client-server-port={client}", f"--include-dashboard={str(jobs).lower()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
           "--min-worker-port=0", "--max-worker-port=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        proc = subprocess.run(cmd, cwd=temp_dir, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}",
               "dashboard": f"http://127.0.0.1:{dashboard}" if jobs else None, "cwd": temp_dir}
    finally:
        stop_ray(temp_dir, gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _rayjob_entrypoint(tmp_path: Path, port: int, operations: int | None = None) -> list[str]:
    """The RayJob's entrypoint with the ConfigMap's scenario in tmp_path (where
    the head pod mounts it; ``operations`` instead of its own if given), its
    metrics on 127.0.0.1:port, a shorter hold."""
    kinds = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    cm, job = kinds["ConfigMap"], kinds["RayJob"]["spec"]
    pod = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (vol,) = [v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
    (mount,) = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == vol]
    (name,) = cm["data"]
    scenario = tmp_path / name
    text = cm["data"][name]
    if operations is not None:
        text, n = re.subn(r"^operations = \d+$", f"operations = {operations}", text, flags=re.M)
        assert n == 1
    scenario.write_text(text)
    subs = {f"{mount}/{name}": str(scenario), "--metrics-port=9108": f"--metrics-port={port}",
            "--metrics-bind=0.0.0.0": "--metrics-bind=127.0.0.1", "--hold=60": f"--hold={HOLD:g}"}
    argv = shlex.split(job["entrypoint"])
    assert set(subs) <= set(argv), argv
    return [subs.get(a, a) for a in argv] + ["--json", str(tmp_path / "run.json")]


def _scrape_final(port: int, proc: subprocess.Popen, timeout: float = 90) -> str:
    """The run's metrics once it has finished (served for --hold after the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            if re.search(r"^numaemu_run_done\{.*\} 1\.0$", text, flags=re.M):
                return text
        except OSError:
            pass
        time.sleep(0.1)
    return ""


def _check_summary(tmp_path: Path, text: str) -> dict:
    s = json.loads((tmp_path / "run.json").read_text())
    assert s["backend"] == "ray" and s["violations"] == 0, s["violation_details"]
    assert s["operations_done"] == s["operations"] > 0 and s["verified_pages"] > 0
    ops = re.search(r"^numaemu_run_operations_total\{.*\} (\S+)$", text, flags=re.M)
    assert ops and float(ops.group(1)) == s["operations"]
    return s


def test_the_rayjob_entrypoint_runs_on_the_head_as_the_job_supervisor_runs_it(head, tmp_path):
    (port,) = _free_ports(1)
    argv = _rayjob_entrypoint(tmp_path, port)
    assert argv[0] == "python" and "--address=auto" in argv
    env = {**head["env"], "RAY_ADDRESS": head["gcs"]}   # what the job supervisor sets
    proc = subprocess.Popen(argv, cwd=head["cwd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    text = _scrape_final(port, proc)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert text, "no final metrics during --hold"
    assert "violations: 0" in out
    _check_summary(tmp_path, text)


@pytest.mark.skipif(_jobs_api_missing() is not None,
                    reason=f"Ray's Job Submission API needs ray[default]: {_jobs_api_missing()}")
def test_the_rayjob_entrypoint_submitted_through_the_job_submission_api(head, tmp_path):
    (port,) = _free_ports(1)
    argv = _rayjob_entrypoint(tmp_path, port)
    submit = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", head["dashboard"],
              "--submission-id", f"numaemu-run-{port}", "--", *argv]
    proc = subprocess.Popen(submit, cwd=tmp_path, env=head["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    text = _scrape_final(port, proc)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "succeeded" in out and "violations: 0" in out, out
    assert text, "no final metrics during --hold"
    _check_summary(tmp_path, text)


def _client_server_ready(head) -> None:
    """Ray's client proxier starts a server per client and creates its runtime
    env through the head's agent; on a loaded machine the first one can fail
    to come up ("Starting Ray client server failed"). Connect until one does,
    as a readiness probe, before the run that is the test."""
    probe = [sys.executable, "-c", f"import ray; ray.init({head['client']!r}); ray.shutdown()"]
    errors = []
    for _ in range(3):
        p = subprocess.run(probe, cwd=head["cwd"], env=head["env"], capture_output=True, text=True, timeout=120)
        if p.returncode == 0:
            return
        errors.append(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
    pytest.fail(f"the Ray Client server at {head['client']} never came up: {errors}")


def test_a_ray_client_driver_runs_a_scenario(head, tmp_path):
    _client_server_ready(head)
    (port,) = _free_ports(1)
    argv = _rayjob_entrypoint(tmp_path, port, operations=500)
    argv = [sys.executable] + argv[1:]
    argv[argv.index("--address=auto")] = f"--address={head['client']}"
    proc = subprocess.Popen(argv, cwd=tmp_path, env=head["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    text = _scrape_final(port, proc)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert text, "no final metrics during --hold"
    assert "violations: 0" in out
    s = _check_summary(tmp_path, text)
    assert len({h["host"] for h in s["hosts"]}) == 1   # the head: a Ray Client driver is on no node
    # so the driver's calls are Ray's; the node actors, beside the coordinator, take the channel
    assert s["coordinator_calls"]["actor"] > 0 and s["coordinator_calls"]["channel"] > 0
