"""deploy/: the Prometheus config (checked by promtool), Grafana provisioning,
the compose file, the Ray cluster launcher YAML and the KubeRay manifest.

Docker and Kubernetes are not available on these machines: the compose file
and the Ray/KubeRay manifests are checked for YAML syntax and for what they
must say, not run.
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
        "prometheus/prometheus.yml", "compose.yaml", "ray/cluster.yaml", "kuberay/raycluster.yaml",
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


def test_kuberay_raycluster_installs_numaemu_and_runs_a_scenario(tmp_path):
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay/raycluster.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "RayCluster", "Job"}
    rc = kinds["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1"
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    workers = rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    for spec in (head, workers, kinds["Job"]["spec"]["template"]["spec"]):
        (init,) = spec["initContainers"]
        assert "pip install" in " ".join(init["command"])
    job = kinds["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:4] == ["python", "-m", "cluster.cli", "run"]
    assert "--backend=ray" in job["command"]
    assert f"ray://{rc['metadata']['name']}-head-svc:10001" in " ".join(job["command"])
    # the scenario in the ConfigMap is a valid numaemu scenario
    p = tmp_path / "scenario.toml"
    p.write_text(kinds["ConfigMap"]["data"]["scenario.toml"])
    assert load_scenario(str(p)).run.operations > 0
