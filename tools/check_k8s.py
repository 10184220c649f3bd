#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests in deploy/kubernetes (no cluster needed).

Run from anywhere:  python3 tools/check_k8s.py              (exit 1 on any problem)
                    python3 tools/check_k8s.py --self-test  (breaks a copy, expects failures)

Rendering. The kustomizations are rendered here, by a minimal renderer of the kustomize
features deploy/kubernetes uses: `resources` (files and directories), `components`,
`namespace`, `configMapGenerator` (files and literals; behavior create, replace, merge;
kustomize's content-hash name suffix, with the references to it rewritten),
`images`, and `patches` (strategic merge with the merge keys of the pod and service
fields used here, `$patch: delete` on list elements, or JSON 6902 add, remove,
replace and test), applied in kustomize's order (resources, components, generators,
patches, namespace, images). Any other kustomization field is an error that says the
renderer lacks it. When `kubectl` is on PATH, `kubectl kustomize` renders each
kustomization too and the two object sets must be equal.

Renderings: base, overlays/aws, examples/monitoring-and-keda (the base with both
components); examples/hpa.yaml is a plain manifest checked beside the base. Every
YAML file under deploy/kubernetes must be reached by one of them.

Schemas. Built-in kinds are validated with the `kubernetes-validate` package
(pinned in tests/requirements.txt) in strict mode (unknown fields are errors) for
Kubernetes KUBERNETES_VERSION. The ServiceMonitor (monitoring.coreos.com/v1) and the
ScaledObject (keda.sh/v1alpha1) are custom resources it does not know: they are
checked against excerpts of their upstream schemas embedded below, covering the
fields these manifests use, with the upstream meaning of each; any other field is
an error, so a new field must be added to the excerpt deliberately.

Cross-checks, for every rendering:
  * every ConfigMap, Secret and ServiceAccount the Deployment names exists in the
    rendering (the local KEK Secret, created out of band, is the one exception and
    docs/KUBERNETES.md must say how to create it); every namespaced object is in the
    rendering's Namespace;
  * Service, PodDisruptionBudget and ServiceMonitor selectors match the pods; the
    Service's and ServiceMonitor's ports and the probes' port exist;
  * probes: startup and liveness on /health/live, readiness on /health/ready;
  * container args, FIELDCRYPT_LOG_FORMAT=json, POD_NAME from metadata.name;
  * hardening: runAsNonRoot, runAsUser 10001, RuntimeDefault seccomp, and for every
    container no privilege escalation, a read-only root filesystem, all
    capabilities dropped; requests for CPU and memory and a memory limit;
    replicas spread over nodes;
  * fieldcrypt.toml, read from the ConfigMap the --config path resolves to, parses
    (tomllib), uses only keys docs/CONFIG.md documents, sets workers, listens on all
    interfaces on the `metrics` port, names every file by an absolute path that the
    pod provides (a ConfigMap or Secret key, or a schema the image ships), has every
    ${VAR} without a default in the container's environment, and has a drain timeout
    shorter than terminationGracePeriodSeconds by a margin;
  * local KEK: a top-level file of a Secret (or projected) volume with mode 0400,
    mounted readOnly and whole (no subPath: it would bypass the ..data symlink), in a
    pod whose fsGroup is the image's group 10001; the kubelet then makes the file
    root:10001 0440, the one group-readable KEK fieldcrypt accepts (see
    deploy/kubernetes/base/deployment.yaml). A memory-backed emptyDir that an init
    container fills with a 0400 copy is accepted too. aws: no Secret at all, and the
    ServiceAccount carries the IRSA role annotation;
  * KEDA / HPA: the target is the Deployment, which has no `replicas`; the maximum is
    the source partitions (annotation fieldcrypt/source-partitions) / workers; the
    lag query selects this namespace and the Service's job.
  And overall: overlays/aws/fieldcrypt.toml equals the base's except for [kms].

Needs Python 3.11+ (tomllib), PyYAML, kubernetes-validate (and its jsonschema).
"""

import argparse
import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

from config_keys import documented_config_keys, undocumented

try:
    import jsonschema
    import kubernetes_validate
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(
        f"check_k8s.py needs kubernetes-validate ({e}): "
        "python3 -m pip install -r tests/requirements.txt"
    )

KUBERNETES_VERSION = "1.30"
IMAGE_UID = 10001  # Dockerfile: useradd --uid 10001
IMAGE_GID = 10001  # Dockerfile: groupadd --gid 10001
IMAGE_SCHEMAS = "/opt/fieldcrypt/schemas"  # Dockerfile: COPY schemas/ /opt/fieldcrypt/schemas/
CONFIG_ARG = "/etc/fieldcrypt/fieldcrypt.toml"
DRAIN_MARGIN_SECONDS = 15  # commit and client close after the drain
DEFAULT_DRAIN_SECONDS = 30  # docs/CONFIG.md, [pipeline] drain_timeout_seconds
RENDERINGS = ("base", "overlays/aws", "examples/monitoring-and-keda")
PLAIN_MANIFESTS = ("examples/hpa.yaml",)
# Secrets the manifests use but never contain, with where the docs say how to make them.
OUT_OF_BAND_SECRETS = {
    "fieldcrypt-kek": "kubectl create secret generic fieldcrypt-kek --from-file=kek.key=",
}
PARTITIONS_ANNOTATION = "fieldcrypt/source-partitions"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "APIService",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}

# ---------------------------------------------------------------- CRD schema excerpts

_DURATION = {
    "type": "string",
    # monitoring.coreos.com Duration: a Prometheus duration such as 15s or 1m30s.
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_HPA_RULES = {
    # autoscaling/v2 HPAScalingRules, which KEDA passes to the HPA it creates.
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # Seconds of past recommendations considered (0 to 3600).
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        # Which policy wins when several apply.
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    # Pods: a number of pods; Percent: a percentage of the current count.
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    # The window the policy holds over (1 to 1800 s).
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
            },
        },
    },
}

CRD_SCHEMAS = {
    # Prometheus Operator ServiceMonitor (monitoring.coreos.com/v1): which Services
    # Prometheus scrapes and how.
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                # Upstream requires selector; endpoints is what gets scraped.
                "required": ["selector", "endpoints"],
                "properties": {
                    # Label selector for the Services whose endpoints are scraped.
                    "selector": _LABEL_SELECTOR,
                    # Namespaces to look for those Services in (default: the
                    # ServiceMonitor's own).
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    # Service label whose value becomes the job label (default: the
                    # Service's name).
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                # Name of the Service port to scrape.
                                "port": {"type": "string"},
                                # HTTP path to scrape (Prometheus' default: /metrics).
                                "path": {"type": "string"},
                                # http or https.
                                "scheme": {"enum": ["http", "https"]},
                                # How often to scrape (default: the global interval).
                                "interval": _DURATION,
                                # When a scrape counts as failed; not above interval.
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
    # KEDA ScaledObject (keda.sh/v1alpha1): KEDA creates and drives an HPA for the
    # target from its triggers.
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    # The workload to scale (default kind Deployment, apps/v1).
                    "scaleTargetRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    # Seconds between trigger checks (default 30).
                    "pollingInterval": _INT32,
                    # Seconds after the last active trigger before scaling to zero
                    # (only with minReplicaCount 0).
                    "cooldownPeriod": _INT32,
                    # Replica bounds of the HPA KEDA creates.
                    "minReplicaCount": _INT32,
                    "maxReplicaCount": _INT32,
                    # Replicas to hold when the scaler keeps failing.
                    "fallback": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["failureThreshold", "replicas"],
                        "properties": {"failureThreshold": _INT32, "replicas": _INT32},
                    },
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            # Whether deleting the ScaledObject restores the original count.
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    # The HPA's behavior (autoscaling/v2).
                                    "behavior": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                                    },
                                },
                            },
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                # The scaler: prometheus, kafka, cpu, ...
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                # The scaler's parameters: strings only (upstream
                                # schema: additionalProperties type string).
                                "metadata": _STRING_MAP,
                                # How the HPA compares the value to the threshold
                                # (default AverageValue: per replica).
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "authenticationRef": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
# KEDA's prometheus scaler: the metadata keys it reads.
PROMETHEUS_TRIGGER_REQUIRED = {"serverAddress", "query", "threshold"}
PROMETHEUS_TRIGGER_KNOWN = PROMETHEUS_TRIGGER_REQUIRED | {
    "activationThreshold", "namespace", "customHeaders", "ignoreNullValues",
    "unsafeSsl", "queryParameters", "authModes",
}


# ---------------------------------------------------------------- small helpers


class RenderError(Exception):
    """A kustomization this renderer cannot (or kustomize would not) render."""


def load_yaml_docs(path):
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        raise RenderError(f"{path}: not valid YAML: {e}") from e
    for d in docs:
        if not isinstance(d, dict):
            raise RenderError(f"{path}: a document is not a mapping")
    return docs


def obj_id(o):
    md = o.get("metadata") or {}
    return (o.get("kind"), md.get("namespace") or "", md.get("name"))


def describe(o):
    kind, ns, name = obj_id(o)
    return f"{kind} {ns + '/' if ns else ''}{name}"


def group_of(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def version_of(api_version):
    return api_version.split("/")[-1]


def go_json(value):
    """encoding/json.Marshal of maps: sorted keys, no spaces, HTML characters escaped."""
    s = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s


def configmap_hash(cm):
    """kustomize's name suffix for a generated ConfigMap (api/hasher/hasher.go).

    kustomize looks the name up as the single path segment "metadata/name", which
    finds nothing, so the name enters the hash as "".
    """
    m = {"kind": "ConfigMap", "name": "", "data": cm.get("data") or {}}
    if cm.get("binaryData"):
        m["binaryData"] = cm["binaryData"]
    digest = hashlib.sha256(go_json(m).encode()).hexdigest()
    return digest[:10].translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def parse_quantity(q):
    """A Kubernetes quantity as a float in base units (cores, bytes)."""
    s = str(q)
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", s)
    if not m:
        raise ValueError(f"not a quantity: {q!r}")
    suffixes = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    if m.group(2) not in suffixes:
        raise ValueError(f"unknown quantity suffix in {q!r}")
    return float(m.group(1)) * suffixes[m.group(2)]


def pod_templates(o):
    """The pod spec of a workload object, if it is one."""
    kind = o.get("kind")
    spec = o.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [(spec.get("template") or {}).get("spec") or {}]
    if kind == "CronJob":
        return [((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec") or {}]
    if kind == "Pod":
        return [spec]
    return []


def all_containers(pod_spec):
    return list(pod_spec.get("initContainers") or []) + list(pod_spec.get("containers") or [])


def selector_matches(selector, labels):
    """A label selector (matchLabels only, or a plain map) against labels."""
    if not selector:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        if selector.get("matchExpressions"):
            return False  # not used here; refuse rather than guess
        selector = selector.get("matchLabels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- strategic merge patch

# Merge keys of the built-in list fields these manifests patch (from the Kubernetes
# API's patchMergeKey tags). Lists not named here are replaced whole, as kustomize
# does for lists without a merge key.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "volumeMounts": "mountPath",
    "imagePullSecrets": "name", "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip", "tolerations": None,
}


def merge_key_for(path, field, builtin):
    if not builtin:
        return None  # custom resources: kustomize has no merge keys for them
    if field == "ports":
        # container ports merge on containerPort, a Service's on port
        return "containerPort" if any(p in ("containers", "initContainers") for p in path) else "port"
    return MERGE_KEYS.get(field)


def smp_merge(orig, patch, path=(), builtin=True):
    """Strategic-merge `patch` into `orig` (both mappings); returns the result."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive is not None:
        raise RenderError(f"strategic merge directive $patch: {directive} is not supported by check_k8s.py")
    result = copy.deepcopy(orig) if isinstance(orig, dict) else {}
    for key, pv in patch.items():
        if key.startswith("$"):
            raise RenderError(f"strategic merge directive {key} is not supported by check_k8s.py")
        if pv is None:
            result.pop(key, None)
        elif isinstance(pv, dict):
            merged = smp_merge(result.get(key), pv, path + (key,), builtin)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(pv, list):
            mk = merge_key_for(path, key, builtin)
            ov = result.get(key)
            if mk and isinstance(ov, list) and all(isinstance(e, dict) for e in pv + ov):
                result[key] = smp_merge_list(ov, pv, mk, path + (key,), builtin)
            else:
                result[key] = [e for e in copy.deepcopy(pv) if not (isinstance(e, dict) and e.get("$patch") == "delete")]
        else:
            result[key] = pv
    return result


