"""deploy/k8s: the kustomize base and its overlays render, validate offline against the Kubernetes schemas with
no unknown field (kubernetes-validate, strict), and say what compose says (images, commands, grace periods).

kustomize itself is not needed: `render` below is the small subset the overlays use (resources, strategic-merge
patches of Deployments by kind and name, common labels), so CI needs no binary. KEDA's ScaledObject is not in
the Kubernetes schemas: its structure is checked here. Every PromQL query of the ScaledObjects and of the HPA
overlay's prometheus-adapter rules runs against a real Prometheus in tests/ops/test_prometheus.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("base", "overlays/keda", "overlays/hpa")
KUBERNETES_VERSION = "1.30.0"
GPU_GROUPS = {"unipic-worker-l", "unipic-worker-xl"}


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge for what our patches use: maps merge, lists of named maps merge by name, else replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x
                                                                  for x in base + patch):
        by_name = {x["name"]: x for x in base}
        for item in patch:
            by_name[item["name"]] = _merge(by_name[item["name"]], item) if item["name"] in by_name else item
        return list(by_name.values())
    return patch


def render(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize DIRECTORY` prints, for the features our kustomizations use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "patches", "labels"}, kustomization
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch_ref in kustomization.get("patches", []):
        assert set(patch_ref) == {"path"}, patch_ref
        for patch in yaml.safe_load_all((directory / patch_ref["path"]).read_text()):
            target = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"])
                      == (patch["kind"], patch["metadata"]["name"])]
            assert len(target) == 1, patch["metadata"]
            docs[target[0]] = _merge(docs[target[0]], patch)
    for label in kustomization.get("labels", []):
        assert set(label) == {"pairs"}, label  # metadata labels only (no selectors), as kustomize's `labels`
        for doc in docs:
            doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **label["pairs"]}
    return docs


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            found += [(doc["metadata"]["name"], c) for c in doc["spec"]["template"]["spec"]["containers"]]
    return found


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_scaled_objects_scale_each_gpu_group_from_zero
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # strict: no unknown field
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_layout_is_complete_and_secrets_are_only_referenced(rendered: list[dict[str, Any]]) -> None:
    assert set(by_kind(rendered, "Deployment")) == {"unipic-api", "unipic-webhooks", "unipic-beat", *GPU_GROUPS}
    assert set(by_kind(rendered, "Job")) == {"unipic-migrate"}
    assert set(by_kind(rendered, "PodDisruptionBudget")) == GPU_GROUPS
    assert not by_kind(rendered, "Secret")
    for name, container in containers(rendered):
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == ["unipic-secrets"], name
        for env in container.get("env", []):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|DATABASE_URL", env["name"]), (name, env["name"])


def test_images_and_commands_match_compose(rendered: list[dict[str, Any]]) -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]

    def image(service: str) -> str:
        return re.sub(r"\$\{UNIPIC_IMAGE_TAG:-([^}]+)\}", r"\1", services[service]["image"])

    expected = {"unipic-api": ("api", "api"), "unipic-webhooks": ("webhooks", "webhooks"),
                "unipic-beat": ("beat", "beat"), "unipic-migrate": ("migrate", "migrate")}
    for name, container in containers(rendered):
        if name in GPU_GROUPS:
            assert container["image"] == image("worker"), name
            assert container["command"][:2] == services["worker"]["command"][:2]
            continue
        service, _ = expected[name]
        assert container["image"] == image("api") == image(service), name
        assert container["command"] == services[service]["command"], name


def test_api_probes_and_cpu_autoscaling(rendered: list[dict[str, Any]]) -> None:
    pod = by_kind(rendered, "Deployment")["unipic-api"]["spec"]["template"]["spec"]
    api = pod["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # out of the Service before SIGTERM (which ends held requests at once: api.draining), then room for uploads
    pre_stop = float(api["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop > 0 and pod["terminationGracePeriodSeconds"] >= pre_stop + 30
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["unipic-api"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert by_kind(rendered, "Service")["unipic-api"]["spec"]["ports"][0]["port"] == 8000


def test_gpu_workers_drain_within_their_grace_and_beat_is_single(rendered: list[dict[str, Any]]) -> None:
    deployments = by_kind(rendered, "Deployment")
    for name in GPU_GROUPS:
        pod = deployments[name]["spec"]["template"]["spec"]
        worker = pod["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {m["mountPath"] for m in worker["volumeMounts"]} == {"/models"}
        env = {e["name"]: e["value"] for e in worker["env"]}
        assert env["HF_HOME"] == "/models"
        drain = float(env["UNIPIC_WORKER_SHUTDOWN_GRACE_SECONDS"])
        pre_stop = float(worker["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10, name
        assert "--queues" in worker["command"]
    beat = deployments["unipic-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"


def test_the_ingress_exposes_the_api_and_the_worker_gateway_over_tls(rendered: list[dict[str, Any]]) -> None:
    ingress = by_kind(rendered, "Ingress")["unipic"]
    paths = {p["path"]: p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths == {"/": "unipic-api", "/v1/worker": "unipic-api"}
    assert ingress["spec"]["tls"][0]["secretName"]
    body = re.search(r"client_max_body_size (\S+);", (REPO / "deploy/nginx.conf").read_text())
    assert body and ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == body.group(1)


def scaled_objects() -> list[dict[str, Any]]:
    return [d for d in render(K8S / "overlays/keda") if d["kind"] == "ScaledObject"]


def adapter_queries() -> list[str]:
    config = by_kind(render(K8S / "overlays/hpa"), "ConfigMap")["unipic-prometheus-adapter-rules"]
    return [rule["metricsQuery"] for rule in yaml.safe_load(config["data"]["config.yaml"])["externalRules"]]


def scaling_queries() -> list[str]:
    """Every PromQL query that scales GPU workers (tests/ops/test_prometheus.py runs each)."""
    keda = [t["metadata"]["query"] for so in scaled_objects() for t in so["spec"]["triggers"]]
    return keda + adapter_queries()


def test_scaled_objects_scale_each_gpu_group_from_zero() -> None:
    docs = render(K8S / "overlays/keda")
    objects = by_kind(docs, "ScaledObject")
    assert set(objects) == GPU_GROUPS
    deployments = by_kind(docs, "Deployment")
    for name, so in objects.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                             "cooldownPeriod", "advanced", "triggers"}, spec
        assert spec["scaleTargetRef"] == {"name": name} and name in deployments
        assert deployments[name]["spec"]["replicas"] == 0
        assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
        assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0
        assert set(spec["advanced"]) == {"horizontalPodAutoscalerConfig"}
        metrics = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus" and set(trigger) == {"type", "name", "metadata"}
            meta = trigger["metadata"]
            assert set(meta) == {"serverAddress", "query", "threshold", "activationThreshold"}, meta
            assert float(meta["threshold"]) > 0 and float(meta["activationThreshold"]) == 0
            assert meta["serverAddress"].startswith("http")
            metrics |= set(re.findall(r"unipic_[a-z_]+", meta["query"]))
        assert metrics == {"unipic_queue_jobs", "unipic_running_jobs", "unipic_queue_oldest_age_seconds"}, name


def test_the_hpa_alternative_scales_the_same_groups_on_the_same_queries() -> None:
    docs = render(K8S / "overlays/hpa")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == GPU_GROUPS | {"unipic-api"}
    assert sorted(adapter_queries()) == sorted(t["metadata"]["query"] for so in scaled_objects()
                                               for t in so["spec"]["triggers"])
    rules = yaml.safe_load(by_kind(docs, "ConfigMap")["unipic-prometheus-adapter-rules"]["data"]["config.yaml"])
    names = {rule["name"]["as"] for rule in rules["externalRules"]}
    for name in GPU_GROUPS:
        used = {m["external"]["metric"]["name"] for m in hpas[name]["spec"]["metrics"]}
        assert used and used <= names, name
