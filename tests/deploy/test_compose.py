"""compose.yaml: valid against the Compose Specification's own JSON schema (the copy that
check-jsonschema carries, offline), and consistent with the Dockerfile, the server's defaults,
the Prometheus and Grafana files it mounts, and the README. Bringing its service up for real
with podman is in test_image.py, where the image is built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.process.config import DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, DEFAULT_PORT
from tests.conftest import ROOT

COMPOSE = ROOT / "compose.yaml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _check_schema(path: Path) -> subprocess.CompletedProcess:
    checker = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_validates_against_the_compose_specification(tmp_path):
    proc = _check_schema(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and the check can fail: a misspelt key is caught.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    depends_on:", "    depend_on:", 1))
    assert _check_schema(broken).returncode != 0


def _container_ports(service: dict) -> dict[int, str]:
    """container port -> the host side as written, e.g. {8080: '${HTTP_HOST_PORT:-8080}'}."""
    ports = {}
    for mapping in service["ports"]:
        host, _, container = mapping.rpartition(":")
        ports[int(container)] = host
    return ports


def test_ports_match_the_image_and_the_server_defaults():
    serve = _compose()["services"]["dcgan-serve"]
    ports = _container_ports(serve)
    assert set(ports) == {DEFAULT_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT}
    expose = re.findall(r"^EXPOSE (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    # Every port the image opens is exposed; compose publishes all but the health-only one,
    # which is for probes inside the host (the container's HEALTHCHECK).
    assert expose and all(set(map(int, line.split())) == set(ports) | {50052} for line in expose)
    assert "DCGAN_HEALTH_PORT=50052" in (ROOT / "Dockerfile").read_text()
    # By default each port is published on the same number, as the README's URLs assume.
    for port, host in ports.items():
        assert re.fullmatch(rf"\$\{{\w+_HOST_PORT:-{port}\}}", host), host
    assert serve["build"] == {"context": ".", "target": "serve"}
    assert "AS serve" in (ROOT / "Dockerfile").read_text()


def test_prometheus_and_grafana_files_fit_together():
    services = _compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).is_file(), f"{name} mounts {source}, which is missing"
    prometheus = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    [target] = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == f"dcgan-serve:{DEFAULT_METRICS_PORT}"
    datasource = yaml.safe_load((ROOT / "deploy/compose/grafana/datasources.yaml").read_text())
    prometheus_port = int(services["prometheus"]["ports"][0].rpartition(":")[2])
    assert datasource["datasources"][0]["url"] == f"http://prometheus:{prometheus_port}"
    provider = yaml.safe_load((ROOT / "deploy/compose/grafana/dashboards.yaml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    mounted = [v.split(":")[1] for v in services["grafana"]["volumes"]]
    dashboard = next(m for m in mounted if m.startswith(folder + "/"))
    assert services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] \
        == dashboard
    assert json.loads((ROOT / "deploy/grafana/dcgan-serve.json").read_text())["panels"]


def test_prometheus_accepts_its_configuration():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian: apt-get install prometheus) is not installed")
    config = ROOT / "deploy" / "compose" / "prometheus.yml"
    proc = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_and_deployment_docs_name_the_compose_commands_and_ports():
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert "docker compose up" in readme and "podman-compose up" in docs
    for port in (DEFAULT_HTTP_PORT, 3000):
        assert f"localhost:{port}" in readme, port