def smp_merge_list(orig, patch, key, path, builtin):
    """kustomize's order: the patch's elements first (merged with their originals),
    then the originals the patch does not name; `$patch: delete` removes one."""
    by_key = {e.get(key): e for e in orig}
    named = set()
    out = []
    for pe in patch:
        k = pe.get(key)
        if k is None:
            raise RenderError(f"patch element of {'/'.join(path)} has no merge key {key}")
        named.add(k)
        if pe.get("$patch") == "delete":
            continue
        out.append(smp_merge(by_key.get(k, {}), pe, path + ("*",), builtin))
    out.extend(copy.deepcopy(e) for e in orig if e.get(key) not in named)
    return out


# ---------------------------------------------------------------- JSON 6902


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json6902(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if not parts:
            raise RenderError("JSON patch on the whole document is not supported")
        parent = doc
        for p in parts[:-1]:
            try:
                parent = parent[int(p)] if isinstance(parent, list) else parent[p]
            except (KeyError, IndexError, ValueError) as e:
                raise RenderError(f"JSON patch {kind} {op.get('path')}: no such path") from e
        last = parts[-1]
        try:
            if kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            elif kind in ("add", "replace"):
                value = copy.deepcopy(op["value"])
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(value)
                    elif kind == "add":
                        parent.insert(int(last), value)
                    else:
                        parent[int(last)] = value
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = value
            elif kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op.get("value"):
                    raise RenderError(f"JSON patch test {op.get('path')}: {current!r} is not {op.get('value')!r}")
            else:
                raise RenderError(f"JSON patch op {kind!r} is not supported by check_k8s.py")
        except (KeyError, IndexError, ValueError) as e:
            raise RenderError(f"JSON patch {kind} {op.get('path')}: no such path") from e
    return doc


# ---------------------------------------------------------------- the renderer


class Res:
    """A resource being rendered; generated ones get a hash suffix at the end."""

    def __init__(self, obj, generated=False):
        self.obj = obj
        self.generated = generated


KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "namespace", "resources", "components",
    "configMapGenerator", "images", "patches",
}
GENERATOR_FIELDS = {"name", "namespace", "behavior", "files", "literals"}


def find_kustomization(d):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (d / name).is_file():
            return d / name
    raise RenderError(f"{d}: no kustomization.yaml")


def read_kustomization(d, want_kind, used_files):
    path = find_kustomization(d)
    used_files.add(path.resolve())
    docs = load_yaml_docs(path)
    if len(docs) != 1:
        raise RenderError(f"{path}: expected one document")
    k = docs[0]
    kind = k.get("kind", "Kustomization")
    if kind != want_kind:
        raise RenderError(f"{path}: kind {kind}, expected {want_kind}")
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(
            f"{path}: {', '.join(sorted(unknown))}: not implemented by check_k8s.py's renderer "
            "(extend it, or use a feature it renders)"
        )
    return path, k


def build(d, used_files, want_kind="Kustomization"):
    """Renders kustomization directory `d` up to (not including) the hash suffixes."""
    path, k = read_kustomization(d, want_kind, used_files)
    resources = []
    for entry in k.get("resources") or []:
        target = (d / entry).resolve()
        if target.is_dir():
            resources.extend(build(target, used_files))
        elif target.is_file():
            used_files.add(target)
            resources.extend(Res(o) for o in load_yaml_docs(target))
        else:
            raise RenderError(f"{path}: resource {entry} does not exist")
    apply_kustomization(d, path, k, resources, used_files)
    return resources


def apply_kustomization(d, path, k, resources, used_files):
    """kustomize's order: (resources, already in `resources`), components, generators,
    transformers. A component's generators and patches act on everything so far."""
    for entry in k.get("components") or []:
        cdir = (d / entry).resolve()
        if not cdir.is_dir():
            raise RenderError(f"{path}: component {entry} is not a directory")
        cpath, ck = read_kustomization(cdir, "Component", used_files)
        for rentry in ck.get("resources") or []:
            target = (cdir / rentry).resolve()
            if target.is_dir():
                resources.extend(build(target, used_files))
            elif target.is_file():
                used_files.add(target)
                resources.extend(Res(o) for o in load_yaml_docs(target))
            else:
                raise RenderError(f"{cpath}: resource {rentry} does not exist")
        ck = {key: v for key, v in ck.items() if key != "resources"}
        apply_kustomization(cdir, cpath, ck, resources, used_files)
    generate(d, path, k, resources, used_files)
    transform(d, path, k, resources, used_files)


