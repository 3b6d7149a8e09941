"""deploy/: the Prometheus config (checked by promtool), Grafana provisioning,
the compose file, the Ray cluster launcher YAML and the KubeRay RayJob.

Docker and Kubernetes are not available on these machines: the compose file
and the Ray/KubeRay manifests are checked for YAML syntax and for what they
must say, not run; the launcher config also goes through what `ray up` does
with it before it reaches for a host (Ray's schema and provider bootstrap). The RayJob's entrypoint is run on a real Ray head (and
submitted through its Job Submission API where ray[default] is installed) by
tests/cluster/test_deploy_head.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.scenario import load_scenario
from metrics_support import REPO

DEPLOY = REPO / "deploy"
PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)


def load(rel: str):
    return yaml.safe_load((DEPLOY / rel).read_text())


def test_every_yaml_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert {str(p.relative_to(DEPLOY)) for p in files} >= {
        "prometheus/prometheus.yml", "compose.yaml", "ray/cluster.yaml", "kuberay/rayjob.yaml",
        "grafana/provisioning/datasources/numaemu.yaml", "grafana/provisioning/dashboards/numaemu.yaml"}
    for p in files:
        docs = list(yaml.safe_load_all(p.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), p


def test_prometheus_discovers_numaemu_runs_from_target_files():
    cfg = load("prometheus/prometheus.yml")
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "numaemu"]
    assert job["file_sd_configs"][0]["files"] == ["targets/*.json"]
    assert cfg["global"]["scrape_interval"] in ("1s", "2s")  # values at most 2 s old
    assert (DEPLOY / "prometheus/targets").is_dir()  # numaemu run's default --sd-dir


@pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="no promtool")
def test_promtool_check_config():
    res = subprocess.run([PROMTOOL, "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_grafana_provisioning():
    ds = load("grafana/provisioning/datasources/numaemu.yaml")
    (src,) = ds["datasources"]
    assert src["type"] == "prometheus" and src["url"] == "http://127.0.0.1:9090"
    prov = load("grafana/provisioning/dashboards/numaemu.yaml")
    (p,) = prov["providers"]
    assert p["type"] == "file"
    compose = load("compose.yaml")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts["../dashboards"] == p["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_compose_mounts_files_that_exist():
    compose = load("compose.yaml")
    assert set(compose["services"]) == {"prometheus", "grafana"}
    for name, svc in compose["services"].items():
        assert svc["network_mode"] == "host", name  # numaemu's endpoints are on the host's loopback
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), (name, src)
    prom = compose["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert "./prometheus/targets:/etc/prometheus/targets:ro" in prom["volumes"]


def test_ray_cluster_launcher_installs_numaemu_and_runs_a_scenario():
    cfg = load("ray/cluster.yaml")
    assert cfg["cluster_name"] == "numaemu"
    assert cfg["provider"]["type"]
    assert cfg["file_mounts"] == {"~/numaemu": "."}
    assert any("pip install" in c and "~/numaemu" in c for c in cfg["setup_commands"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    runs = [c for c in cfg["head_start_ray_commands"] if "numaemu run" in c]
    assert runs and "--backend ray" in runs[0] and "--metrics-port" in runs[0]
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])


def test_ray_up_accepts_the_launcher_config():
    """What `ray up` does with the file before it reaches for any host: Ray's
    own preparation (the local provider's node type from worker_ips),
    schema validation and provider bootstrap. The commands keep their order,
    and the cluster is the head and both workers."""
    from ray.autoscaler._private.commands import _bootstrap_config
    cfg = load("ray/cluster.yaml")
    resolved = _bootstrap_config(cfg, no_config_cache=True)
    (node_type,) = resolved["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(cfg["provider"]["worker_ips"]) == 2
    assert resolved["head_start_ray_commands"] == cfg["head_start_ray_commands"]
    assert resolved["worker_start_ray_commands"] == cfg["worker_start_ray_commands"]
    assert resolved["file_mounts"] == {"~/numaemu": "."}


def test_kuberay_rayjob_installs_numaemu_and_runs_a_scenario_on_the_head(tmp_path):
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay/rayjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "RayJob"}
    rj = kinds["RayJob"]
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head_tpl = cluster["headGroupSpec"]["template"]
    head, workers = head_tpl["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]
    for pod in (head, workers):
        (init,) = pod["initContainers"]
        # --prefix, not --target: pip then installs no second Ray beside the image's
        assert "pip install --no-cache-dir --prefix /opt/numaemu " in " ".join(init["command"])
        # numaemu is on no index: an unedited manifest fails in its init container, saying why
        spec_env = {e["name"]: e["value"] for e in init["env"]}["NUMAEMU_PIP_SPEC"]
        fails = subprocess.run(init["command"], env={"NUMAEMU_PIP_SPEC": spec_env, "PATH": os.environ["PATH"]},
                               capture_output=True, text=True, timeout=60)
        assert fails.returncode == 1 and "set NUMAEMU_PIP_SPEC" in fails.stderr
        for c in [init] + pod["containers"]:
            assert c["image"] == f"rayproject/ray:{cluster['rayVersion']}-py311"   # ray[all]: Jobs API included
    # the submitter reaches the Job Submission API through the head's service
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    # the entrypoint: numaemu on the head, joining this cluster through RAY_ADDRESS
    argv = spec["entrypoint"].split()
    assert argv[:4] == ["python", "-m", "cluster.cli", "run"]
    assert {"--backend=ray", "--address=auto", "--metrics-port=9108", "--metrics-bind=0.0.0.0"} <= set(argv)
    assert not any(a.startswith("--address=ray://") for a in argv)
    # the scenario: the ConfigMap, mounted where the entrypoint reads it, and a valid numaemu scenario
    (vol,) = [v["name"] for v in head["volumes"] if v.get("configMap", {}).get("name") == "numaemu-scenario"]
    (ray_head,) = head["containers"]
    (mount,) = [m["mountPath"] for m in ray_head["volumeMounts"] if m["name"] == vol]
    assert argv[4] == f"{mount}/scenario.toml"
    assert kinds["ConfigMap"]["metadata"]["name"] == "numaemu-scenario"
    p = tmp_path / "scenario.toml"
    p.write_text(kinds["ConfigMap"]["data"]["scenario.toml"])
    assert load_scenario(str(p)).run.operations > 0
    # metrics: the driver serves 9108 on the head pod, which Prometheus discovers by its annotations
    ann = head_tpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9108"
    assert ann["prometheus.io/path"] == "/metrics"
    ports = {p["containerPort"]: p["name"] for p in ray_head["ports"]}
    assert ports[9108] != "metrics"       # KubeRay's name for Ray's own metrics port
    assert ports[8265] == "dashboard"
    for c in ray_head, workers["containers"][0]:
        assert {"name": "PYTHONPATH", "value": "/opt/numaemu/lib/python3.11/site-packages"} in c["env"]


def test_kuberay_init_container_installs_numaemu_beside_the_images_ray_not_a_second_one(tmp_path):
    """The init container's own command, run here with this environment as
    the image (Ray and numaemu's dependencies installed) and this checkout
    as NUMAEMU_PIP_SPEC: the prefix gets numaemu and no Ray, and with the
    containers' PYTHONPATH a process imports numaemu from the prefix and
    Ray from the environment. The checkout goes in under another project
    name: pip would uninstall the numaemu this environment has (the image
    has none) before installing it into the prefix."""
    import sys

    import ray

    src = tmp_path / "src"
    for name in ("cluster", "emulator"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "README.md", src / "README.md")
    project = (REPO / "pyproject.toml").read_text()
    assert project.count('name = "numaemu"') == 1
    (src / "pyproject.toml").write_text(project.replace('name = "numaemu"', 'name = "numaemu-init-check"'))

    rj = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kuberay/rayjob.yaml").read_text())}["RayJob"]
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (init,) = head["initContainers"]
    prefix = tmp_path / "opt-numaemu"
    command = [part.replace("/opt/numaemu", str(prefix)) for part in init["command"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(NUMAEMU_PIP_SPEC=str(src), PATH=os.pathsep.join((str(Path(sys.executable).parent), env["PATH"])))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (ray_head,) = head["containers"]
    pythonpath = {e["name"]: e["value"] for e in ray_head["env"]}["PYTHONPATH"].replace("/opt/numaemu", str(prefix))
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert Path(pythonpath) == site and (site / "cluster" / "cli.py").is_file()
    assert not list(site.glob("ray*")), "a second Ray in the prefix would shadow the image's"
    where = subprocess.run([sys.executable, "-c", "import cluster, ray; print(cluster.__file__); print(ray.__file__)"],
                           env={**env, "PYTHONPATH": pythonpath}, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert where.returncode == 0, where.stderr
    numaemu_at, ray_at = where.stdout.split()
    assert Path(numaemu_at).is_relative_to(site)
    assert Path(ray_at) == Path(ray.__file__)
