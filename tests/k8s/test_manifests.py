"""Offline checks of the Kubernetes manifests in ``k8s/`` (docs/design.md §10, 11; issue 11 "Must show").

* Every RayCluster / RayJob (the files in ``k8s/`` and the rendered overlays) validates against the
  vendored KubeRay CRDs in ``<repo>/../shared/kuberay-crds`` with unknown keys rejected, and passes the
  KubeRay operator's own webhook rules (re-implemented here, with the operator's messages).
* Every custom resource the code requests (``resources={"rollout": 1}``) is offered by a worker group.
* Every Prometheus metric the Grafana dashboard queries is one the code registers
  (:mod:`stgrl.orchestration.metric_names`).
* PVC, PodMonitors and the Dockerfile get the structural checks that need no vendored schema.

No cluster, no network: jsonschema + PyYAML; ``kubectl kustomize`` only as an optional cross-check.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stgrl.orchestration.metric_names import METRIC_NAMES, REWARD_COMPONENTS, prometheus_name

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# The CI clone has shared/ as a sibling of the repository checkout.
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"
OVERLAYS = ("demo-cpu", "qwen7b-8gpu")
CODE_DIRS = ("transport", "actors", "rollout", "reward_service", "learner", "orchestration")
# Pool -> the worker group that offers its custom resource (docs/design.md §1, 10).
POOLS = {"rollout": "rollout-gpu", "learner": "learner-gpu", "reward": "reward-cpu"}
GPU_GROUPS = ("rollout-gpu", "learner-gpu")
GPU_KEY = "nvidia.com/gpu"
# Ray's predefined resources: requested through num_cpus/num_gpus/memory, never offered by a group.
BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}
MAX_RAYJOB_NAME = 47  # KubeRay MaxRayJobNameLength (= MaxRayClusterNameLength 53 - 6)
MAX_RAYCLUSTER_NAME = 53
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------- loading


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 43k lines: libyaml is 10x faster


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.load_all(f, Loader=LOADER) if d is not None]


def manifest_files() -> list[Path]:
    """Every YAML manifest under k8s/ (kustomizations and JSON6902 patch lists are not manifests)."""
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = load_docs(path)
        if all(isinstance(d, list) for d in docs):  # a JSON6902 patch file (rendered via its overlay)
            continue
        files.append(path)
    return files


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict]:
    """kind -> openAPIV3Schema of version v1, from <repo>/../shared/kuberay-crds."""
    if not CRD_DIR.is_dir():
        pytest.fail(
            f"vendored KubeRay CRDs not found at {CRD_DIR}: the checkout needs shared/ as a sibling of "
            f"the repository ({REPO.parent}/shared/kuberay-crds)"
        )
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in load_docs(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            for version in doc["spec"]["versions"]:
                if version["name"] == "v1":
                    schemas[doc["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    assert {"RayCluster", "RayJob"} <= set(schemas), f"CRDs in {CRD_DIR} lack RayCluster/RayJob v1"
    return schemas


def strict(schema: Any) -> Any:
    """A copy of ``schema`` where every object that lists ``properties`` rejects unlisted keys."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def strict_validators(crd_schemas) -> dict[str, jsonschema.Draft7Validator]:
    return {kind: jsonschema.Draft7Validator(strict(s)) for kind, s in crd_schemas.items()}


def schema_errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


# --------------------------------------------------------------------------- a small kustomize