def generate(d, path, k, resources, used_files):
    for g in k.get("configMapGenerator") or []:
        unknown = set(g) - GENERATOR_FIELDS
        if unknown:
            raise RenderError(f"{path}: configMapGenerator {g.get('name')}: {', '.join(sorted(unknown))} not implemented by check_k8s.py")
        name = g.get("name")
        if not name:
            raise RenderError(f"{path}: a configMapGenerator has no name")
        data = {}
        for f in g.get("files") or []:
            key, _, rel = f.partition("=") if "=" in f else (Path(f).name, "", f)
            fp = (d / rel).resolve()
            if not fp.is_file():
                raise RenderError(f"{path}: configMapGenerator {name}: file {rel} does not exist")
            used_files.add(fp)
            data[key] = fp.read_text()
        for lit in g.get("literals") or []:
            key, sep, value = lit.partition("=")
            if not sep:
                raise RenderError(f"{path}: configMapGenerator {name}: literal {lit!r} is not KEY=VALUE")
            data[key] = value
        ns = g.get("namespace") or k.get("namespace") or ""
        behavior = g.get("behavior", "create")
        existing = [r for r in resources if r.obj.get("kind") == "ConfigMap"
                    and r.obj["metadata"].get("name") == name
                    and (r.obj["metadata"].get("namespace") or "") == ns]
        if behavior == "create":
            if existing:
                raise RenderError(f"{path}: configMapGenerator {name} (create): a ConfigMap of that name already exists; use behavior merge or replace")
            md = {"name": name}
            if g.get("namespace"):
                md["namespace"] = g["namespace"]
            resources.append(Res({"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": data}, generated=True))
        elif behavior in ("replace", "merge"):
            if len(existing) != 1:
                raise RenderError(
                    f"{path}: configMapGenerator {name} (behavior {behavior}): no ConfigMap {name} in namespace "
                    f"{ns or '(none)'} to {behavior} (set the kustomization's namespace to the base's)"
                )
            cm = existing[0].obj
            cm["data"] = data if behavior == "replace" else {**(cm.get("data") or {}), **data}
        else:
            raise RenderError(f"{path}: configMapGenerator {name}: behavior {behavior!r} is not create, replace or merge")


def patch_targets(resources, target, path):
    out = []
    for r in resources:
        o = r.obj
        api = o.get("apiVersion", "")
        md = o.get("metadata") or {}
        if "group" in target and group_of(api) != target["group"]:
            continue
        if "version" in target and version_of(api) != target["version"]:
            continue
        if "kind" in target and o.get("kind") != target["kind"]:
            continue
        if "name" in target and md.get("name") != target["name"]:
            continue
        if "namespace" in target and (md.get("namespace") or "") != target["namespace"]:
            continue
        unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
        if unknown:
            raise RenderError(f"{path}: patch target {', '.join(sorted(unknown))} not implemented by check_k8s.py")
        out.append(r)
    return out


def transform(d, path, k, resources, used_files):
    # patches
    for p in k.get("patches") or []:
        unknown = set(p) - {"path", "patch", "target"}
        if unknown:
            raise RenderError(f"{path}: patch fields {', '.join(sorted(unknown))} not implemented by check_k8s.py")
        if "path" in p:
            pf = (d / p["path"]).resolve()
            if not pf.is_file():
                raise RenderError(f"{path}: patch file {p['path']} does not exist")
            used_files.add(pf)
            text, where = pf.read_text(), p["path"]
        elif "patch" in p:
            text, where = p["patch"], "inline patch"
        else:
            raise RenderError(f"{path}: a patch has neither path nor patch")
        try:
            body = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RenderError(f"{path}: {where}: not valid YAML: {e}") from e
        if isinstance(body, list):
            if "target" not in p:
                raise RenderError(f"{path}: {where}: a JSON 6902 patch needs a target")
            targets = patch_targets(resources, p["target"], path)
        elif isinstance(body, dict):
            target = p.get("target") or {
                "kind": body.get("kind"),
                "name": (body.get("metadata") or {}).get("name"),
            }
            targets = patch_targets(resources, target, path)
        else:
            raise RenderError(f"{path}: {where}: neither a strategic merge patch nor a JSON 6902 patch")
        if not targets:
            raise RenderError(f"{path}: {where} matches no resource")
        for r in targets:
            if isinstance(body, list):
                r.obj = json6902(r.obj, body)
            else:
                patch = {key: v for key, v in body.items() if key not in ("apiVersion", "kind")}
                patch["metadata"] = {key: v for key, v in (patch.get("metadata") or {}).items() if key not in ("name", "namespace")}
                if not patch["metadata"]:
                    del patch["metadata"]
                builtin = "." not in group_of(r.obj.get("apiVersion", "")) or group_of(r.obj["apiVersion"]).endswith(".k8s.io")
                r.obj = smp_merge(r.obj, patch, (), builtin)
    # namespace
    ns = k.get("namespace")
    if ns:
        for r in resources:
            if r.obj.get("kind") not in CLUSTER_SCOPED:
                r.obj.setdefault("metadata", {})["namespace"] = ns
    # images
    for img in k.get("images") or []:
        unknown = set(img) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise RenderError(f"{path}: images fields {', '.join(sorted(unknown))} not implemented by check_k8s.py")
        for r in resources:
            for pod in pod_templates(r.obj):
                for c in all_containers(pod):
                    c["image"] = retag(c.get("image", ""), img)


def retag(image, entry):
    m = re.fullmatch(r"(?P<name>[^@:]+(?::\d+/[^@:]+)?)(?::(?P<tag>[^@]+))?(?:@(?P<digest>.+))?", image)
    if not m or m.group("name") != entry["name"]:
        return image
    name = entry.get("newName", m.group("name"))
    if entry.get("digest"):
        return f"{name}@{entry['digest']}"
    tag = entry.get("newTag", m.group("tag"))
    digest = m.group("digest")
    out = name + (f":{tag}" if tag else "")
    return out + (f"@{digest}" if digest and "newTag" not in entry else "")


def render(d, used_files):
    """Renders kustomization directory `d` as kustomize build would: a list of objects."""
    resources = build(d, used_files)
    renames = {}
    for r in resources:
        if r.generated:
            md = r.obj["metadata"]
            new = f"{md['name']}-{configmap_hash(r.obj)}"
            renames[(md.get("namespace") or "", md["name"])] = new
            md["name"] = new
    for r in resources:
        ns = r.obj.get("metadata", {}).get("namespace") or ""
        for pod in pod_templates(r.obj):
            rewrite_configmap_refs(pod, ns, renames)
    ids = [obj_id(r.obj) for r in resources]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise RenderError(f"{d}: objects defined twice: {sorted(dupes)}")
    return [r.obj for r in resources]


def rewrite_configmap_refs(pod, ns, renames):
    def fix(ref):
        if isinstance(ref, dict) and (ns, ref.get("name")) in renames:
            ref["name"] = renames[(ns, ref["name"])]

    for v in pod.get("volumes") or []:
        fix(v.get("configMap"))
        for s in (v.get("projected") or {}).get("sources") or []:
            fix(s.get("configMap"))
    for c in all_containers(pod):
        for e in c.get("env") or []:
            fix((e.get("valueFrom") or {}).get("configMapKeyRef"))
        for e in c.get("envFrom") or []:
            fix(e.get("configMapRef"))


# ---------------------------------------------------------------- the checks


ENV_REF = re.compile(r"\$\$|\$\{([^}]*)\}")


