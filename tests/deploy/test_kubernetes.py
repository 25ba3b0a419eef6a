"""deploy/: the Kubernetes manifests validate strictly against the Kubernetes schemas (the
kubernetes-validate package carries them, offline), and their parts fit together and fit the
image: selectors find the pods, probes and monitors name real ports, every DCGAN_* variable is
a real setting, and the GPU variant asks for a GPU and insists on CUDA.

ServiceMonitor and InferenceService are custom resources whose schemas live in their operators'
CRDs, not in Kubernetes': for those the test checks what this project relies on, and the
InferenceService's container is validated as a core Kubernetes container.
"""

from __future__ import annotations

import copy
import json
import re

import kubernetes_validate
import pytest
import yaml

from service.process.config import config_from_args
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
# The oldest Kubernetes these manifests promise to work on (gRPC probes are GA since 1.27;
# the preStop `sleep` action needs 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
CUSTOM_KINDS = {"Kustomization", "ServiceMonitor", "InferenceService"}


def _documents(pattern: str) -> list[dict]:
    return [doc for path in sorted(DEPLOY.glob(pattern))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all() -> list[dict]:
    return _documents("kubernetes/**/*.yaml") + _documents("kserve/*.yaml")


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_resources_validate_strictly(version):
    checked = 0
    for doc in _all():
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        checked += 1
    assert checked >= 7


def test_the_validator_catches_a_misspelt_field():
    deployment = copy.deepcopy(_by_kind(_documents("kubernetes/deployment.yaml"), "Deployment")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomizations_list_every_manifest_beside_them():
    for kustomization in DEPLOY.glob("kubernetes/**/kustomization.yaml"):
        listed = set(yaml.safe_load(kustomization.read_text())["resources"])
        present = {p.name for p in kustomization.parent.glob("*.yaml")} - {kustomization.name}
        assert listed == present, kustomization


def _serve_settings() -> set[str]:
    """Every DCGAN_* variable dcgan-serve reads: one per setting, and the token itself."""
    from service.process.config import ENV_PREFIX, ServeConfig
    from service.settings import specs
    return {spec.env(ENV_PREFIX) for spec in specs(ServeConfig)} | {"DCGAN_AUTH_TOKEN"}


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" \
        else doc["spec"]["predictor"]
    return spec["containers"]


@pytest.mark.parametrize("folder", ["kubernetes", "kubernetes/gpu", "kubernetes/tls"])
def test_services_probes_and_monitors_fit_the_deployment(folder, monkeypatch):
    docs = _documents(f"{folder}/*.yaml")
    deployment = _by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The image's defaults (its EXPOSE, and DCGAN_HEALTH_PORT for the health-only port).
    assert ports == {"grpc": 50051, "http": 8080, "health": 50052, "metrics": 9090}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 50051 50052 8080 9090" in dockerfile and "DCGAN_HEALTH_PORT=50052" in dockerfile
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"], probe
    assert container["readinessProbe"]["grpc"]["service"] == "dcgan.v1.GeneratorService"
    # Security: the image's non-root user, nothing writable but /tmp.
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert "USER 10001" in (ROOT / "Dockerfile").read_text()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert set(env) <= _serve_settings(), set(env) - _serve_settings()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config_from_args([])  # the values parse as dcgan-serve would parse them (exits if not)
    grace = float(env.get("DCGAN_GRACE_SECONDS", 10))
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace + pause
    for service in _by_kind(docs, "Service"):
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    for monitor in _by_kind(docs, "ServiceMonitor"):
        selected = [s for s in _by_kind(docs, "Service") if
                    monitor["spec"]["selector"]["matchLabels"].items()
                    <= s["metadata"]["labels"].items()]
        assert selected and all(e["port"] in {p["name"] for s in selected
                                              for p in s["spec"]["ports"]}
                                for e in monitor["spec"]["endpoints"])
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert container["resources"]["requests"]["cpu"]  # utilisation needs a CPU request


def test_the_tls_example_probes_a_port_that_answers_without_a_client_certificate():
    deployment = _by_kind(_documents("kubernetes/tls/*.yaml"), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # TLS and mutual TLS on, from files of the mounted Secret.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")["mountPath"]
    for name in ("DCGAN_TLS_CERT", "DCGAN_TLS_KEY", "DCGAN_TLS_CLIENT_CA"):
        assert env[name].startswith(mount + "/"), name
    assert any(v.get("secret") for v in pod["volumes"] if v["name"] == "tls")
    # The probes go to the plaintext health-only port, not the TLS gRPC port.
    health = int(env["DCGAN_HEALTH_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == health != ports["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health, probe
    # ... and that port, on a real server with these settings, answers a plaintext health
    # check without a client certificate: tests/service/test_security.py
    # (test_mutual_tls_server_answers_plaintext_probes_on_its_health_port).


def test_the_gpu_variant_asks_for_a_gpu_and_insists_on_cuda():
    deployment = _by_kind(_documents("kubernetes/gpu/*.yaml"), "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DCGAN_DEVICE"] == "cuda"
    assert "AS serve-cuda" in (ROOT / "Dockerfile").read_text()


def test_the_kserve_example_is_a_custom_predictor_on_the_v2_grpc_port():
    service = _documents("kserve/inferenceservice.yaml")[0]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    container = _containers(service)[0]
    assert container["ports"] == [{"name": "h2c", "containerPort": 50051, "protocol": "TCP"}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_grafana_dashboard_covers_what_the_issue_asks():
    dashboard = json.loads((DEPLOY / "grafana" / "dcgan-serve.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needed in ("rate(dcgan_request_duration_seconds_count", "histogram_quantile(0.5",
                   "histogram_quantile(0.99", "dcgan_images_generated_total",
                   "dcgan_requests_in_flight", 'code!="OK"'):
        assert needed in exprs, needed
    # Every metric a panel reads is one the server exports (docs/deployment.md, Metrics).
    readme = (ROOT / "docs" / "deployment.md").read_text()
    exported = set(re.findall(r"`(dcgan_\w+)`", readme))
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"dcgan_\w+", exprs)}
    assert used <= exported, used - exported