def json_pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def apply_json6902(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 add/remove/replace/test, which is all the overlays use."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = json_pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        key: Any = int(last) if isinstance(node, list) and last != "-" else last
        kind = op["op"]
        if kind == "test":
            assert node[key] == op["value"], f"JSON patch test failed at {op['path']}: {node[key]!r}"
        elif kind == "remove":
            del node[key]
        elif kind == "replace":
            node[key]  # noqa: B018 - replace requires the target to exist (KeyError/IndexError)
            node[key] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(node, list):
                node.insert(len(node) if key == "-" else key, copy.deepcopy(op["value"]))
            else:
                node[key] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unsupported JSON patch op {kind!r}")
    return doc


def matches(target: dict, doc: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return (
        target.get("kind", doc["kind"]) == doc["kind"]
        and target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def render(directory: Path) -> list[dict]:
    """Build a kustomization: file resources, JSON6902 patches; generated ConfigMaps are skipped."""
    kust = load_docs(directory / "kustomization.yaml")[0]
    docs = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        assert path.is_file(), f"{directory}: resource {res} is not a file"
        docs += load_docs(path)
    for patch in kust.get("patches", []):
        ops = load_docs(directory / patch["path"])[0] if "path" in patch else yaml.safe_load(patch["patch"])
        assert isinstance(ops, list), f"{directory}: only JSON6902 patches are supported here"
        hits = [i for i, d in enumerate(docs) if matches(patch["target"], d)]
        assert hits, f"{directory}: patch target {patch['target']} matches no resource"
        for i in hits:
            docs[i] = apply_json6902(docs[i], ops)
    return docs


def rendered(name: str) -> list[dict]:
    return render(K8S / "overlays" / name)


def all_manifests() -> list[tuple[str, dict]]:
    """(label, doc) for every doc of every manifest file and of every rendered overlay."""
    out = []
    for path in manifest_files():
        for i, doc in enumerate(load_docs(path)):
            out.append((f"{path.relative_to(K8S)}#{i}", doc))
    for name in OVERLAYS:
        for doc in rendered(name):
            out.append((f"overlays/{name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: RayClusters and the rayClusterSpec of self-contained RayJobs."""
    out = []
    for label, doc in all_manifests():
        if doc["kind"] == "RayCluster":
            out.append((label, doc["spec"]))
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            out.append((label, doc["spec"]["rayClusterSpec"]))
    return out


def by_kind(kind: str, docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(kind: str, path: Path) -> dict:
    docs = by_kind(kind, load_docs(path))
    assert len(docs) == 1, f"{path}: expected one {kind}, found {len(docs)}"
    return docs[0]


# --------------------------------------------------------------------------- operator rules


def parse_ray_resources(value: str) -> dict[str, float]:
    """rayStartParams["resources"] read the way the operator reads it (getResourcesMap: trim quotes,
    then JSON); the string also reaches `ray start --resources=<value>` through a shell."""
    data = json.loads(value.strip("'\"` "))
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise ValueError(f"not a JSON object of numbers: {value!r}")
    return data


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def cluster_spec_errors(spec: dict, where: str = "") -> list[str]:
    """KubeRay's ValidateRayClusterSpec rules that the CRD schema cannot express (plus ours:
    minReplicas <= replicas <= maxReplicas, unique group names, parseable custom resources)."""
    errors = []
    head = spec.get("headGroupSpec", {})
    if not head.get("template", {}).get("spec", {}).get("containers"):
        errors.append(f"{where}headGroupSpec should have at least one container")
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    groups = [("Head", head)] + [(w.get("groupName", ""), w) for w in spec.get("workerGroupSpecs", [])]
    names = [name for name, _ in groups[1:]]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"{where}worker group name {name!r} is not unique")
    for name, group in groups:
        params = group.get("rayStartParams", {})
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get(
            "resources"
        ):
            errors.append(
                f"{where}resource fields should not be set in both rayStartParams and Resources for "
                f"{name} group"
            )
        if "labels" in params:
            errors.append(f"{where}rayStartParams['labels'] is not supported for {name} group")
        if "resources" in params:
            try:
                parse_ray_resources(params["resources"])
            except ValueError as e:
                errors.append(f"{where}{name}: rayStartParams resources unparseable by the operator: {e}")
        if name == "Head":
            continue
        if not group.get("template", {}).get("spec", {}).get("containers"):
            errors.append(f"{where}workerGroupSpec should have at least one container")
        lo, hi, n = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
        if not autoscaling and (lo is None or hi is None):
            errors.append(
                f"{where}worker group {name} must set both minReplicas and maxReplicas when autoscaling "
                "is disabled"
            )
        if lo is not None and lo < 0:
            errors.append(f"{where}worker group {name} has negative minReplicas {lo}")
        if lo is not None and hi is not None and lo > hi:
            errors.append(f"{where}worker group {name} has minReplicas {lo} greater than maxReplicas {hi}")
        if n is not None and ((lo is not None and n < lo) or (hi is not None and n > hi)):
            errors.append(f"{where}worker group {name} has replicas {n} outside [{lo}, {hi}]")
    auth = spec.get("authOptions")
    if auth is not None and auth.get("mode", "token") == "token":
        version = spec.get("rayVersion", "")
        if not version:
            errors.append(f"{where}authOptions.mode is 'token' but RayVersion was not specified")
        elif version_tuple(version) < MIN_RAY_FOR_TOKEN_AUTH:
            errors.append(f"{where}authOptions.mode is 'token' but minimum Ray version is 2.52.0")
    return errors


def operator_errors(doc: dict) -> list[str]:
    """KubeRay webhook/controller validation for one RayCluster or RayJob manifest."""
    errors = []
    name = doc.get("metadata", {}).get("name", "")
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        if len(name) > MAX_RAYCLUSTER_NAME:
            errors.append(f"RayCluster name should be no more than {MAX_RAYCLUSTER_NAME} characters")
        if not DNS1035.match(name):
            errors.append("RayCluster name should be a valid DNS1035 label")
        errors += cluster_spec_errors(spec)
    elif doc["kind"] == "RayJob":
        if len(name) > MAX_RAYJOB_NAME:
            errors.append(f"RayJob name should be no more than {MAX_RAYJOB_NAME} characters")
        if not DNS1035.match(name):
            errors.append("RayJob name should be a valid DNS1035 label")
        selector = spec.get("clusterSelector") or {}
        has_spec = spec.get("rayClusterSpec") is not None
        if has_spec == bool(selector):
            errors.append("exactly one of rayClusterSpec or clusterSelector must be set")
        if selector:
            if not selector.get("ray.io/cluster"):
                errors.append("cluster name in ClusterSelector should not be empty")
            if (spec.get("backoffLimit") or 0) > 0:
                errors.append("BackoffLimit is incompatible with ClusterSelector mode")
            if spec.get("submissionMode") == "SidecarMode":
                errors.append("ClusterSelector is not supported in SidecarMode")
        ttl = spec.get("ttlSecondsAfterFinished", 0)
        if ttl < 0:
            errors.append("TTLSecondsAfterFinished must be a non-negative integer")
        if ttl > 0 and not spec.get("shutdownAfterJobFinishes"):
            errors.append("a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished")
        if (spec.get("backoffLimit") or 0) < 0:
            errors.append("backoffLimit must be a positive integer")
        if not spec.get("entrypoint", "").strip():
            errors.append("entrypoint is empty")
        if has_spec:
            errors += cluster_spec_errors(spec["rayClusterSpec"], "rayClusterSpec: ")
    return errors


# --------------------------------------------------------------------------- CRD + operator rules


def test_every_manifest_kind_is_checked():
    kinds = {doc["kind"] for _, doc in all_manifests()}
    assert kinds == {"RayCluster", "RayJob", "PersistentVolumeClaim", "PodMonitor"}, kinds
    files = {p.name for p in manifest_files()}
    assert {
        "raycluster.yaml", "rayjob-train.yaml", "rayjob-rl-standalone.yaml", "pvc.yaml",
        "podmonitor.yaml",
    } <= files, files


RAY_MANIFESTS = [(label, doc) for label, doc in all_manifests() if doc["kind"] in ("RayCluster", "RayJob")]


@pytest.mark.parametrize("label,doc", RAY_MANIFESTS, ids=[label for label, _ in RAY_MANIFESTS])
def test_ray_manifest_valid(label, doc, strict_validators):
    assert doc["apiVersion"] == "ray.io/v1", label
    errors = schema_errors(strict_validators[doc["kind"]], doc)
    assert not errors, f"{label} fails the KubeRay {doc['kind']} CRD (strict):\n" + "\n".join(errors)
    errors = operator_errors(doc)
    assert not errors, f"{label} breaks KubeRay operator rules:\n" + "\n".join(errors)


def test_strict_validator_rejects_unknown_keys(crd_schemas, strict_validators):
    cluster = one("RayCluster", K8S / "raycluster.yaml")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["replica"] = 3  # typo of `replicas`
    lenient = jsonschema.Draft7Validator(crd_schemas["RayCluster"])
    assert not schema_errors(lenient, typo), "the vendored schema alone already rejects it?"
    errors = schema_errors(strict_validators["RayCluster"], typo)
    assert any("'replica' was unexpected" in e for e in errors), errors

    nested = copy.deepcopy(cluster)
    nested["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert schema_errors(strict_validators["RayCluster"], nested)

    job = one("RayJob", K8S / "rayjob-rl-standalone.yaml")
    job["spec"]["shutdownAfterJobsFinish"] = True
    assert schema_errors(strict_validators["RayJob"], job)

    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert schema_errors(strict_validators["RayCluster"], wrong_type)


def _set(doc: dict, path: str, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    return apply_json6902(doc, [{"op": "add", "path": path, "value": value}])


def _del(doc: dict, path: str) -> dict:
    return apply_json6902(doc, [{"op": "remove", "path": path}])


BAD_CLUSTERS = {
    "long name": (lambda c: _set(c, "/metadata/name", "s" * 54), "no more than 53 characters"),
    "min > max": (lambda c: _set(c, "/spec/workerGroupSpecs/0/minReplicas", 9), "greater than maxReplicas"),
    "replicas > max": (lambda c: _set(c, "/spec/workerGroupSpecs/0/replicas", 99), "outside"),
    "replicas < min": (
        lambda c: _set(_set(c, "/spec/workerGroupSpecs/0/minReplicas", 2), "/spec/workerGroupSpecs/0/replicas", 1),
        "outside",
    ),
    "no max": (lambda c: _del(c, "/spec/workerGroupSpecs/1/maxReplicas"), "must set both"),
    "duplicate group": (
        lambda c: _set(c, "/spec/workerGroupSpecs/2/groupName", "rollout-gpu"), "is not unique"
    ),
    "both resource fields": (
        lambda c: _set(c, "/spec/workerGroupSpecs/0/resources", {"rollout": "1"}), "both rayStartParams"
    ),
    "escaped resources": (
        lambda c: _set(c, "/spec/workerGroupSpecs/0/rayStartParams/resources", '"{\\"rollout\\": 1}"'),
        "unparseable",
    ),
    "old ray with token auth": (lambda c: _set(c, "/spec/rayVersion", "2.46.0"), "minimum Ray version"),
    "no containers": (
        lambda c: _set(c, "/spec/workerGroupSpecs/2/template/spec/containers", []), "at least one container"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CLUSTERS))
def test_operator_rules_reject_bad_cluster(case):
    cluster = one("RayCluster", K8S / "raycluster.yaml")
    assert not operator_errors(cluster)
    mutate, message = BAD_CLUSTERS[case]
    errors = operator_errors(mutate(cluster))
    assert any(message in e for e in errors), (case, errors)


BAD_JOBS = {
    "long name": ("rayjob-train.yaml", lambda j: _set(j, "/metadata/name", "j" * 48), "no more than 47"),
    "not dns1035": ("rayjob-train.yaml", lambda j: _set(j, "/metadata/name", "Stgrl_SFT"), "DNS1035"),
    "both spec and selector": (
        "rayjob-rl-standalone.yaml",
        lambda j: _set(j, "/spec/clusterSelector", {"ray.io/cluster": "stgrl"}),
        "exactly one of",
    ),
    "neither spec nor selector": (
        "rayjob-train.yaml", lambda j: _del(j, "/spec/clusterSelector"), "exactly one of"
    ),
    "empty selector name": (
        "rayjob-train.yaml", lambda j: _set(j, "/spec/clusterSelector", {"ray.io/cluster": ""}), "should not be empty"
    ),
    "selector without ray.io/cluster": (
        "rayjob-train.yaml", lambda j: _set(j, "/spec/clusterSelector", {"app": "stgrl"}), "should not be empty"
    ),
    "backoff with selector": ("rayjob-train.yaml", lambda j: _set(j, "/spec/backoffLimit", 2), "BackoffLimit"),
    "ttl without shutdown": (
        "rayjob-rl-standalone.yaml",
        lambda j: _set(j, "/spec/shutdownAfterJobFinishes", False),
        "cannot have TTLSecondsAfterFinished",
    ),
    "bad embedded cluster": (
        "rayjob-rl-standalone.yaml",
        lambda j: _set(j, "/spec/rayClusterSpec/workerGroupSpecs/1/minReplicas", 5),
        "rayClusterSpec: worker group learner-gpu has minReplicas 5 greater than maxReplicas",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_operator_rules_reject_bad_job(case):
    file, mutate, message = BAD_JOBS[case]
    job = one("RayJob", K8S / file)
    assert not operator_errors(job)
    errors = operator_errors(mutate(job))
    assert any(message in e for e in errors), (case, errors)


# --------------------------------------------------------------------------- cluster layout


def groups_of(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def offered(group: dict) -> dict[str, float]:
    value = group.get("rayStartParams", {}).get("resources")
    return parse_ray_resources(value) if value else {}


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def gpu_limit(group: dict) -> int:
    return int(ray_container(group).get("resources", {}).get("limits", {}).get(GPU_KEY, 0))


@pytest.mark.parametrize("label,spec", cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_cluster_layout(label, spec):
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert params.get("num-cpus") == "0", f"{label}: the head must not host actors"
    assert params.get("dashboard-host") == "0.0.0.0", f"{label}: dashboard must listen beyond localhost"
    assert not offered(head), f"{label}: the head offers no pool resource"
    head_ports = {p["name"]: p["containerPort"] for p in ray_container(head)["ports"]}
    assert head_ports.get("dashboard") == 8265 and head_ports.get("metrics") == 8080, head_ports

    auth = spec.get("authOptions", {})
    assert auth.get("mode") == "token" and auth.get("secretName"), f"{label}: token auth from a Secret"

    groups = groups_of(spec)
    assert list(groups) == list(POOLS.values()), f"{label}: pools (README patches index them) {list(groups)}"
    for pool, name in POOLS.items():
        group = groups[name]
        res = offered(group)
        assert set(res) == {pool}, f"{label}: {name} must offer exactly `{pool}`, offers {res}"
        assert res[pool] >= 1
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group.get(key), int), f"{label}: {name}.{key}"
    for name, group in [("head", head), *groups.items()]:
        assert group["rayStartParams"].get("metrics-export-port", "8080") == "8080", f"{label}: {name}"
        ports = {p["name"]: p["containerPort"] for p in ray_container(group).get("ports", [])}
        assert ports.get("metrics") == 8080, f"{label}: {name} exposes no port `metrics` (PodMonitor)"
    assert gpu_limit(groups["reward-cpu"]) == 0, f"{label}: reward shards are CPU-only"
    # One learner rank per GPU when GPUs are present.
    learner = groups["learner-gpu"]
    if gpu_limit(learner):
        assert offered(learner)["learner"] == gpu_limit(learner), f"{label}: one `learner` unit per GPU"


def test_gpu_pools_have_gpus_and_scheduling():
    specs = [(lbl, s) for lbl, s in cluster_specs() if "demo-cpu" not in lbl]
    assert len(specs) >= 3, [lbl for lbl, _ in specs]  # raycluster, standalone, qwen7b overlay
    for label, spec in specs:
        for name in GPU_GROUPS:
            group = groups_of(spec)[name]
            assert gpu_limit(group) >= 1, f"{label}: {name} needs {GPU_KEY} limits"
            pod = group["template"]["spec"]
            assert any(t.get("key") == GPU_KEY for t in pod.get("tolerations", [])), f"{label}: {name}"
            assert pod.get("nodeSelector"), f"{label}: {name} nodeSelector"
        rollout = groups_of(spec)["rollout-gpu"]
        assert offered(rollout)["rollout"] == gpu_limit(rollout), f"{label}: one vLLM engine per GPU"


def test_demo_cpu_overlay_has_no_gpu():
    (cluster,) = by_kind("RayCluster", rendered("demo-cpu"))
    text = json.dumps(cluster)
    assert GPU_KEY not in text, "demo-cpu must not request or tolerate GPUs"
    assert set().union(*(offered(g) for g in cluster["spec"]["workerGroupSpecs"])) == set(POOLS)
    (pvc,) = by_kind("PersistentVolumeClaim", rendered("demo-cpu"))
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_qwen7b_overlay_uses_eight_gpus():
    (cluster,) = by_kind("RayCluster", rendered("qwen7b-8gpu"))
    total = sum(g["replicas"] * gpu_limit(g) for g in cluster["spec"]["workerGroupSpecs"])
    assert total == 8, total


def test_standalone_job_embeds_the_same_cluster():
    cluster = one("RayCluster", K8S / "raycluster.yaml")
    job = one("RayJob", K8S / "rayjob-rl-standalone.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob-rl-standalone.yaml drifted from raycluster.yaml"


# --------------------------------------------------------------------------- jobs


def flag(entrypoint: str, name: str) -> str:
    found = re.search(rf"(?:^|\s){re.escape(name)}\s+(\S+)", entrypoint)
    assert found, f"{name} missing from {entrypoint!r}"
    return found.group(1)


@pytest.mark.parametrize("source", ["base", *OVERLAYS])
def test_one_apply_runs_sft_then_rl(source):
    """One RayJob on the long-lived cluster runs both stages in order (`stgrl train`: SFT, then RL
    from its checkpoint): two RayJobs applied together would start together, RL before its
    --init-from exists. Its rollout pool is elastic (pods added with `kubectl ray scale` get work)."""
    docs = load_docs(K8S / "rayjob-train.yaml") if source == "base" else rendered(source)
    jobs = {j["metadata"]["name"]: j for j in by_kind("RayJob", docs)}
    assert list(jobs) == ["stgrl-train"], f"{source}: one apply must hold exactly one RayJob, has {list(jobs)}"
    spec = jobs["stgrl-train"]["spec"]
    cluster = one("RayCluster", K8S / "raycluster.yaml")
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entry = spec["entrypoint"]
    assert entry.startswith("stgrl train --config "), entry
    assert not re.search(r"&&|;|\|\|", entry), "KubeRay's submitter runs the entrypoint in its own shell"
    assert re.fullmatch(r"/data/configs/[\w.-]+\.yaml", flag(entry, "--config"))
    assert flag(entry, "--run-dir").startswith("/data/")
    _, cfg = job_config(entry)
    if cfg is not None:
        assert cfg.rollout.elastic, f"{source}: rollout.elastic must be on in the KubeRay config"
    else:
        assert "rollout.elastic=true" in shlex.split(entry), source


RAY_JOBS = [(label, doc) for label, doc in RAY_MANIFESTS if doc["kind"] == "RayJob"]


@pytest.mark.parametrize("label,doc", RAY_JOBS, ids=[label for label, _ in RAY_JOBS])
def test_entrypoint_parses_with_the_cli(label, doc):
    """The entrypoint is a valid `stgrl` command line (the subcommand's own argparse config)."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "stgrl", argv
    module = f"stgrl.orchestration.commands.{argv[1].replace('-', '_')}"
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"`stgrl {argv[1]}` is not implemented yet ({module})")
    command = importlib.import_module(module)
    parser = argparse.ArgumentParser(prog=f"stgrl {command.NAME}")
    command.configure(parser)
    args = parser.parse_args(argv[2:])  # SystemExit (a failure) on an unknown flag
    assert args.config.startswith("/data/configs/"), args


def job_config(entrypoint: str):
    """The typed config a RayJob runs with: its --config read from the repository's configs/ (the
    README copies configs/ to /data/configs) plus the entrypoint's key=value overrides."""
    from stgrl.orchestration.config import load_config

    argv = shlex.split(entrypoint)
    path = REPO / "configs" / Path(flag(entrypoint, "--config")).name
    overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
    return path, load_config(path, overrides) if path.is_file() else None


def capacity(group: dict, pool: str, replicas_key: str = "replicas") -> float:
    return group[replicas_key] * offered(group)[pool]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_fits_its_config(overlay):
    """The pools of an overlay hold the actors its config asks for at the applied replica counts: RL,
    and SFT (learner ranks only), which runs first in the same RayJob on the same pools."""
    docs = rendered(overlay)
    (cluster,) = by_kind("RayCluster", docs)
    groups = groups_of(cluster["spec"])
    jobs = {j["metadata"]["name"]: j["spec"]["entrypoint"] for j in by_kind("RayJob", docs)}
    path, rl = job_config(jobs["stgrl-train"])
    assert rl is not None, f"{overlay} runs {path.name}, which configs/ lacks"
    sft = rl  # one job: SFT runs on the same pools, at the same replica counts, before RL
    rollout, learner, reward = (groups[POOLS[p]] for p in ("rollout", "learner", "reward"))
    assert capacity(rollout, "rollout") >= rl.rollout.num_workers, (overlay, rl.rollout.num_workers)
    assert capacity(reward, "reward") >= rl.reward.num_shards, (overlay, rl.reward.num_shards)
    assert capacity(learner, "learner") >= rl.learner.num_ranks, (overlay, rl.learner.num_ranks)
    assert capacity(learner, "learner") >= sft.sft.num_ranks, (overlay, sft.sft.num_ranks)
    gpus_per_engine = rl.rollout.num_gpus_per_worker
    assert offered(rollout)["rollout"] * gpus_per_engine <= gpu_limit(rollout), "rollout GPUs per pod"
    if gpu_limit(rollout) == 0:
        assert gpus_per_engine == 0, f"{overlay} has no GPU but its config asks for GPUs per rollout worker"


@pytest.mark.parametrize("label,doc", RAY_JOBS, ids=[label for label, _ in RAY_JOBS])
def test_data_plane_binds_off_loopback(label, doc):
    """Actors sit on different pods: ZeroMQ must bind a routable interface (CURVE then turns on)."""
    _, cfg = job_config(doc["spec"]["entrypoint"])
    if cfg is None:  # the base's generic /data/configs/stgrl.yaml: check the override itself
        assert "transport.bind_host=0.0.0.0" in shlex.split(doc["spec"]["entrypoint"]), label
    else:
        assert cfg.transport.bind_host in ("0.0.0.0", "*"), (label, cfg.transport.bind_host)


def test_ray_containers_start_in_the_shared_volume():
    for label, spec in cluster_specs():
        for name, group in [("head", spec["headGroupSpec"]), *groups_of(spec).items()]:
            assert ray_container(group).get("workingDir") == "/data", f"{label}: {name}"


def test_standalone_job_cleans_up():
    spec = one("RayJob", K8S / "rayjob-rl-standalone.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1
    assert "clusterSelector" not in spec
    train = one("RayJob", K8S / "rayjob-train.yaml")["spec"]["entrypoint"]
    rl = spec["entrypoint"]
    assert rl.startswith("stgrl rl --config "), rl
    for name in ("--config", "--run-dir"):
        assert flag(rl, name) == flag(train, name), f"standalone RL and rayjob-train.yaml differ in {name}"
    assert flag(rl, "--init-from") == f"{flag(train, '--run-dir')}/sft/hf", "RL starts from train's SFT output"
    overrides = lambda e: [a for a in shlex.split(e) if "=" in a and not a.startswith("-")]  # noqa: E731
    assert overrides(rl) == overrides(train), "standalone RL runs with the train job's overrides"


# --------------------------------------------------------------------------- PVC, PodMonitor


def test_pvc_is_shared_and_mounted_everywhere():
    pvc = one("PersistentVolumeClaim", K8S / "pvc.yaml")
    assert pvc["apiVersion"] == "v1" and pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert re.fullmatch(r"\d+(Gi|Ti)", pvc["spec"]["resources"]["requests"]["storage"])
    for label, spec in cluster_specs():
        for name, group in [("head", spec["headGroupSpec"]), *groups_of(spec).items()]:
            pod = group["template"]["spec"]
            vols = [v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]]
            assert len(vols) == 1, f"{label}: {name} does not mount PVC {pvc['metadata']['name']}"
            mounts = {m["name"]: m["mountPath"] for m in ray_container(group)["volumeMounts"]}
            assert mounts.get(vols[0]) == "/data", f"{label}: {name} mounts the PVC at {mounts.get(vols[0])}"


def test_podmonitors_scrape_head_and_workers():
    monitors = load_docs(K8S / "podmonitor.yaml")
    assert monitors and all(m["apiVersion"] == "monitoring.coreos.com/v1" and m["kind"] == "PodMonitor" for m in monitors)
    cluster = one("RayCluster", K8S / "raycluster.yaml")["spec"]
    node_types = set()
    for m in monitors:
        assert m["metadata"]["name"]
        spec = m["spec"]
        selector = spec["selector"]["matchLabels"]
        endpoints = spec["podMetricsEndpoints"]
        assert endpoints and all(e["port"] == "metrics" for e in endpoints), endpoints
        node_type = selector.get("ray.io/node-type")  # a label KubeRay puts on every Ray pod
        assert node_type in ("head", "worker"), selector
        node_types.add(node_type)
        # The rest of the selector must match labels our pod templates carry.
        own = {k: v for k, v in selector.items() if not k.startswith("ray.io/")}
        groups = [cluster["headGroupSpec"]] if node_type == "head" else cluster["workerGroupSpecs"]
        for group in groups:
            labels = group["template"]["metadata"]["labels"]
            assert own.items() <= labels.items(), (m["metadata"]["name"], labels)
    assert node_types == {"head", "worker"}


# --------------------------------------------------------------------------- custom resources in code

RESOURCE_DICT = re.compile(r"""(?:\bresources\s*=|["']resources["']\s*:)\s*\{([^{}]*)\}""")
# Placement-group bundles: placement_group([{"learner": 1, "GPU": 1}] * n) or bundles=[...].
BUNDLES = re.compile(r"""(?:\bplacement_group\(\s*|\bbundles\s*=\s*)\[([^\]]*)\]""")
DICT_KEY = re.compile(r"""["'](\w+)["']\s*:""")


def requested_resources(sources: dict[str, str]) -> dict[str, set[str]]:
    """Custom resource name -> files requesting it, from literal `resources={"name": n}` dicts."""
    found: dict[str, set[str]] = {}
    for path, text in sources.items():
        for body in RESOURCE_DICT.findall(text) + BUNDLES.findall(text):
            for key in DICT_KEY.findall(body):
                if key not in BUILTIN_RESOURCES:
                    found.setdefault(key, set()).add(path)
    return found


def code_sources() -> dict[str, str]:
    out = {}
    for folder in CODE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            out[str(path.relative_to(REPO))] = path.read_text(encoding="utf-8")
    return out


def test_resource_scanner_finds_requests():
    sample = {
        "a.py": 'Worker.options(num_gpus=1, resources={"rollout": 1}).remote()\n',
        "b.py": "opts = {'num_cpus': 1, 'resources': {'reward': 0.25, 'CPU': 1}}\n",
        "c.py": 'ray.remote(resources = {\n    "learner": 1,\n    "GPU": 1,\n})(Learner)\n',
        "d.py": 'resources = {"cpu": "4"}  # a k8s dict is still a literal dict\nother = {"rollout_x": 1}\n',
        "e.py": 'pg = placement_group([{"learner": 1, "GPU": 1}] * n, strategy="PACK")\n',
        "f.py": 'bundles = [{"CPU": 1, "judge": 1} for _ in range(k)]\n',
    }
    assert requested_resources(sample) == {
        "rollout": {"a.py"}, "reward": {"b.py"}, "learner": {"c.py", "e.py"}, "cpu": {"d.py"}, "judge": {"f.py"},
    }


def test_every_requested_resource_is_offered():
    requested = requested_resources(code_sources())
    needed = set(requested) | set(POOLS)  # the three pools exist even before code requests them
    for label, spec in cluster_specs():
        offers = {name: set(offered(g)) for name, g in groups_of(spec).items()}
        available = set().union(*offers.values())
        missing = {r: sorted(requested.get(r, {"<pool>"})) for r in needed - available}
        assert not missing, f"{label}: no worker group offers {missing}"
        for pool, group in POOLS.items():
            assert pool in offers[group], f"{label}: `{pool}` must come from {group}"


# --------------------------------------------------------------------------- metrics + dashboard

PROM_NAME = re.compile(r"\bray_\w+")
# PromQL parts that hold label names, not metric names (ray_io_cluster is a label).
LABEL_PARTS = (
    (re.compile(r"\{[^{}]*\}"), " "),  # {label="v", ...}
    (re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)"), " "),
    (re.compile(r"(\blabel_values\(\s*[^,()]+?)\s*,\s*\w+\s*\)"), r"\1)"),  # label_values(metric, label)
)


def metric_names_in(query: str) -> set[str]:
    for pattern, replacement in LABEL_PARTS:
        query = pattern.sub(replacement, query)
    return set(PROM_NAME.findall(query))


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL string in the dashboard: panel targets (rows included) and templating queries."""
    out = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    out.append(value)
                elif key == "query" and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard.get("panels", []))
    walk(dashboard.get("templating", {}))
    return out


def registered_prometheus_names() -> set[str]:
    names = {prometheus_name(n) for n in METRIC_NAMES}
    return names | {n + s for n in names for s in HISTOGRAM_SUFFIXES}


def unknown_metrics(queries: list[str]) -> set[str]:
    return {m for q in queries for m in metric_names_in(q)} - registered_prometheus_names()


def test_metric_names_follow_design():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert {f"reward/{c}" for c in REWARD_COMPONENTS} <= set(METRIC_NAMES)
    assert len(REWARD_COMPONENTS) == 7
    for name in METRIC_NAMES:
        prom = prometheus_name(name)
        assert re.fullmatch(r"ray_[a-z][a-z0-9_]*", prom), prom
        assert prom == "ray_" + name.replace("/", "_")
    assert len({prometheus_name(n) for n in METRIC_NAMES}) == len(METRIC_NAMES)


def test_dashboard_queries_only_registered_metrics():
    dashboard = json.loads((K8S / "grafana-dashboard.json").read_text())
    queries = dashboard_queries(dashboard)
    used = {m for q in queries for m in metric_names_in(q)}
    assert used, "dashboard queries no ray_ metric"
    assert not unknown_metrics(queries), f"dashboard queries metrics the code never registers: {unknown_metrics(queries)}"
    # ... and shows every docs/design.md §11 metric.
    shown = {u.removesuffix(s) for u in used for s in ("", *HISTOGRAM_SUFFIXES) if u.endswith(s)}
    missing = {n for n in METRIC_NAMES if prometheus_name(n) not in shown}
    assert not missing, f"no dashboard panel for {sorted(missing)}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"]


def test_dashboard_check_catches_unknown_metric():
    assert unknown_metrics(["sum(rate(ray_reward_latency_s_bucket[5m]))"]) == set()
    assert unknown_metrics(['avg(ray_rollout_tokens_per_sec{pool="x"})']) == {"ray_rollout_tokens_per_sec"}
    assert unknown_metrics(["ray_learner_step_time"]) == {"ray_learner_step_time"}
    # label names are not metric names; a metric inside label_values() is.
    query = 'avg by (ray_io_cluster) (ray_train_reward_mean{ray_io_cluster=~"$c", ray_x="1"})'
    assert metric_names_in(query) == {"ray_train_reward_mean"}
    assert metric_names_in("label_values(ray_weights_lag, ray_io_cluster)") == {"ray_weights_lag"}
    assert unknown_metrics(["histogram_quantile(0.9, ray_reward_latency_bucket)"]) == {"ray_reward_latency_bucket"}


# --------------------------------------------------------------------------- kustomize, Dockerfile


def test_kustomizations_cover_the_manifests():
    base = load_docs(K8S / "kustomization.yaml")[0]
    listed = set(base["resources"])
    expected = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"} - {"rayjob-rl-standalone.yaml"}
    assert listed == expected, listed ^ expected
    for name in OVERLAYS:
        overlay = load_docs(K8S / "overlays" / name / "kustomization.yaml")[0]
        assert {Path(r).name for r in overlay["resources"]} == listed, name
        assert all((K8S / "overlays" / name / r).resolve().parent == K8S for r in overlay["resources"])
    stages = {doc["metadata"]["labels"].get("stgrl.io/stage") for p in listed for doc in load_docs(K8S / p)}
    assert stages == {"infra", "monitoring", "train"}, stages


def test_json6902_patch_test_op_guards_group_order():
    cluster = one("RayCluster", K8S / "raycluster.yaml")
    with pytest.raises(AssertionError, match="JSON patch test failed"):
        apply_json6902(cluster, [{"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "reward-cpu"}])


@pytest.mark.parametrize("directory", [".", *(f"overlays/{o}" for o in OVERLAYS)])
def test_render_matches_kubectl_kustomize(directory):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the in-test renderer is checked against it where available")
    path = K8S / directory
    out = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d and d["kind"] != "ConfigMap"]
    ours = render(path) if directory != "." else [d for r in load_docs(path / "kustomization.yaml")[0]["resources"] for d in load_docs(path / r)]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(theirs, key=key) == sorted(ours, key=key)
    dashboard = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap"]
    assert len(dashboard) == 1 and json.loads(dashboard[0]["data"]["grafana-dashboard.json"])["uid"]


def test_dockerfile_gpu_base_with_vllm_extra():
    text = (K8S / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    assert re.match(r"(nvidia/cuda:[\w.-]*(runtime|devel)|rayproject/ray:[\w.-]*-cu\d+)", base), base
    installs = " ".join(re.findall(r"pip install[^\n]*", text))
    assert re.search(r"""["']?\.\[[^\]]*\bvllm\b[^\]]*\]""", installs), installs
    # Ray in the image is the version the manifests declare (token auth needs >= 2.52).
    for label, spec in cluster_specs():
        assert spec["rayVersion"] == args["RAY_VERSION"], label
    assert version_tuple(args["RAY_VERSION"]) >= MIN_RAY_FOR_TOKEN_AUTH
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, re.M):
        for item in src.split():
            assert (REPO / item).exists(), f"Dockerfile copies {item}, which the repository lacks"


def test_readme_commands_match_the_manifests():
    """The README's commands name the objects the manifests define (no drift after a rename)."""
    text = (K8S / "README.md").read_text()
    cluster = one("RayCluster", K8S / "raycluster.yaml")
    name = cluster["metadata"]["name"]
    train = one("RayJob", K8S / "rayjob-train.yaml")["metadata"]["name"]
    assert f"kubectl wait --for=jsonpath='{{.status.jobStatus}}'=SUCCEEDED rayjob/{train}" in text
    assert f"kubectl create secret generic {cluster['spec']['authOptions']['secretName']} " in text
    assert f"svc/{name}-head-svc 8265:8265" in text
    groups = groups_of(cluster["spec"])
    scaled = re.findall(rf"kubectl ray scale cluster {name} --worker-group (\S+)", text)
    assert scaled and set(scaled) <= set(groups), scaled
    for index, group in re.findall(r'"path": "/spec/workerGroupSpecs/(\d+)/groupName", "value": "([\w-]+)"', text):
        assert list(groups)[int(index)] == group, (index, group)
    labels = {d["metadata"]["labels"]["stgrl.io/stage"] for p in manifest_files() for d in load_docs(p)}
    for stage in re.findall(r"-l stgrl\.io/stage=([\w-]+)", text):
        assert stage in labels, stage
