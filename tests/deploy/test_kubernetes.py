"""deploy/: every kustomization builds with the real tool (`kubectl kustomize`, kustomize v5,
as `kubectl apply -k` would build it) and what it builds validates strictly against the
Kubernetes schemas (the kubernetes-validate package carries them, offline); the parts fit
together and fit the image: selectors find the pods, probes and monitors name real ports,
every DCGAN_* variable is a real setting, and the GPU variant asks for a GPU and insists on
CUDA. Every `kubectl ... -k DIR` the docs give builds as written.

Custom resources are checked against their projects' own schemas: KEDA's ScaledObject with
@kubernetes-models/keda (generated from KEDA's CRD: its TypeScript type rejects unknown fields
and wrong types, its validator required fields, enums and patterns), installed from npm into
tests/artifacts; KServe's InferenceService strictly against the types of KServe's Python SDK
(generated from the same Go API as its CRD). For the ServiceMonitor the test checks what this
project relies on.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.process.config import config_from_args
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
# The oldest Kubernetes these manifests promise to work on (gRPC probes are GA since 1.27;
# the preStop `sleep` action needs 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
CUSTOM_KINDS = {"Kustomization", "ServiceMonitor", "InferenceService", "ScaledObject"}


KUSTOMIZATIONS = sorted(p.parent.relative_to(ROOT).as_posix()
                        for p in DEPLOY.glob("**/kustomization.yaml"))


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed (it builds the kustomizations)")
        pytest.skip("kubectl is not installed (it builds the kustomizations)")
    return kubectl


def _built(folder: str) -> list[dict]:
    """What `kubectl apply -k folder` would send: the kustomization built by kubectl."""
    run = subprocess.run([_kubectl(), "kustomize", str(ROOT / folder)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def _all() -> list[dict]:
    return [doc for folder in KUSTOMIZATIONS for doc in _built(folder)]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_every_kustomization_builds_with_kubectl(folder):
    assert _built(folder)


def test_every_documented_kubectl_k_command_builds_as_written():
    """`kubectl apply -k DIR` in the README, docs/ and the manifests' own comments: the build
    half of it runs here as written (no API server runs on these machines, so the apply half,
    `--dry-run=client` included, cannot: it asks the server what kinds exist)."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted(DEPLOY.glob("**/*.yaml"))]
    folders = {m for path in texts for m in re.findall(r"kubectl [\w -]*-k (deploy/[\w/-]+)",
                                                       path.read_text())}
    assert {"deploy/kubernetes/cpu", "deploy/kubernetes/keda", "deploy/kubernetes/custom-metrics",
            "deploy/kubernetes/gpu", "deploy/kubernetes/tls", "deploy/kubernetes/training",
            "deploy/kserve/always-on", "deploy/kserve/serverless"} == folders, folders
    for folder in sorted(folders):
        assert _built(folder), folder


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
    deployment = copy.deepcopy(_by_kind(_built("deploy/kubernetes/cpu"), "Deployment")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomizations_list_every_manifest_beside_them():
    for kustomization in DEPLOY.glob("**/kustomization.yaml"):
        listed = {r for r in yaml.safe_load(kustomization.read_text())["resources"]
                  if not r.startswith("..")}  # an overlay's base is a folder beside it
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


@pytest.mark.parametrize("folder", ["kubernetes/cpu", "kubernetes/gpu", "kubernetes/tls"])
def test_services_probes_and_monitors_fit_the_deployment(folder, monkeypatch):
    docs = _built(f"deploy/{folder}")
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
    deployment = _by_kind(_built("deploy/kubernetes/tls"), "Deployment")[0]
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
    deployment = _by_kind(_built("deploy/kubernetes/gpu"), "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DCGAN_DEVICE"] == "cuda"
    assert "AS serve-cuda" in (ROOT / "Dockerfile").read_text()


def test_the_kserve_example_is_a_custom_predictor_on_the_v2_grpc_port():
    service = _built("deploy/kserve/always-on")[0]
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
                   "dcgan_requests_in_flight", 'code!="OK"',
                   "sum by (model, version) (rate(dcgan_request_duration_seconds_count"):
        assert needed in exprs, needed
    # Every metric a panel reads is one the server exports (docs/deployment.md, Metrics).
    readme = (ROOT / "docs" / "deployment.md").read_text()
    exported = set(re.findall(r"`(dcgan_\w+)`", readme))
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"dcgan_\w+", exprs)}
    assert used <= exported, used - exported