class Checker:
    def __init__(self, root, use_kubectl=True):
        self.root = Path(root).resolve()
        self.kdir = self.root / "deploy" / "kubernetes"
        self.doc = self.root / "docs" / "KUBERNETES.md"
        self.config_doc = self.root / "docs" / "CONFIG.md"
        self.use_kubectl = use_kubectl
        self.problems = []
        self.notes = []

    def problem(self, where, msg):
        self.problems.append(f"{where}: {msg}")

    def rel(self, p):
        try:
            return str(Path(p).relative_to(self.root))
        except ValueError:
            return str(p)

    # ------------------------------------------------------------ driver

    def run(self):
        used = set()
        rendered = {}
        for name in RENDERINGS:
            d = self.kdir / name
            try:
                rendered[name] = render(d, used)
            except RenderError as e:
                self.problem(f"deploy/kubernetes/{name}", f"cannot render: {e}")
        plain = {}
        for name in PLAIN_MANIFESTS:
            p = self.kdir / name
            used.add(p.resolve())
            try:
                plain[name] = load_yaml_docs(p)
            except (RenderError, OSError) as e:
                self.problem(f"deploy/kubernetes/{name}", str(e))
        self.check_reached(used)
        configs = {}
        for name, objs in rendered.items():
            where = f"deploy/kubernetes/{name} (rendered)"
            for o in objs:
                self.validate_schema(where, o)
            configs[name] = self.check_rendering(where, objs)
            if self.use_kubectl:
                self.compare_with_kubectl(name, objs)
        for name, objs in plain.items():
            for o in objs:
                self.validate_schema(f"deploy/kubernetes/{name}", o)
            if "base" in rendered:
                self.check_hpa(f"deploy/kubernetes/{name}", objs, rendered["base"], configs.get("base"))
        self.compare_configs(configs)
        self.check_doc()
        return not self.problems

    def check_reached(self, used):
        for p in sorted(self.kdir.rglob("*")):
            if p.is_file() and p.suffix in (".yaml", ".yml", ".toml", ".json") and p.resolve() not in used:
                self.problem(self.rel(p), "not reached by any rendering (deploy/kubernetes/{" + ",".join(RENDERINGS) + "}) nor checked as a plain manifest")

    # ------------------------------------------------------------ schemas

    def validate_schema(self, where, o):
        api, kind = o.get("apiVersion"), o.get("kind")
        label = f"{where}: {describe(o)}"
        crd = CRD_SCHEMAS.get((api, kind))
        if crd is not None:
            validator = jsonschema.Draft202012Validator(crd)
            for e in sorted(validator.iter_errors(o), key=lambda e: list(e.absolute_path)):
                path = ".".join(str(p) for p in e.absolute_path) or "(top)"
                self.problem(label, f"{path}: {e.message} (embedded {kind} schema excerpt)")
            return
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            self.problem(label, f"{path}: {e.message} (Kubernetes {KUBERNETES_VERSION} schema, strict)")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            self.problem(label, f"{e.message}: a custom resource needs an excerpt in CRD_SCHEMAS")
        except Exception as e:  # InvalidSchemaError, unresolvable references
            self.problem(label, f"could not be validated: {e}")

    # ------------------------------------------------------------ one rendering

    def check_rendering(self, where, objs):
        """Cross-checks one rendered set; returns its parsed fieldcrypt.toml (or None)."""
        by_kind = {}
        for o in objs:
            by_kind.setdefault(o.get("kind"), []).append(o)

        def named(kind, name, ns):
            return next((o for o in by_kind.get(kind, []) if obj_id(o) == (kind, ns, name)), None)

        namespaces = [o["metadata"]["name"] for o in by_kind.get("Namespace", [])]
        if len(namespaces) != 1:
            self.problem(where, f"expected one Namespace, found {len(namespaces)}")
        for o in objs:
            ns = (o.get("metadata") or {}).get("namespace")
            if o.get("kind") in CLUSTER_SCOPED:
                continue
            if not ns:
                self.problem(where, f"{describe(o)} has no namespace (set the kustomization's namespace)")
            elif namespaces and ns != namespaces[0]:
                self.problem(where, f"{describe(o)} is in namespace {ns}, not {namespaces[0]}")
        ns = namespaces[0] if namespaces else ""

        deployments = by_kind.get("Deployment", [])
        if len(deployments) != 1:
            self.problem(where, f"expected one Deployment, found {len(deployments)}")
            return None
        dep = deployments[0]
        dname = dep["metadata"]["name"]
        dwhere = f"{where}: Deployment {dname}"
        template = dep["spec"].get("template") or {}
        pod = template.get("spec") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector_matches(dep["spec"].get("selector"), pod_labels):
            self.problem(dwhere, "spec.selector does not match the pod template's labels")

        containers = pod.get("containers") or []
        main = next((c for c in containers if c.get("name") == "fieldcrypt"), None)
        if main is None:
            self.problem(dwhere, "no container named fieldcrypt")
            return None
        cwhere = f"{dwhere}, container fieldcrypt"

        self.check_references(dwhere, pod, ns, named)
        self.check_security(dwhere, pod)
        self.check_resources(dwhere, pod)
        self.check_spread(dwhere, pod)
        self.check_main_container(cwhere, main)
        metrics_port = self.check_ports_and_probes(cwhere, main)
        self.check_selectors(where, by_kind, pod_labels, main, ns)

        config = self.read_config(cwhere, pod, main, named, ns)
        if config is not None:
            self.check_config(cwhere, config, dep, pod, main, metrics_port, named, ns)

        scaled = by_kind.get("ScaledObject", [])
        for so in scaled:
            self.check_scaledobject(f"{where}: ScaledObject {so['metadata']['name']}", so, dep, config, by_kind, ns)
        if not scaled and "replicas" not in dep["spec"]:
            self.problem(dwhere, "no spec.replicas and no autoscaler in this rendering")
        return config

    def check_references(self, where, pod, ns, named):
        sa = pod.get("serviceAccountName")
        if not sa:
            self.problem(where, "no serviceAccountName (the pods would run as default)")
        elif named("ServiceAccount", sa, ns) is None:
            self.problem(where, f"serviceAccountName {sa}: no such ServiceAccount in the rendering")

        def configmap(name, key=None):
            cm = named("ConfigMap", name, ns)
            if cm is None:
                self.problem(where, f"ConfigMap {name} is referenced but not in the rendering")
            elif key is not None and key not in (cm.get("data") or {}):
                self.problem(where, f"ConfigMap {name} has no key {key}")

        def secret(name, key=None):
            if named("Secret", name, ns) is not None:
                return
            if name in OUT_OF_BAND_SECRETS:
                self.notes.append(f"{where}: Secret {name} is created out of band (docs/KUBERNETES.md)")
            else:
                self.problem(where, f"Secret {name} is referenced but not in the rendering")

        for v in pod.get("volumes") or []:
            if "configMap" in v:
                configmap(v["configMap"].get("name"))
            if "secret" in v:
                secret(v["secret"].get("secretName"))
            for s in (v.get("projected") or {}).get("sources") or []:
                if "configMap" in s:
                    configmap(s["configMap"].get("name"))
                if "secret" in s:
                    secret(s["secret"].get("name"))
        volume_names = {v.get("name") for v in pod.get("volumes") or []}
        for c in all_containers(pod):
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volume_names:
                    self.problem(where, f"container {c.get('name')} mounts volume {m.get('name')}, which the pod does not have")
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                if "configMapKeyRef" in vf:
                    configmap(vf["configMapKeyRef"].get("name"), vf["configMapKeyRef"].get("key"))
                if "secretKeyRef" in vf:
                    secret(vf["secretKeyRef"].get("name"))
            for e in c.get("envFrom") or []:
                if "configMapRef" in e:
                    configmap(e["configMapRef"].get("name"))
                if "secretRef" in e:
                    secret(e["secretRef"].get("name"))

    def check_security(self, where, pod):
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            self.problem(where, "pod securityContext.runAsNonRoot is not true")
        if psc.get("runAsUser") != IMAGE_UID:
            self.problem(where, f"pod securityContext.runAsUser is {psc.get('runAsUser')}, not the image's uid {IMAGE_UID}")
        pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
        for c in all_containers(pod):
            cw = f"{where}, container {c.get('name')}"
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                self.problem(cw, "securityContext.allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                self.problem(cw, "securityContext.readOnlyRootFilesystem is not true")
            if sc.get("privileged"):
                self.problem(cw, "securityContext.privileged is set")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                self.problem(cw, "securityContext.capabilities.drop does not include ALL")
            if caps.get("add"):
                self.problem(cw, f"securityContext.capabilities.add: {caps['add']}")
            if sc.get("runAsUser") not in (None, IMAGE_UID):
                self.problem(cw, f"securityContext.runAsUser is {sc['runAsUser']}")
            if sc.get("runAsNonRoot") is False:
                self.problem(cw, "securityContext.runAsNonRoot is false")
            if (sc.get("seccompProfile") or {}).get("type", pod_seccomp) != "RuntimeDefault":
                self.problem(cw, "no RuntimeDefault seccompProfile (pod or container)")

    def check_resources(self, where, pod):
        for c in all_containers(pod):
            cw = f"{where}, container {c.get('name')}"
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for r in ("cpu", "memory"):
                if r not in req:
                    self.problem(cw, f"no resources.requests.{r}")
            if "memory" not in lim:
                self.problem(cw, "no resources.limits.memory (docs/OPERATIONS.md: a memory limit bounds what a decompression bomb costs)")
            try:
                for section, values in (("requests", req), ("limits", lim)):
                    for r, q in values.items():
                        if parse_quantity(q) <= 0:
                            self.problem(cw, f"resources.{section}.{r} is {q}")
                if "memory" in req and "memory" in lim and parse_quantity(lim["memory"]) < parse_quantity(req["memory"]):
                    self.problem(cw, "memory limit below the request")
            except ValueError as e:
                self.problem(cw, f"resources: {e}")

    def check_spread(self, where, pod):
        tsc = pod.get("topologySpreadConstraints") or []
        anti = ((pod.get("affinity") or {}).get("podAntiAffinity") or {})
        if not any(t.get("topologyKey") == "kubernetes.io/hostname" for t in tsc) and not anti:
            self.problem(where, "replicas are not spread over nodes (no topologySpreadConstraint on kubernetes.io/hostname, no podAntiAffinity)")

    def check_main_container(self, where, c):
        if c.get("args") != ["run", "--config", CONFIG_ARG]:
            self.problem(where, f"args are {c.get('args')}, expected ['run', '--config', '{CONFIG_ARG}']")
        if c.get("command"):
            self.problem(where, "command overrides the image's entrypoint (fieldcrypt)")
        image = c.get("image", "")
        if not re.search(r"(:[^/:@]+|@sha256:[0-9a-f]{64})$", image) or image.endswith(":latest"):
            self.problem(where, f"image {image!r} has no fixed tag or digest")
        env = {e.get("name"): e for e in c.get("env") or []}
        if (env.get("FIELDCRYPT_LOG_FORMAT") or {}).get("value") != "json":
            self.problem(where, "env FIELDCRYPT_LOG_FORMAT is not json")
        pod_name = env.get("POD_NAME")
        if ((pod_name or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            self.problem(where, "env POD_NAME does not come from the downward API (fieldRef metadata.name)")

    def check_ports_and_probes(self, where, c):
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        if "metrics" not in ports:
            self.problem(where, "no container port named metrics")
        expected = {
            "startupProbe": "/health/live",
            "livenessProbe": "/health/live",
            "readinessProbe": "/health/ready",
        }
        for probe, path in expected.items():
            p = c.get(probe)
            if not p:
                self.problem(where, f"no {probe}")
                continue
            get = p.get("httpGet") or {}
            if get.get("path") != path:
                self.problem(where, f"{probe} probes {get.get('path')!r}, expected {path}"
                             + (" (a replica without partitions is never ready: it must not be killed for it)" if probe == "startupProbe" else ""))
            port = get.get("port")
            if isinstance(port, str) and port not in ports:
                self.problem(where, f"{probe} port {port!r} is not a container port name")
            elif isinstance(port, int) and port not in ports.values():
                self.problem(where, f"{probe} port {port} is not a container port")
        start = c.get("startupProbe") or {}
        budget = start.get("periodSeconds", 10) * start.get("failureThreshold", 3)
        if start and budget < 60:
            self.problem(where, f"startupProbe allows {budget} s; start-up unwraps the keyset through the KMS (with retries): give it at least 60 s")
        return ports.get("metrics")

    def check_selectors(self, where, by_kind, pod_labels, main, ns):
        port_names = {p.get("name") for p in main.get("ports") or []}
        services = by_kind.get("Service", [])
        if not services:
            self.problem(where, "no Service (the ServiceMonitor and Prometheus need one)")
        for s in services:
            sw = f"{where}: Service {s['metadata']['name']}"
            if not selector_matches(s["spec"].get("selector"), pod_labels):
                self.problem(sw, "selector does not match the pod labels")
            for p in s["spec"].get("ports") or []:
                tp = p.get("targetPort", p.get("port"))
                if isinstance(tp, str) and tp not in port_names:
                    self.problem(sw, f"targetPort {tp!r} is not a port name of container fieldcrypt")
            if not any(p.get("name") == "metrics" for p in s["spec"].get("ports") or []):
                self.problem(sw, "no port named metrics")
        pdbs = by_kind.get("PodDisruptionBudget", [])
        if not pdbs:
            self.problem(where, "no PodDisruptionBudget")
        for p in pdbs:
            pw = f"{where}: PodDisruptionBudget {p['metadata']['name']}"
            if not selector_matches(p["spec"].get("selector"), pod_labels):
                self.problem(pw, "selector does not match the pod labels")
            if p["spec"].get("maxUnavailable") != 1:
                self.problem(pw, f"maxUnavailable is {p['spec'].get('maxUnavailable')}, expected 1")
        for sm in by_kind.get("ServiceMonitor", []):
            mw = f"{where}: ServiceMonitor {sm['metadata']['name']}"
            matched = [s for s in services if selector_matches(sm["spec"].get("selector"), s["metadata"].get("labels") or {})]
            if not matched:
                self.problem(mw, "selector matches no Service")
            for ep in sm["spec"].get("endpoints") or []:
                if not any(p.get("name") == ep.get("port") for s in matched for p in s["spec"].get("ports") or []):
                    self.problem(mw, f"endpoint port {ep.get('port')!r} is not a port name of the selected Service")
                if ep.get("path", "/metrics") != "/metrics":
                    self.problem(mw, f"endpoint path {ep.get('path')!r} is not /metrics")

    # ------------------------------------------------------------ files in the pod

    def mount_entry(self, container, path):
        """The container's volumeMount that holds an absolute path (the deepest), or None."""
        best = None
        for m in container.get("volumeMounts") or []:
            mp = m.get("mountPath", "").rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best[0]):
                    best = (mp, m)
        return best[1] if best else None

    def mount_for(self, container, pod, path):
        """(volume, path inside the volume) for an absolute path in a container."""
        m = self.mount_entry(container, path)
        if m is None:
            return None, None
        vol = next((v for v in pod.get("volumes") or [] if v.get("name") == m.get("name")), None)
        rest = path[len(m.get("mountPath", "").rstrip("/")):].lstrip("/")
        sub = "/".join(s for s in ((m.get("subPath") or "").strip("/"), rest) if s)
        return vol, sub

    def configmap_file(self, vol, sub, named, ns):
        """The text of `sub` in a configMap or projected volume, or None; or raises LookupError."""
        sources = []
        if "configMap" in vol:
            sources = [vol["configMap"]]
        elif "projected" in vol:
            sources = [s["configMap"] for s in vol["projected"].get("sources") or [] if "configMap" in s]
        for src in sources:
            cm = named("ConfigMap", src.get("name"), ns)
            if cm is None:
                continue
            data = cm.get("data") or {}
            items = src.get("items")
            mapping = {i["path"]: i["key"] for i in items} if items else {k: k for k in data}
            if sub in mapping and mapping[sub] in data:
                return data[mapping[sub]]
        raise LookupError

    def secret_file(self, vol, sub, named, ns):
        """(Secret name, key, file mode) of `sub` in a secret or projected volume; or raises
        LookupError. The mode is the item's, else the volume's defaultMode (0644 unset)."""
        sources = []
        if "secret" in vol:
            sources = [(vol["secret"], vol["secret"].get("secretName"), vol["secret"].get("defaultMode", 0o644))]
        elif "projected" in vol:
            default_mode = vol["projected"].get("defaultMode", 0o644)
            sources = [(s["secret"], s["secret"].get("name"), default_mode)
                       for s in vol["projected"].get("sources") or [] if "secret" in s]
        for src, name, default_mode in sources:
            sec = named("Secret", name, ns)
            if sec is not None:
                keys = set(sec.get("data") or {}) | set(sec.get("stringData") or {})
            else:
                # Created out of band: the keys are the ones the documented command makes.
                keys = set(re.findall(r"--from-file=([^=\s]+)=", OUT_OF_BAND_SECRETS.get(name, "")))
            items = src.get("items")
            if items:
                item = next((i for i in items if i.get("path") == sub), None)
                if item is not None and item.get("key") in keys:
                    return name, item.get("key"), item.get("mode", default_mode)
            elif sub in keys:
                return name, sub, default_mode
        raise LookupError

    def read_config(self, where, pod, main, named, ns):
        vol, sub = self.mount_for(main, pod, CONFIG_ARG)
        if vol is None:
            self.problem(where, f"--config {CONFIG_ARG} is on no volume mount")
            return None
        try:
            text = self.configmap_file(vol, sub, named, ns)
        except LookupError:
            self.problem(where, f"--config {CONFIG_ARG}: no ConfigMap key provides {sub} in volume {vol.get('name')}")
            return None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            self.problem(where, f"fieldcrypt.toml is not valid TOML: {e}")
            return None

    def check_file_provided(self, where, key, path, pod, main, named, ns):
        if not path.startswith("/"):
            self.problem(where, f"{key} = {path!r} is relative: it would resolve against /etc/fieldcrypt (the config's directory); give an absolute path")
            return
        if path.startswith(IMAGE_SCHEMAS + "/"):
            if not (self.root / "schemas" / path[len(IMAGE_SCHEMAS) + 1:]).is_file():
                self.problem(where, f"{key} = {path!r}: the image ships no such schema (schemas/ in the repository)")
            return
        vol, sub = self.mount_for(main, pod, path)
        if vol is None:
            self.problem(where, f"{key} = {path!r} is on no volume mount of the container")
            return None
        if "emptyDir" in vol:
            writers = [c for c in pod.get("initContainers") or []
                       if path in (c.get("command") or []) + (c.get("args") or [])
                       and any(m.get("name") == vol.get("name") for m in c.get("volumeMounts") or [])]
            if not writers:
                self.problem(where, f"{key} = {path!r} is in emptyDir {vol.get('name')}, which no init container fills")
            return vol
        for provides in (self.configmap_file, self.secret_file):
            try:
                provides(vol, sub, named, ns)
                return vol
            except LookupError:
                pass
        self.problem(where, f"{key} = {path!r}: no ConfigMap or Secret key provides {sub} in volume {vol.get('name')}")
        return vol

    # ------------------------------------------------------------ fieldcrypt.toml

    def check_config(self, where, cfg, dep, pod, main, metrics_port, named, ns):
        self.check_documented_keys(where, cfg)
        kms = cfg.get("kms") or {}
        pipeline = cfg.get("pipeline") or {}
        provider = kms.get("provider", "local")

        listen = (cfg.get("metrics") or {}).get("listen", "127.0.0.1:9464")
        m = re.fullmatch(r"(0\.0\.0\.0|\[::\]):(\d+)", listen)
        if not m:
            self.problem(where, f"[metrics] listen = {listen!r}: the kubelet and Prometheus need 0.0.0.0:PORT (or [::]:PORT)")
        elif metrics_port is not None and int(m.group(2)) != metrics_port:
            self.problem(where, f"[metrics] listen port {m.group(2)} is not the container port metrics ({metrics_port})")

        if not isinstance(pipeline.get("workers"), int) or pipeline.get("workers") < 1:
            self.problem(where, "[pipeline] workers is not set: with 0 the lane count follows the node's cores, and the replica arithmetic (partitions / workers) breaks")

        drain = pipeline.get("drain_timeout_seconds", DEFAULT_DRAIN_SECONDS)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < drain + DRAIN_MARGIN_SECONDS:
            self.problem(where, f"terminationGracePeriodSeconds {grace} is not above drain_timeout_seconds {drain} + {DRAIN_MARGIN_SECONDS} s for the commit: SIGKILL would cut the drain")

        # Files: every path key, absolute and provided by the pod.
        paths = [("keyset.file", (cfg.get("keyset") or {}).get("file", ".fieldcrypt/keyset.json"))]
        if provider == "local":
            paths.append(("kms.kek_file", kms.get("kek_file", ".fieldcrypt/kek.key")))
        for i, kek in enumerate(kms.get("decrypt_keks") or []):
            if kek.startswith("local:") or (provider == "local" and not kek.startswith("aws:")):
                paths.append((f"kms.decrypt_keks[{i}]", kek.removeprefix("local:")))
        for i, f in enumerate((cfg.get("schema") or {}).get("reference_files") or []):
            paths.append((f"schema.reference_files[{i}]", f))
        for key in ("ca_file", "cert_file", "key_file"):
            if key in (cfg.get("schema_registry") or {}):
                paths.append((f"schema_registry.{key}", cfg["schema_registry"][key]))
        for i, r in enumerate(cfg.get("routes") or []):
            for key in ("value_schema", "key_schema"):
                if key in r:
                    paths.append((f"routes[{i}].{key}", r[key]))
            kek = r.get("kek")
            if kek and (kek.startswith("local:") or (provider == "local" and not kek.startswith("aws:"))):
                paths.append((f"routes[{i}].kek", kek.removeprefix("local:")))
        kek_vols = []
        for key, path in paths:
            vol = self.check_file_provided(where, key, path, pod, main, named, ns)
            if key == "kms.kek_file" or key.endswith(".kek") or key.startswith("kms.decrypt_keks"):
                kek_vols.append((key, path, vol))

        self.check_env_refs(where, cfg, main)

        if provider == "local":
            for key, path, vol in kek_vols:
                self.check_local_kek(where, key, path, vol, pod, main, named, ns)
        elif provider == "aws":
            if not kms.get("key_id"):
                self.problem(where, "[kms] provider aws without key_id")
            secrets = [v.get("name") for v in pod.get("volumes") or [] if "secret" in v]
            if secrets:
                self.problem(where, f"provider aws, yet Secret volumes {secrets}: the KEK stays in KMS")
            sa = named("ServiceAccount", pod.get("serviceAccountName"), ns)
            arn = ((sa or {}).get("metadata", {}).get("annotations") or {}).get(IRSA_ANNOTATION, "")
            if not re.fullmatch(r"arn:aws[a-z-]*:iam::(\d{12}|<ACCOUNT>):role/[\w+=,.@/-]+", arn):
                self.problem(where, f"provider aws: ServiceAccount {pod.get('serviceAccountName')} has no {IRSA_ANNOTATION} annotation naming an IAM role (IRSA)")
        else:
            self.problem(where, f"[kms] provider {provider!r} is neither local nor aws")

    def check_documented_keys(self, where, cfg):
        try:
            sections = documented_config_keys(self.config_doc)
        except OSError as e:
            self.problem(where, f"cannot read {self.rel(self.config_doc)}: {e}")
            return

        for kind, path, _ in undocumented(cfg, sections):
            if kind == "table":
                self.problem(where, f"fieldcrypt.toml: [{path}] is not a table docs/CONFIG.md documents")
            elif kind == "key":
                self.problem(where, f"fieldcrypt.toml: {path} is not a key docs/CONFIG.md documents (fieldcrypt refuses unknown keys)")
            else:
                self.problem(where, f"fieldcrypt.toml: top-level key {path} is not a table")

    def check_env_refs(self, where, cfg, main):
        env = {e.get("name") for e in main.get("env") or []}

        def strings(v, key):
            if isinstance(v, str):
                yield key, v
            elif isinstance(v, dict):
                for k, x in v.items():
                    yield from strings(x, f"{key}.{k}" if key else k)
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    yield from strings(x, f"{key}[{i}]")

        for key, s in strings(cfg, ""):
            for m in ENV_REF.finditer(s):
                if m.group(0) == "$$" or m.group(1) == "topic":
                    continue
                name, sep, _default = m.group(1).partition(":-")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    self.problem(where, f"fieldcrypt.toml {key}: ${{{m.group(1)}}} is not a valid substitution")
                elif not sep and name not in env:
                    self.problem(where, f"fieldcrypt.toml {key} uses ${{{name}}}, which the container's env does not set (fieldcrypt would refuse to start)")

    def check_local_kek(self, where, key, path, vol, pod, main, named, ns):
        """A local KEK file: fieldcrypt reads it only if no group or other may read it, or
        (src/keys/local.rs, check_private) if it is mode 0440, group-owned by one of the
        process's groups, and a file of a Secret (or projected) volume, reached through
        the volume's `NAME -> ..data/NAME` symlink. The kubelet makes a Secret's
        defaultMode 0400 into exactly that with the pod's fsGroup."""
        if vol is None:
            return
        if "emptyDir" in vol:
            self.check_kek_copy(where, key, path, vol, pod)
            return
        vol_name = vol.get("name")
        try:
            _, sub = self.mount_for(main, pod, path)
            _secret, _key, mode = self.secret_file(vol, sub, named, ns)
        except LookupError:
            secret_sources = "secret" in vol or any("secret" in s for s in (vol.get("projected") or {}).get("sources") or [])
            if not secret_sources:  # otherwise check_file_provided has said what is missing
                self.problem(where, f"{key} = {path!r} is not in a Secret volume (volume {vol_name}): the KEK belongs in the Secret fieldcrypt-kek")
            return
        mount = self.mount_entry(main, path)
        if mount.get("subPath") or mount.get("subPathExpr"):
            self.problem(where, f"{key}: volume {vol_name} is mounted at {mount.get('mountPath')} through subPath: "
                         "that bypasses the Secret volume's ..data symlink, and fieldcrypt refuses the 0440 file outside it; mount the volume as a directory")
        elif "/" in sub:
            self.problem(where, f"{key}: {sub} is not at the top of volume {vol_name}: only top-level names are ..data symlinks, "
                         "and fieldcrypt refuses the 0440 file elsewhere")
        if mount.get("readOnly") is not True:
            self.problem(where, f"{key}: volume {vol_name} is not mounted readOnly")
        if mode != 0o400:
            # The kubelet adds group read (0440) to a read-only volume's files for fsGroup.
            arrives = mode | 0o440
            why = ("which fieldcrypt refuses (it accepts 0440 and nothing looser)" if arrives != 0o440
                   else "but give the owner-only 0400 the file is meant to have")
            self.problem(where, f"{key}: Secret volume {vol_name} has mode {mode:o}, not 0400 (octal; 256 in JSON): "
                         f"with fsGroup the file arrives as {arrives:04o}, {why}")
        fs_group = (pod.get("securityContext") or {}).get("fsGroup")
        if fs_group is None:
            self.problem(where, f"{key}: the pod has no fsGroup: the kubelet leaves the Secret's file root:root 0400, unreadable by uid {IMAGE_UID}")
        elif fs_group != IMAGE_GID:
            self.problem(where, f"{key}: the pod's fsGroup is {fs_group}, not the image's group {IMAGE_GID} (runAsGroup): "
                         "the KEK would be readable by another group")

    def check_kek_copy(self, where, key, path, vol, pod):
        """The alternative: an init container copies the KEK from a Secret into a
        memory-backed emptyDir as a 0400 file owned by the runtime user."""
        if vol["emptyDir"].get("medium") != "Memory":
            self.problem(where, f"{key}: emptyDir {vol.get('name')} is not medium Memory: the KEK copy would be written to the node's disk")
        for c in pod.get("initContainers") or []:
            words = (c.get("command") or []) + (c.get("args") or [])
            if path not in words:
                continue
            cw = f"{where}, init container {c.get('name')}"
            if "0400" not in words and "0600" not in words:
                self.problem(cw, f"does not give {path} mode 0400 (fieldcrypt refuses a KEK that group or others may read)")
            secret_mounts = [
                v for m in c.get("volumeMounts") or []
                for v in pod.get("volumes") or [] if v.get("name") == m.get("name") and "secret" in v
            ]
            if not secret_mounts:
                self.problem(cw, "mounts no Secret to copy the KEK from")
            for v in secret_mounts:
                sec = v["secret"]
                modes = [sec.get("defaultMode", 0o644)] + [i["mode"] for i in sec.get("items") or [] if "mode" in i]
                for mode in modes:
                    if mode != 0o400:
                        self.problem(cw, f"Secret volume {v.get('name')} has mode {mode:o}, not 0400 (octal; 256 in JSON)")
            if not (pod.get("securityContext") or {}).get("fsGroup"):
                self.problem(cw, f"the pod has no fsGroup: the Secret's root-owned 0400 file is unreadable by uid {IMAGE_UID}")
        main_mounts = {m.get("name") for c in pod.get("containers") or [] for m in c.get("volumeMounts") or []}
        for v in pod.get("volumes") or []:
            if "secret" in v and v.get("name") in main_mounts:
                self.problem(where, f"a container mounts Secret volume {v.get('name')} (the KEK's source): only the init container needs it")

    # ------------------------------------------------------------ autoscaling

    def partitions(self, where, o):
        raw = ((o.get("metadata") or {}).get("annotations") or {}).get(PARTITIONS_ANNOTATION)
        if raw is None or not str(raw).isdigit() or int(raw) < 1:
            self.problem(where, f"no annotation {PARTITIONS_ANNOTATION} with the source partition count")
            return None
        return int(raw)

    def check_max_replicas(self, where, o, maximum, minimum, config):
        parts = self.partitions(where, o)
        workers = ((config or {}).get("pipeline") or {}).get("workers")
        if parts and isinstance(workers, int) and workers >= 1:
            if maximum != parts // workers:
                self.problem(where, f"maximum replicas {maximum} is not source partitions {parts} / workers {workers} = {parts // workers} (replicas beyond the partitions sit idle)")
        if not isinstance(minimum, int) or minimum < 1:
            self.problem(where, f"minimum replicas {minimum}: keep at least 1 (lag is only measured by a running replica)")

    def check_scaledobject(self, where, so, dep, config, by_kind, ns):
        spec = so.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        if ref.get("name") != dep["metadata"]["name"] or ref.get("kind", "Deployment") != "Deployment":
            self.problem(where, f"scaleTargetRef {ref} is not Deployment {dep['metadata']['name']}")
        if "replicas" in dep["spec"]:
            self.problem(where, "the Deployment still sets spec.replicas: every kubectl apply would reset what KEDA chose")
        self.check_max_replicas(where, so, spec.get("maxReplicaCount"), spec.get("minReplicaCount"), config)
        services = [s["metadata"]["name"] for s in by_kind.get("Service", [])]
        for t in spec.get("triggers") or []:
            md = t.get("metadata") or {}
            if t.get("type") != "prometheus":
                continue
            missing = PROMETHEUS_TRIGGER_REQUIRED - set(md)
            if missing:
                self.problem(where, f"prometheus trigger lacks {sorted(missing)}")
            unknown = set(md) - PROMETHEUS_TRIGGER_KNOWN
            if unknown:
                self.problem(where, f"prometheus trigger: unknown metadata {sorted(unknown)}")
            try:
                float(md.get("threshold", ""))
            except ValueError:
                self.problem(where, f"threshold {md.get('threshold')!r} is not a number")
            if md.get("ignoreNullValues", "true") not in ("true", "false"):
                self.problem(where, "ignoreNullValues is not \"true\" or \"false\"")
            self.check_lag_query(where, md.get("query", ""), ns, services)

    def check_lag_query(self, where, query, ns, services):
        if "fieldcrypt_consumer_lag" not in query:
            self.problem(where, "the query does not read fieldcrypt_consumer_lag")
        for sel in re.findall(r"fieldcrypt_[a-z_]+\{([^}]*)\}", query) or [""]:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', sel))
            if labels.get("namespace") != ns:
                self.problem(where, f"query selector {{{sel}}} does not select namespace=\"{ns}\" (another deployment's lag would count)")
            if labels.get("job") not in services:
                self.problem(where, f"query selector {{{sel}}}: job {labels.get('job')!r} is not the Service's name {services} (the Prometheus Operator's job label)")

    def check_hpa(self, where, objs, base_objs, config):
        base_dep = next((o for o in base_objs if o.get("kind") == "Deployment"), None)
        base_ns = next((o["metadata"]["name"] for o in base_objs if o.get("kind") == "Namespace"), "")
        hpas = [o for o in objs if o.get("kind") == "HorizontalPodAutoscaler"]
        if not hpas:
            self.problem(where, "no HorizontalPodAutoscaler")
        for h in hpas:
            hw = f"{where}: HorizontalPodAutoscaler {h['metadata'].get('name')}"
            spec = h.get("spec") or {}
            ref = spec.get("scaleTargetRef") or {}
            if base_dep and (ref.get("kind"), ref.get("name")) != ("Deployment", base_dep["metadata"]["name"]):
                self.problem(hw, f"scaleTargetRef {ref} is not the base's Deployment")
            if h["metadata"].get("namespace") != base_ns:
                self.problem(hw, f"namespace {h['metadata'].get('namespace')!r} is not the base's ({base_ns})")
            self.check_max_replicas(hw, h, spec.get("maxReplicas"), spec.get("minReplicas", 1), config)
            if not (spec.get("behavior") or {}).get("scaleDown"):
                self.problem(hw, "no behavior.scaleDown: every scale step rebalances the group; slow scale-down down")
            for m in spec.get("metrics") or []:
                if m.get("type") == "External":
                    name = (m.get("external") or {}).get("metric", {}).get("name", "")
                    if "fieldcrypt_consumer_lag" not in name:
                        self.problem(hw, f"external metric {name!r} is not fieldcrypt_consumer_lag")

    # ------------------------------------------------------------ across renderings

    def compare_configs(self, configs):
        base, aws = configs.get("base"), configs.get("overlays/aws")
        if base is None or aws is None:
            return
        b = {k: v for k, v in base.items() if k != "kms"}
        a = {k: v for k, v in aws.items() if k != "kms"}
        if a != b:
            differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            self.problem("deploy/kubernetes/overlays/aws/fieldcrypt.toml",
                         f"differs from base/fieldcrypt.toml outside [kms], in {differing}: keep the two in step")
        if (aws.get("kms") or {}).get("provider") != "aws":
            self.problem("deploy/kubernetes/overlays/aws/fieldcrypt.toml", "[kms] provider is not aws")

    def check_doc(self):
        if not self.doc.is_file():
            self.problem(self.rel(self.doc), "missing")
            return
        text = self.doc.read_text()
        for secret, command in OUT_OF_BAND_SECRETS.items():
            if command not in text:
                self.problem(self.rel(self.doc), f"does not say how to create Secret {secret} ({command}...)")
        if "SCALING.md" not in text:
            self.problem(self.rel(self.doc), "does not link docs/SCALING.md")

    def compare_with_kubectl(self, name, objs):
        kubectl = shutil.which("kubectl")
        if not kubectl:
            return
        d = self.kdir / name
        try:
            out = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.problem(f"deploy/kubernetes/{name}", f"kubectl kustomize failed to run: {e}")
            return
        if out.returncode != 0:
            self.problem(f"deploy/kubernetes/{name}", f"kubectl kustomize fails: {out.stderr.strip()}")
            return
        theirs = {obj_id(o): o for o in yaml.safe_load_all(out.stdout) if o}
        ours = {obj_id(o): o for o in objs}
        where = f"deploy/kubernetes/{name}"
        for i in sorted(set(theirs) - set(ours), key=str):
            self.problem(where, f"kubectl kustomize renders {i}, check_k8s.py does not")
        for i in sorted(set(ours) - set(theirs), key=str):
            self.problem(where, f"check_k8s.py renders {i}, kubectl kustomize does not")
        same = set(ours) == set(theirs)
        for i in sorted(set(ours) & set(theirs), key=str):
            diffs = list(json_diff(ours[i], theirs[i]))
            if diffs:
                same = False
                self.problem(where, f"{i} differs from kubectl kustomize's at {', '.join(diffs[:5])}")
        if same:
            self.notes.append(f"{where}: the same {len(ours)} objects as kubectl kustomize renders")


def json_diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                yield f"{path}/{k}"
            else:
                yield from json_diff(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from json_diff(x, y, f"{path}/{i}")
    elif a != b:
        yield path or "/"


# ---------------------------------------------------------------- self-test

# Each breaks one thing in a copy of the tree; the check must then report `expect`.
MUTATIONS = [
    ("deploy/kubernetes/base/deployment.yaml", "defaultMode: 0400", "defaultMode: 0444", "has mode 444, not 0400"),
    ("deploy/kubernetes/base/deployment.yaml", "                path: kek.key\n", "                path: kek.key\n                mode: 0644\n", "has mode 644, not 0400"),
    ("deploy/kubernetes/base/deployment.yaml", "              - key: kek.key\n", "              - key: kek\n", "no ConfigMap or Secret key provides kek.key"),
    ("deploy/kubernetes/base/deployment.yaml", "        fsGroup: 10001\n", "", "the pod has no fsGroup"),
    ("deploy/kubernetes/base/deployment.yaml", "        fsGroup: 10001\n", "        fsGroup: 10002\n", "fsGroup is 10002, not the image's group 10001"),
    ("deploy/kubernetes/base/deployment.yaml", "            - name: kek\n              mountPath: /run/fieldcrypt/kek\n              readOnly: true\n",
     "            - name: kek\n              mountPath: /run/fieldcrypt/kek/kek.key\n              subPath: kek.key\n              readOnly: true\n", "through subPath"),
    ("deploy/kubernetes/base/deployment.yaml", "            - name: kek\n              mountPath: /run/fieldcrypt/kek\n              readOnly: true\n",
     "            - name: kek\n              mountPath: /run/fieldcrypt/kek\n              readOnly: false\n", "volume kek is not mounted readOnly"),
    ("deploy/kubernetes/base/deployment.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 30", "is not above drain_timeout_seconds 30"),
    ("deploy/kubernetes/base/deployment.yaml", "readOnlyRootFilesystem: true\n            runAsNonRoot: true\n            capabilities:\n              drop:\n                - ALL\n          volumeMounts:\n            - name: config",
     "readOnlyRootFilesystem: false\n            runAsNonRoot: true\n            capabilities:\n              drop:\n                - ALL\n          volumeMounts:\n            - name: config", "readOnlyRootFilesystem is not true"),
    ("deploy/kubernetes/base/deployment.yaml", "              path: /health/ready", "              path: /health/live", "readinessProbe probes '/health/live'"),
    ("deploy/kubernetes/base/deployment.yaml", "          startupProbe:\n            httpGet:\n              path: /health/live",
     "          startupProbe:\n            httpGet:\n              path: /health/ready", "startupProbe probes '/health/ready'"),
    ("deploy/kubernetes/base/deployment.yaml", "              port: metrics\n            periodSeconds: 10", "              port: metric\n            periodSeconds: 10", "livenessProbe port 'metric'"),
    ("deploy/kubernetes/base/deployment.yaml", "              memory: 256Mi\n            limits:\n              memory: 512Mi\n", "              memory: 256Mi\n", "no resources.limits.memory"),
    ("deploy/kubernetes/base/deployment.yaml", "      serviceAccountName: fieldcrypt", "      serviceAccountName: fieldcryptt", "no such ServiceAccount"),
    ("deploy/kubernetes/base/deployment.yaml", "                  name: fieldcrypt-keyset", "                  name: fieldcrypt-keyset-old", "ConfigMap fieldcrypt-keyset-old is referenced"),
    ("deploy/kubernetes/base/deployment.yaml", "      enableServiceLinks: false", "      enableServiceLinks: false\n      hostNetworkk: true", "Additional properties are not allowed ('hostNetworkk'"),
    ("deploy/kubernetes/base/deployment.yaml", "                  fieldPath: metadata.name", "                  fieldPath: metadata.uid", "POD_NAME does not come from the downward API"),
    ("deploy/kubernetes/base/service.yaml", "    app.kubernetes.io/name: fieldcrypt\n  ports:", "    app.kubernetes.io/name: fieldcrypt-x\n  ports:", "selector does not match the pod labels"),
    ("deploy/kubernetes/base/fieldcrypt.toml", 'file = "/etc/fieldcrypt/keyset.json"', 'file = "keyset.json"', "is relative"),
    ("deploy/kubernetes/base/fieldcrypt.toml", 'kek_file = "/run/fieldcrypt/kek/kek.key"', 'kek_file = "/etc/fieldcrypt/keyset.json"', "is not in a Secret volume"),
    ("deploy/kubernetes/base/fieldcrypt.toml", 'listen = "0.0.0.0:9464"', 'listen = "127.0.0.1:9464"', "[metrics] listen"),
    ("deploy/kubernetes/base/fieldcrypt.toml", "workers = 1\n", "", "[pipeline] workers is not set"),
    ("deploy/kubernetes/base/fieldcrypt.toml", 'group_id = "fieldcrypt"', 'group_id = "fieldcrypt"\ngroup_idd = "x"', "kafka.group_idd is not a key"),
    ("deploy/kubernetes/base/fieldcrypt.toml", 'transactional_id = "fieldcrypt-${POD_NAME}"', 'transactional_id = "fieldcrypt-${HOSTNAME_X}"', "uses ${HOSTNAME_X}"),
    ("deploy/kubernetes/base/fieldcrypt.toml", "[kafka]\n", "[kafka\n", "not valid TOML"),
    ("deploy/kubernetes/overlays/aws/fieldcrypt.toml", 'url = "http://schema-registry.kafka.svc:8081"', 'url = "http://registry:8081"', "differs from base/fieldcrypt.toml outside [kms]"),
    ("deploy/kubernetes/overlays/aws/deployment-patch.yaml", "            - name: AWS_REGION\n              value: eu-west-1\n", "", "uses ${AWS_REGION}"),
    ("deploy/kubernetes/overlays/aws/deployment-patch.yaml", "      volumes:\n        - name: kek\n          $patch: delete\n", "", "provider aws, yet Secret volumes"),
    ("deploy/kubernetes/overlays/aws/serviceaccount-patch.yaml", "eks.amazonaws.com/role-arn:", "eks.amazonaws.com/rolearn:", "has no eks.amazonaws.com/role-arn annotation"),
    ("deploy/kubernetes/overlays/aws/kustomization.yaml", "namespace: fieldcrypt\n", "", "no ConfigMap fieldcrypt-config in namespace (none) to replace"),
    ("deploy/kubernetes/components/keda/scaledobject.yaml", "maxReplicaCount: 6", "maxReplicaCount: 12", "maximum replicas 12 is not source partitions 6 / workers 1"),
    ("deploy/kubernetes/components/keda/scaledobject.yaml", 'threshold: "50000"', "threshold: 50000", "is not of type 'string'"),
    ("deploy/kubernetes/components/keda/scaledobject.yaml", 'namespace="fieldcrypt", job="fieldcrypt"}))', 'job="fieldcrypt"}))', 'does not select namespace="fieldcrypt"'),
    ("deploy/kubernetes/components/keda/scaledobject.yaml", "  pollingInterval: 30", "  pollingIntervall: 30", "Additional properties are not allowed ('pollingIntervall'"),
    ("deploy/kubernetes/components/keda/kustomization.yaml", "      - op: remove\n        path: /spec/replicas", "      - op: test\n        path: /spec/replicas\n        value: 2", "still sets spec.replicas"),
    ("deploy/kubernetes/components/servicemonitor/servicemonitor.yaml", "    - port: metrics", "    - port: http", "endpoint port 'http'"),
    ("deploy/kubernetes/components/servicemonitor/servicemonitor.yaml", "interval: 15s", "interval: 15 seconds", "does not match"),
    ("deploy/kubernetes/examples/monitoring-and-keda/kustomization.yaml", "namespace: fieldcrypt\n", "", "has no namespace"),
    ("deploy/kubernetes/examples/hpa.yaml", "  maxReplicas: 6", "  maxReplicas: 7", "maximum replicas 7 is not source partitions 6"),
    ("deploy/kubernetes/base/kustomization.yaml", "images:", "commonLabels: {a: b}\nimages:", "commonLabels: not implemented by check_k8s.py's renderer"),
    ("docs/KUBERNETES.md", "kubectl create secret generic fieldcrypt-kek --from-file=kek.key=", "kubectl create secret generic fieldcrypt-kek --from-file=", "does not say how to create Secret fieldcrypt-kek"),
]


def self_test(root):
    root = Path(root).resolve()
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="check_k8s.") as tmp:
        tmp = Path(tmp)
        for part in ("deploy/kubernetes", "docs", "schemas"):
            shutil.copytree(root / part, tmp / part)
        clean = Checker(tmp, use_kubectl=False)
        if clean.run():
            passed += 1
        else:
            failed += 1
            print("FAIL: the unmodified copy has problems:", *clean.problems, sep="\n  ")
        for rel, old, new, expect in MUTATIONS:
            p = tmp / rel
            original = p.read_text()
            if original.count(old) < 1:
                failed += 1
                print(f"FAIL: {rel}: the text to break is not there: {old!r}")
                continue
            p.write_text(original.replace(old, new, 1))
            try:
                c = Checker(tmp, use_kubectl=False)
                c.run()
                if any(expect in msg for msg in c.problems):
                    passed += 1
                else:
                    failed += 1
                    print(f"FAIL: {rel}: {old!r} -> {new!r}: expected a problem containing {expect!r}; got:")
                    for msg in c.problems or ["(no problem at all)"]:
                        print(f"    {msg}")
            finally:
                p.write_text(original)
    print(f"check_k8s self-test: {passed} passed, {failed} failed")
    return failed == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=Path(__file__).resolve().parent.parent,
                    help="repository root (default: this script's repository)")
    ap.add_argument("--self-test", action="store_true",
                    help="break a copy of the manifests in many ways and check each is reported")
    ap.add_argument("--no-kubectl", action="store_true",
                    help="do not compare with kubectl kustomize even if kubectl is on PATH")
    args = ap.parse_args()
    if args.self_test:
        return 0 if self_test(args.root) else 1
    c = Checker(args.root, use_kubectl=not args.no_kubectl)
    ok = c.run()
    for n in c.notes:
        print(f"note: {n}")
    if not shutil.which("kubectl") or args.no_kubectl:
        print("note: kubectl not used: renderings checked by check_k8s.py's own renderer only")
    for p in c.problems:
        print(f"problem: {p}", file=sys.stderr)
    if ok:
        print(f"check_k8s: {len(RENDERINGS)} renderings and {len(PLAIN_MANIFESTS)} plain manifest(s) pass "
              f"(Kubernetes {KUBERNETES_VERSION} schemas, strict)")
        return 0
    print(f"check_k8s: {len(c.problems)} problem(s)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
