"""The part of kustomize that deploy/k8s uses, in Python, so the manifests render and validate in
any test run (``kubectl kustomize`` is not on every machine; where it is, the tests check that
both render the same objects).

Supported: ``resources`` (files and folders with their own kustomization), ``namespace``,
``images`` (newName/newTag), ``replicas``, ``configMapGenerator`` (files, literals; the name gets
kustomize's content-hash suffix and every reference in pod specs follows), ``patches`` given
inline as JSON 6902 operations with a kind/name target. Anything else is an error, so a
kustomization using more cannot silently render differently.

Example::

    docs = render(Path("deploy/k8s/overlays/cpu"))   # list of dicts, like kubectl kustomize
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "resources", "images", "replicas",
         "configMapGenerator", "patches"}
WORKLOADS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass"}


class Unsupported(ValueError):
    pass


def render(folder: Path) -> list[dict[str, Any]]:
    """Build the kustomization in ``folder``; returns the objects."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    extra = set(k) - KNOWN
    if extra:
        raise Unsupported(f"{folder}: kustomize features not supported here: {sorted(extra)}")
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = folder / res
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    generated = [_configmap(folder, g, k.get("namespace")) for g in k.get("configMapGenerator", [])]
    docs += [cm for cm, _ in generated]
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    names = {base: cm["metadata"]["name"] for cm, base in generated}
    for d in docs:
        _rename_configmap_refs(d, names)
        _images(d, k.get("images", []))
    for r in k.get("replicas", []):
        found = [d for d in docs if d["metadata"]["name"] == r["name"] and d["kind"] in WORKLOADS]
        if len(found) != 1:
            raise Unsupported(f"replicas: {len(found)} workloads named {r['name']}")
        found[0]["spec"]["replicas"] = r["count"]
    for p in k.get("patches", []):
        if "patch" not in p or "path" in p:
            raise Unsupported("only inline JSON 6902 patches are supported")
        obj = _target(docs, p["target"].get("kind"), p["target"]["name"])
        for op in yaml.safe_load(p["patch"]):
            _apply(obj, op)
    return docs


def _target(docs: list[dict[str, Any]], kind: str | None, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["metadata"]["name"] == name and kind in (None, d["kind"])]
    if len(found) != 1:
        raise Unsupported(f"target {kind}/{name}: {len(found)} objects match")
    return found[0]


# ---------------------------------------------------------------------------- generators

def _configmap(folder: Path, g: dict[str, Any], namespace: str | None
               ) -> tuple[dict[str, Any], str]:
    if set(g) - {"name", "namespace", "files", "literals"}:
        raise Unsupported(f"configMapGenerator options {sorted(set(g))}")
    data: dict[str, str] = {}
    for f in g.get("files", []):
        data[Path(f).name] = (folder / f).read_text()
    for lit in g.get("literals", []):
        key, _, value = lit.partition("=")
        data[key] = value
    name = f"{g['name']}-{config_map_hash(g['name'], data)}"
    meta: dict[str, Any] = {"name": name}
    if g.get("namespace") or namespace:
        meta["namespace"] = g.get("namespace") or namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}, g["name"]


def config_map_hash(name: str, data: dict[str, str]) -> str:
    """A 10-character content hash for the generated name, in kustomize's alphabet (its exact
    digits differ: the comparison with kubectl masks them, see ``mask_generated``)."""
    text = json.dumps({"data": data, "kind": "ConfigMap", "name": name}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def mask_generated(obj: Any, bases: set[str]) -> Any:
    """``obj`` with every ``<generated base>-<hash>`` name written ``<base>-HASH``."""
    if isinstance(obj, dict):
        return {k: mask_generated(v, bases) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_generated(v, bases) for v in obj]
    if isinstance(obj, str):
        base, _, suffix = obj.rpartition("-")
        if base in bases and len(suffix) == 10 and suffix.isalnum():
            return f"{base}-HASH"
    return obj


def _pod_specs(d: dict[str, Any]) -> list[dict[str, Any]]:
    spec = d.get("spec", {})
    if d["kind"] == "Pod":
        return [spec]
    tpl = spec.get("template", {}).get("spec")
    return [tpl] if tpl else []


def _rename_configmap_refs(d: dict[str, Any], names: dict[str, str]) -> None:
    for pod in _pod_specs(d):
        for v in pod.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] in names:
                v["configMap"]["name"] = names[v["configMap"]["name"]]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] in names:
                    ref["name"] = names[ref["name"]]
            for e in c.get("envFrom", []):
                ref = e.get("configMapRef")
                if ref and ref["name"] in names:
                    ref["name"] = names[ref["name"]]


def _images(d: dict[str, Any], images: list[dict[str, str]]) -> None:
    for pod in _pod_specs(d):
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for im in images:
                if c["image"].split(":")[0] == im["name"]:
                    c["image"] = f"{im.get('newName', im['name'])}:{im['newTag']}"


# ---------------------------------------------------------------------------- JSON 6902

def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _apply(obj: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = _pointer(op["path"])
    node: Any = obj
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    kind = op["op"]
    if kind == "test":
        have = node[int(last)] if isinstance(node, list) else node[last]
        if have != op["value"]:
            raise Unsupported(f"test failed at {op['path']}: {have!r} != {op['value']!r}")
    elif kind in ("add", "replace"):
        value = copy.deepcopy(op["value"])
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif kind == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        else:
            if kind == "replace" and last not in node:
                raise Unsupported(f"replace of a missing {op['path']}")
            node[last] = value
    elif kind == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise Unsupported(f"JSON patch op {kind!r}")