def _kserve_problems(docs: list[dict]) -> list[list[str]]:
    """Each InferenceService's problems against KServe's own types, checked in a process of
    its own: importing kserve registers KServe's copy of the V2 protos, which would clash with
    the service's own in this one."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "deploy" / "kserve_types.py")],
                          input=json.dumps(docs), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_inference_services_fit_kserves_own_types_strictly():
    services = _by_kind(_built("deploy/kserve/always-on") + _built("deploy/kserve/serverless"),
                        "InferenceService")
    assert len(services) >= 2
    # The check can fail: a misspelt field and a quoted number are both caught.
    broken = copy.deepcopy(services[-1])
    predictor = broken["spec"]["predictor"]
    predictor["minReplica"] = predictor.pop("minReplicas")
    predictor["maxReplicas"] = str(predictor["maxReplicas"])
    *found, found_broken = _kserve_problems(services + [broken])
    assert found == [[]] * len(services), found
    assert len(found_broken) == 2, found_broken


def test_the_serverless_inference_service_scales_to_zero_on_the_grpc_port():
    service = _built("deploy/kserve/serverless")[0]
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] == 0 and predictor["maxReplicas"] > 1
    assert predictor["scaleMetric"] in {"concurrency", "rps"}  # what Knative can hold and count
    container = predictor["containers"][0]
    # Knative routes one port; h2c carries gRPC (the dcgan and V2 APIs) through its activator.
    assert container["ports"] == [{"name": "h2c", "containerPort": 50051, "protocol": "TCP"}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


# What Knative's queue-proxy binds in every pod of a Knative service, beside the user's
# container in the same network namespace (knative/serving, pkg/networking/constants.go:
# BackendHTTPPort, BackendHTTP2Port, QueueAdminPort, AutoscalingQueueMetricsPort,
# UserQueueMetricsPort).
KNATIVE_RESERVED = {8012, 8013, 8022, 9090, 9091}


def test_the_serverless_recipe_binds_no_port_knative_owns(monkeypatch):
    [service] = _built("deploy/kserve/serverless")
    [container] = service["spec"]["predictor"]["containers"]
    dockerfile = "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                           if not line.lstrip().startswith("#"))
    image_env = dict(re.findall(r"(DCGAN_\w+)=([\w./-]+)", dockerfile))  # its ENV lines
    for name, value in {**image_env, **{e["name"]: e["value"] for e in container["env"]}}.items():
        monkeypatch.setenv(name, value)
    config = config_from_args([])  # as the server in that container reads its settings
    bound = {config.port, config.http_port, config.health_port, config.metrics_port} - {-1}
    declared = {p["containerPort"] for p in container["ports"]}
    assert declared <= bound and not bound & KNATIVE_RESERVED, bound & KNATIVE_RESERVED


KEDA_SCHEMA = ROOT / "tests" / "deploy" / "keda_schema"


@pytest.fixture(scope="session")
def keda_schema() -> Path:
    """@kubernetes-models/keda and TypeScript, installed by npm from the committed lock file
    into tests/artifacts (once; again when the lock file changes)."""
    npm = shutil.which("npm")
    if npm is None:
        reason = "npm is not installed (Node.js and npm check the KEDA manifests)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = ROOT / "tests" / "artifacts" / "keda-schema"
    folder.mkdir(parents=True, exist_ok=True)
    lock = (KEDA_SCHEMA / "package-lock.json").read_bytes()
    installed = folder / "package-lock.json"
    if not (folder / "node_modules").is_dir() or not installed.exists() \
            or installed.read_bytes() != lock:
        for name in ("package.json", "package-lock.json", "validate.mjs"):
            shutil.copy(KEDA_SCHEMA / name, folder / name)
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copy(KEDA_SCHEMA / "validate.mjs", folder / "validate.mjs")
    return folder


def _keda_problems(folder: Path, docs: list[dict]) -> list[str]:
    """Problems KEDA's schema finds in these ScaledObjects: TypeScript's excess-property and
    type checks, then the CRD's validator."""
    source = ['import type { IScaledObject } from '
              '"@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";']
    source += [f"export const doc{i}: IScaledObject = {json.dumps(d)};" for i, d in enumerate(docs)]
    (folder / "check.ts").write_text("\n".join(source) + "\n")
    typed = subprocess.run([str(folder / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict",
                            "--module", "nodenext", "--moduleResolution", "nodenext",
                            "--skipLibCheck", "check.ts"],
                           cwd=folder, capture_output=True, text=True, timeout=120)
    valid = subprocess.run(["node", "validate.mjs"], input=json.dumps(docs), cwd=folder,
                           capture_output=True, text=True, timeout=60)
    assert "Error" not in valid.stderr, valid.stderr  # the checker itself ran
    return typed.stdout.splitlines() + valid.stdout.splitlines()


def test_the_keda_scaled_object_fits_kedas_crd_and_replaces_the_cpu_hpa(keda_schema):
    docs = _built("deploy/kubernetes/keda")
    scaled = _by_kind(docs, "ScaledObject")
    assert len(scaled) == 1
    assert _keda_problems(keda_schema, scaled) == []
    misspelt, untyped = copy.deepcopy(scaled[0]), copy.deepcopy(scaled[0])
    misspelt["spec"]["minReplicaCont"] = misspelt["spec"].pop("minReplicaCount")
    untyped["spec"]["triggers"][0].pop("type")  # required
    problems = _keda_problems(keda_schema, [misspelt])
    assert any("minReplicaCont" in p for p in problems), problems
    problems = _keda_problems(keda_schema, [untyped])
    assert any("required property type" in p for p in problems), problems
    # It scales the base's Deployment, which the built overlay holds without the base's CPU
    # HPA (KEDA makes its own, and two HPAs on one Deployment fight).
    spec = scaled[0]["spec"]
    base = _built("deploy/kubernetes/cpu")
    assert _by_kind(base, "HorizontalPodAutoscaler")
    assert not _by_kind(docs, "HorizontalPodAutoscaler")
    assert spec["scaleTargetRef"]["name"] == _by_kind(docs, "Deployment")[0]["metadata"]["name"]
    assert len(docs) == len(base)  # everything else of the base, the ScaledObject instead
    trigger = spec["triggers"][0]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0
    # The query itself runs on a real Prometheus in tests/deploy/test_prometheus.py.


def test_the_custom_metrics_overlay_builds_a_valid_hpa_on_the_adapters_metric():
    base = _by_kind(_built("deploy/kubernetes/cpu"), "HorizontalPodAutoscaler")[0]
    [hpa] = _by_kind(_built("deploy/kubernetes/custom-metrics"), "HorizontalPodAutoscaler")
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)
    [metric] = hpa["spec"]["metrics"]
    values = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    [rule] = values["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert hpa["spec"]["minReplicas"] == base["spec"]["minReplicas"]


def test_the_training_job_runs_torchrun_across_its_pods_on_a_shared_volume():
    """deploy/kubernetes/training: the Indexed Job's pods find pod 0's rendezvous through the
    headless Service, torchrun's and dcgan-train's own parsers accept the arguments, and --out
    is on the ReadWriteMany volume every pod mounts and the image's user can write."""
    import torch.distributed.run as torchrun

    from training.cli import build_parser
    from service.settings import from_args
    from training.config import TrainConfig
    docs = _built("deploy/kubernetes/training")
    job = _by_kind(docs, "Job")[0]
    [service] = _by_kind(docs, "Service")
    [claim] = _by_kind(docs, "PersistentVolumeClaim")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [container] = pod["containers"]
    assert container["command"] == ["torchrun"]
    args = torchrun.get_args_parser().parse_args(container["args"])
    host, port = args.rdzv_endpoint.split(":")
    # Pod 0 of the Job, by the name Kubernetes gives Indexed Job pods, under the Service.
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] \
        == container["ports"][0]["containerPort"]
    assert args.rdzv_backend == "c10d" and args.max_restarts > 0
    assert args.nnodes.split(":")[-1] == str(spec["completions"]) and args.nproc_per_node == "1"
    assert args.module and args.training_script == "training"
    train = build_parser().parse_args(args.training_script_args)
    assert train.command == "train" and train.continue_run  # a restarted worker resumes
    config = from_args(TrainConfig, train)
    config.validate()  # as `dcgan-train train` checks its flags
    [mount] = container["volumeMounts"]
    [volume] = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert config.out.startswith(mount["mountPath"] + "/")
    assert config.data_dir.startswith(mount["mountPath"] + "/")
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 10001
    assert "AS train" in (ROOT / "Dockerfile").read_text()
    # It trains the shipped recipe: the README's training command, but for where it writes,
    # what it prints and how it checkpoints.
    readme = re.search(r"dcgan-train (train [^\n]*)", (ROOT / "README.md").read_text())[1]
    shipped = from_args(TrainConfig, build_parser().parse_args(readme.split()))
    operational = {"out", "data_dir", "progress", "checkpoint_every", "continue_run", "threads"}
    differ = {k for k, v in vars(config).items() if k not in operational
              and v != getattr(shipped, k)}
    assert not differ, {k: (getattr(config, k), getattr(shipped, k)) for k in differ}
