"""The Kubernetes manifests (deploy/k8s): every overlay renders, every object validates against
the Kubernetes schemas offline (kubernetes-validate, strict: unknown fields are errors), and the
rendered workers keep the sharding contract (replicas = shards, ordinal from the pod, probes on
the health endpoints, /dev/shm in memory with a limit, secrets from Secrets)."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from kustomize_lite import Unsupported, mask_generated, render
from referencing import Registry, Resource

from pipeline.config import config_from_dict
from pipeline.shard import parse_shard

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
BUILDS = ["base", "overlays/cpu", "overlays/gpu"]
GENERATED = {"crowdstream-site", "crowdstream-settings"}
SECRETS = {"crowdstream-redis", "crowdstream-console", "crowdstream-cameras"}  # README, Deploy
K8S_VERSION = latest_version()
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
META = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1."

# monitoring.coreos.com/v1 ServiceMonitor is a CRD, not in the Kubernetes schemas: the fields we
# use, typed as the Prometheus Operator's CRD types them, nothing else allowed
SERVICE_MONITOR = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://kubernetes.io/api/servicemonitor/v1",  # the Kubernetes refs resolve from here
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"$ref": META + "ObjectMeta"},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"$ref": META + "LabelSelector"},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array",
                                                                    "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "scheme": {"enum": ["http", "https"]},
                                   "interval": {"type": "string", "pattern": DURATION},
                                   "scrapeTimeout": {"type": "string", "pattern": DURATION},
                                   "honorLabels": {"type": "boolean"}}}},
            },
        },
    },
}


def k8s_definitions() -> Registry:
    path = (importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
            / f"v{K8S_VERSION}-local-strict" / "_definitions.json")
    return Resource.from_contents(json.loads(path.read_text())) @ Registry()


def validate(doc: dict[str, Any]) -> None:
    """Kubernetes kinds with kubernetes-validate (strict); the ServiceMonitor with its schema."""
    if doc["kind"] == "ServiceMonitor":
        jsonschema.Draft202012Validator(SERVICE_MONITOR, registry=k8s_definitions()).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module", params=BUILDS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / request.param)


def of(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return of(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_every_manifest_validates_against_the_kubernetes_schemas(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    build, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "Service", "StatefulSet", "Deployment", "Service",
                            "ServiceMonitor", "ConfigMap"]
                           + (["ConfigMap"] if build != "base" else [])), kinds
    for d in docs:
        validate(d)
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "crowdstream", d["metadata"]


@pytest.mark.parametrize("kind, mutate, message", [
    ("StatefulSet", lambda d: d["spec"].__setitem__("replicas", "3"), "is not of type"),
    ("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__(
        "livenessProbes", {}), "Additional properties"),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("interval", "15 s"),
     "does not match"),
    ("ServiceMonitor", lambda d: d["spec"].__setitem__("endpoint", []), "Additional properties"),
])
def test_the_validation_catches_mistakes(kind: str, mutate: Any, message: str) -> None:
    doc = json.loads(json.dumps(next(d for d in render(K8S / "base") if d["kind"] == kind)))
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate(doc)


def test_workers_shard_by_pod_ordinal_with_probes_shm_and_secrets(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    build, docs = rendered
    sts = of(docs, "StatefulSet", "crowdstream-worker")
    c = container(docs, "StatefulSet", "crowdstream-worker")
    e = env(c)
    assert sts["spec"]["replicas"] == int(e["CROWDSTREAM_SHARDS"]), "replicas != shards"
    assert e["CROWDSTREAM_SHARD"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    # the args as the kubelet expands $(VAR), then parsed as the worker does, pod by pod
    n = sts["spec"]["replicas"]
    args = [a.replace("$(CROWDSTREAM_SHARDS)", e["CROWDSTREAM_SHARDS"]) for a in c["args"]]
    assert args[:2] == ["run", "/etc/crowdstream/site.yaml"]
    spec = args[args.index("--shard") + 1]
    assert [parse_shard(spec, {}, f"crowdstream-worker-{i}").index for i in range(n)] == \
        list(range(n))
    assert [parse_shard(spec, {"CROWDSTREAM_SHARD": str(i)}, "x").index for i in range(n)] == \
        list(range(n))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9108}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"]
    assert volumes[mounts["/etc/crowdstream"]]["configMap"]["name"].startswith("crowdstream-site")
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    referenced = {v["secretKeyRef"]["name"] for v in e.values()
                  if isinstance(v, dict) and "secretKeyRef" in v}
    referenced |= {f["secretRef"]["name"] for f in c.get("envFrom", []) if "secretRef" in f}
    assert referenced <= SECRETS and "crowdstream-redis" in referenced
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets never live in git"
    gpu = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpu == 1) == (build == "overlays/gpu")
    if build == "overlays/gpu":
        assert e["CROWDSTREAM_DEVICE"] == "cuda" and c["image"].endswith(":gpu")


def test_console_service_monitor_and_site_config(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    build, docs = rendered
    console = container(docs, "Deployment", "crowdstream-console")
    assert console["args"][0] == "serve" and "--token-env" in console["args"]
    port = console["ports"][0]
    assert of(docs, "Service", "crowdstream-console")["spec"]["ports"][0]["targetPort"] == \
        port["name"]
    assert console["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    svc = of(docs, "Service", "crowdstream-worker")
    mon = of(docs, "ServiceMonitor", "crowdstream-worker")
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in mon["spec"]["selector"]["matchLabels"].items())
    assert {p["name"] for p in svc["spec"]["ports"]} >= {ep["port"] for ep in
                                                           mon["spec"]["endpoints"]}
    assert svc["spec"]["clusterIP"] == "None"
    # the site config loads with the same loader as `crowdstream run`, given the pod's env
    (site,) = [d for d in docs if d["metadata"]["name"].startswith("crowdstream-site")]
    raw = yaml.safe_load(site["data"]["site.yaml"])
    old = {k: os.environ.get(k) for k in ("CROWDSTREAM_REDIS_URL", "CROWDSTREAM_DEVICE")}
    os.environ["CROWDSTREAM_REDIS_URL"] = "redis://valkey-cluster.redis:6379"
    os.environ["CROWDSTREAM_DEVICE"] = "cuda"
    try:
        cfg = config_from_dict(raw, file="site.yaml")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert cfg.redis.cluster and cfg.redis.password_env == "REDIS_PASSWORD"
    assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port == 9108
    assert cfg.model.device == "cuda" and len(cfg.cameras) >= 2


def test_unsupported_kustomize_features_are_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(Unsupported, match="commonLabels"):
        render(tmp_path)


@pytest.mark.skipif(shutil.which("kubectl") is None,
                    reason="kubectl not installed: the kustomize comparison needs it")
@pytest.mark.parametrize("build", BUILDS)
def test_kubectl_kustomize_renders_the_same_objects(build: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / build)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr

    def key(d: dict[str, Any]) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    theirs = sorted(mask_generated([d for d in yaml.safe_load_all(out.stdout) if d], GENERATED),
                    key=key)
    mine = sorted(mask_generated(render(K8S / build), GENERATED), key=key)
    assert mine == theirs
