"""The production shape on one machine (issue 19): the rendered demo-cpu RayCluster as namespace pods
(scripts/podbox.py), its one RayJob submitted through the Ray Jobs API exactly as KubeRay's
submitter pod does, SFT then RL, CURVE on, and while RL runs:

* a rollout pod joins (`kubectl ray scale`), its workers are picked up;
* the first rollout pod is killed whole (every process of its namespace);
* the reward pod is killed whole and a replacement pod comes up (as its ReplicaSet would);
* a real Prometheus scrapes every pod's metrics port, and every panel query of
  k8s/grafana-dashboard.json is evaluated through its HTTP API.

Afterwards the ledger must be exact (each step trained each of its prompts once), the job SUCCEEDED
(a learner rank lost is a failed job: the learner never restarted) and every panel answered.

One run serves every test here (a module fixture); the tests read what it recorded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stgrl.orchestration.ledger import check_ledger
from stgrl.orchestration.metric_names import DRIVER_OWNED, METRIC_NAMES, SHARD_OWNED, prometheus_name


def _podcluster():
    """tests/cluster/podcluster.py (the suite imports in importlib mode: no sys.path entry)."""
    import importlib.util
    import sys

    if "stgrl_podcluster" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stgrl_podcluster", Path(__file__).with_name("podcluster.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["stgrl_podcluster"] = module
        spec.loader.exec_module(module)
    return sys.modules["stgrl_podcluster"]


_pc = _podcluster()
REPO, RL_STEPS, cluster_of, manifests, rendered_overlay, train_job = (
    _pc.REPO, _pc.RL_STEPS, _pc.cluster_of, _pc.manifests, _pc.rendered_overlay, _pc.train_job)
pytestmark = pytest.mark.timeout(900)
RUN_DIR = "runs/stgrl"  # the RayJob's --run-dir /data/runs/stgrl, on the host side of the volume
JOB_TIMEOUT_S = 720.0

QUERY_SCRIPT = r"""
import json, sys, urllib.parse, urllib.request
base, path = sys.argv[1], sys.argv[2]
out = {}
for key, q in json.load(open(path)).items():
    if q.startswith("label_values:"):
        metric, label = q.split(":", 1)[1].split(",")
        url = f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric})
    else:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            out[key] = json.load(r)
    except Exception as e:
        out[key] = {"status": "error", "error": repr(e)}
print("RESULT " + json.dumps(out))
"""


@dataclass
class RunRecord:
    """What the run did and saw, for the tests to check."""

    status: str = ""
    submitter_log: str = ""
    events: list[tuple[str, int]] = field(default_factory=list)  # (what, RL steps done then)
    learner_pids: list[set[int]] = field(default_factory=list)
    panels: dict[str, Any] | None = None
    panel_queries: dict[str, str] = field(default_factory=dict)
    prometheus_missing: bool = False
    data: Path = Path()
    rl_log: str = ""
    fault_error: str = ""  # the fault script stopped early (the run still went on to its end)


def _steps_done(data: Path) -> int:
    ledger = data / RUN_DIR / "ledger.jsonl"
    return len(ledger.read_text().splitlines()) if ledger.exists() else 0


def _rl_log(data: Path) -> str:
    path = data / RUN_DIR / "logs" / "rl.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _learner_pids(box, pod) -> set[int]:
    """Processes of the learner pod that are learner ranks (Ray titles them ray::LearnerRank)."""
    pids = set()
    for pid in box.pids(pod):
        try:
            if b"LearnerRank" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------- Prometheus from the PodMonitors


def _sanitize(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def scrape_targets(box, monitors: list[dict]) -> dict[str, list[dict]]:
    """file_sd target groups per PodMonitor: its selector's pods, port 8080 (`metrics`), and the
    labels its relabelings make (`ray_io_cluster`, `ray_io_group` from the pod labels)."""
    out = {}
    for mon in monitors:
        sel = mon["spec"]["selector"]["matchLabels"]
        groups = []
        for endpoint in mon["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] == "metrics"
            for pod in box.pods_matching(sel):
                labels = {"pod": pod.name}
                for rule in endpoint.get("relabelings", []):
                    (source,) = rule["sourceLabels"]
                    name = source.removeprefix("__meta_kubernetes_pod_label_")
                    value = next((v for k, v in pod.spec.labels.items() if _sanitize(k) == name), None)
                    if value is not None:
                        labels[rule["targetLabel"]] = value
                groups.append({"targets": [f"{pod.ip}:8080"], "labels": labels})
        out[mon["metadata"]["name"]] = groups
    return out


class Prometheus:
    """The Debian prometheus binary in a pod of its own on the pod network (5 s scrapes)."""

    def __init__(self, box, monitors: list[dict]) -> None:
        self.box = box
        self.monitors = monitors
        self.pod = box.add_plain_pod("prometheus")
        self.dir = self.pod.root
        self.url = f"http://{self.pod.ip}:9090"
        # 5 s: the head's endpoint (GCS, dashboard and our metrics) answers slowly on a loaded machine
        config = {"global": {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "5s"},
                  "scrape_configs": [
            {"job_name": m["metadata"]["name"],
             "file_sd_configs": [{"files": [str(self.dir / f"{m['metadata']['name']}.json")],
                                  "refresh_interval": "2s"}]}
            for m in monitors]}
        self.update_targets()
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = box.spawn(self.pod, [
            shutil.which("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'tsdb'}", f"--web.listen-address={self.pod.ip}:9090",
            "--log.level=warn"], self.dir / "prometheus.log")

    def update_targets(self) -> None:
        for name, groups in scrape_targets(self.box, self.monitors).items():
            tmp = self.dir / f".{name}.json"
            tmp.write_text(json.dumps(groups))
            tmp.replace(self.dir / f"{name}.json")

    def query(self, queries: dict[str, str]) -> dict[str, Any]:
        qfile = self.dir / "queries.json"
        qfile.write_text(json.dumps(queries))
        out = self.box.exec(self.pod, [sys.executable, "-c", QUERY_SCRIPT, self.url, str(qfile)], timeout=120)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, f"query runner failed: {out.stdout[-1000:]} {out.stderr[-2000:]}"
        return json.loads(line.removeprefix("RESULT "))


def panel_queries(dashboard: dict, cluster: str) -> dict[str, str]:
    """key -> PromQL for every panel target and the templating query ($cluster = our cluster)."""
    out = {}
    for panel in dashboard["panels"]:
        for i, target in enumerate(panel.get("targets", [])):
            out[f"{panel['id']}:{i}:{panel['title']}"] = target["expr"].replace("$cluster", cluster)
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q or "")
        if found:
            out[f"var:{var['name']}"] = f"label_values:{found.group(1)},{found.group(2)}"
    return out


def _every_query_answered(results: dict[str, Any]) -> bool:
    """Every query returned at least one finite series (what the two dashboard tests check)."""
    for result in results.values():
        if not isinstance(result, dict) or result.get("status") != "success":
            return False
        data = result.get("data")
        series = data.get("result") if isinstance(data, dict) else data  # label values: a plain list
        if not series:
            return False
        if any(float(x["value"][1]) != float(x["value"][1]) for x in series if isinstance(x, dict) and "value" in x):
            return False
    return True


def owner_queries() -> dict[str, str]:
    """For each docs/design.md §11 name: which pod groups export its series (one owner each)."""
    out = {}
    for name in METRIC_NAMES:
        prom = prometheus_name(name) + ("_count" if name == "reward/latency_s" else "")
        out[f"owner:{name}"] = f'count by (ray_io_group) ({{__name__="{prom}"}})'
    return out


# --------------------------------------------------------------------------- the run


def _wait(pred, what: str, record: RunRecord, submitter, timeout: float, each_poll=None) -> None:
    """Poll ``pred`` every second until true; ``each_poll`` runs on each poll while the job runs."""
    deadline = time.monotonic() + timeout
    while not pred():
        if each_poll is not None and submitter.poll() is None:
            each_poll()
        if submitter.poll() is not None:
            raise AssertionError(f"the job ended while waiting for {what}; events {record.events}\n"
                                 f"{record.data.joinpath('submitter.log').read_text()[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}; events {record.events}"
        time.sleep(1.0)


@pytest.fixture(scope="module")
def train_run(pod_cluster) -> RunRecord:
    box = pod_cluster
    docs = rendered_overlay()
    job = train_job(docs)
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    data = box.data_dir
    record = RunRecord(data=data)
    prom = None
    if shutil.which("prometheus"):
        prom = Prometheus(box, monitors)
    else:
        record.prometheus_missing = True

    # KubeRay's submitter: `ray job submit --address http://<head-svc>:8265 --submission-id ... -- <entrypoint>`
    submitter_pod = box.add_plain_pod(f"{job['metadata']['name']}-submitter")
    job_id = f"{job['metadata']['name']}-{os.getpid()}"
    head_url = f"http://{box.head_service}:8265"
    submit = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", head_url,
              "--submission-id", job_id, "--", *shlex.split(job["spec"]["entrypoint"])]
    submitter = box.spawn(submitter_pod, submit, data / "submitter.log")
    learner_pod = next(p for p in box.pods.values() if p.spec.group == "learner-gpu")
    rollout_first = next(p for p in box.pods.values() if p.spec.group == "rollout-gpu")
    reward_first = next(p for p in box.pods.values() if p.spec.group == "reward-cpu")
    try:
        steps = lambda: _steps_done(data)  # noqa: E731
        try:
            _wait(lambda: steps() >= 1, "the first RL step", record, submitter, JOB_TIMEOUT_S)
            record.learner_pids.append(_learner_pids(box, learner_pod))

            joined = box.add_pod("rollout-gpu")  # kubectl ray scale ... --worker-group rollout-gpu --replicas 2
            record.events.append((f"rollout pod {joined.name} added", steps()))
            if prom:
                prom.update_targets()
            _wait(lambda: "rollout worker 2 joined the pool" in _rl_log(data), "the new pod's workers", record,
                  submitter, 300)
            at = steps()
            record.events.append(("its workers joined", at))
            _wait(lambda: steps() >= at + 1, "a step on the grown pool", record, submitter, 300)

            box.kill_pod(rollout_first)
            record.events.append((f"rollout pod {rollout_first.name} killed", steps()))
            if prom:
                prom.update_targets()
            at = steps()
            _wait(lambda: steps() >= at + 1, "a step after the rollout pod left", record, submitter, 300)

            box.kill_pod(reward_first)
            replacement = box.add_pod("reward-cpu")  # its ReplicaSet makes a new pod
            record.events.append((f"reward pod {reward_first.name} killed, {replacement.name} added", steps()))
            if prom:
                prom.update_targets()
            at = steps()
            # The ranks are sampled while the job runs (the last step may end it, and its ranks with it,
            # before a sample taken afterwards): the last set seen must be the one of the first step.
            seen: list[set[int]] = []

            def sample_ranks() -> None:
                if pids := _learner_pids(box, learner_pod):
                    seen[:] = [pids]

            _wait(lambda: steps() >= at + 2, "two steps on the replacement reward pod", record, submitter, 400,
                  each_poll=sample_ranks)
            record.learner_pids.append(seen[0] if seen else set())

            if prom:
                record.panel_queries = panel_queries(
                    json.loads((REPO / "k8s" / "grafana-dashboard.json").read_text()), cluster_of(docs)["metadata"]["name"])
                # A replacement reward pod's series reach Prometheus a scrape or two after its first
                # requests: ask again (bounded, while the job runs) until every query answers.
                queries = {**record.panel_queries, **owner_queries(), "debug:up": "up"}
                asked_until = time.monotonic() + 90
                record.panels = prom.query(queries)
                while (not _every_query_answered(record.panels) and time.monotonic() < asked_until
                       and submitter.poll() is None):
                    time.sleep(5.0)
                    record.panels = prom.query(queries)
                record.events.append(("dashboard queried", steps()))

        except AssertionError as e:  # the job itself is still judged by the tests
            record.fault_error = str(e)

        deadline = time.monotonic() + JOB_TIMEOUT_S
        while submitter.poll() is None:
            assert time.monotonic() < deadline, "the job did not finish in time"
            time.sleep(2.0)
        status = box.exec(submitter_pod, [submit[0], "job", "status", "--address", head_url, job_id], timeout=120)
        found = re.findall(r"\b(succeeded|failed|stopped|running|pending)\b", status.stdout + status.stderr, re.I)
        record.status = found[-1].upper() if found else f"unknown: {status.stdout[-500:]} {status.stderr[-500:]}"
    finally:
        record.submitter_log = (data / "submitter.log").read_text(errors="replace") if (data / "submitter.log").exists() else ""
        record.rl_log = _rl_log(data)
        if submitter.poll() is None:
            submitter.kill()
    return record


# --------------------------------------------------------------------------- the tests


def test_sft_then_rl_as_the_rayjob_runs_it(train_run):
    """≥ 3 pods from the manifests (head with no CPUs for actors, rollout, learner, reward), the one
    RayJob through the Jobs API: SFT then RL, CURVE on, ledger exact."""
    data = train_run.data
    assert train_run.status == "SUCCEEDED", train_run.submitter_log[-6000:]
    assert (data / RUN_DIR / "sft" / "hf" / "config.json").is_file(), "SFT ran first and wrote its checkpoint"
    assert (data / RUN_DIR / "rl" / "hf" / "config.json").is_file()
    sft_end = (data / RUN_DIR / "sft" / "hf" / "config.json").stat().st_mtime
    rl_start = (data / RUN_DIR / "config_rl.yaml").stat().st_mtime
    assert sft_end <= rl_start, "RL started before SFT had written its checkpoint"
    cfg = yaml.safe_load((data / RUN_DIR / "config_rl.yaml").read_text())
    assert cfg["transport"]["bind_host"] == "0.0.0.0" and cfg["transport"]["curve"] in ("auto", "on")
    assert cfg["rollout"]["elastic"] is True, "the RayJob's entrypoint turns elastic rollout on"
    # CURVE on: a plaintext socket off loopback is refused outright, so every shard that served did so
    # as a CURVE server, and it advertised its pod's IP on the pod network, never 0.0.0.0
    up = re.search(r"reward service up: \d+ shard\(s\) at (.+)", train_run.rl_log)
    assert up, "the driver did not log the shards' addresses"
    served = [a.strip() for a in up.group(1).split(",")]
    assert served and all(re.fullmatch(r"tcp://10\.244\.0\.\d+:\d+", a) for a in served), served
    assert "tcp://0.0.0.0" not in train_run.submitter_log + train_run.rl_log
    entries = check_ledger(data / RUN_DIR / "ledger.jsonl", expected_steps=RL_STEPS)
    for e in entries:
        assert sorted(e.trained) == sorted(e.assigned) or e.skipped, e
        assert len(set(e.trained)) == len(e.trained), f"step {e.step} trained a prompt twice"


def test_pods_killed_and_joined_mid_run_lose_nothing(train_run):
    """A rollout pod joined, a rollout pod and the reward pod were killed whole: every step still
    trained each of its prompts exactly once, and the learner ranks are the same processes."""
    assert not train_run.fault_error, train_run.fault_error
    assert len(train_run.events) >= 4, f"the run ended before every fault was made: {train_run.events}"
    entries = check_ledger(train_run.data / RUN_DIR / "ledger.jsonl", expected_steps=RL_STEPS)
    requeued = sum(len(e.requeued) for e in entries)
    assert requeued >= 1, "the killed rollout pod held no work: the fault did not hit the pipeline"
    log = train_run.rl_log
    # a dead pod's worker is "gone for good", or "unreachable" when Ray has not yet marked its node dead
    assert re.search(r"rollout worker \d+ (is gone for good|is unreachable .*); removed from the pool", log), \
        "the killed pod's workers were not dropped"
    assert re.search(r"reward shard \d+ moved to tcp://10\.244\.0\.", log), "no shard came back on the new pod"
    before, after = train_run.learner_pids
    assert before and before == after, f"learner ranks restarted: {before} -> {after}"
    assert train_run.status == "SUCCEEDED", train_run.submitter_log[-4000:]


def _series(result: dict) -> list[dict]:
    assert result.get("status") == "success", result
    return result["data"]["result"] if isinstance(result["data"], dict) else result["data"]


def test_every_dashboard_panel_answers_from_a_real_prometheus(train_run):
    if train_run.prometheus_missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus is not installed: run scripts/deps/prometheus.sh (CI must check the dashboard)")
        pytest.skip("prometheus is not installed (scripts/deps/prometheus.sh installs the Debian package)")
    assert train_run.panels is not None, (
        f"the run ended before the dashboard was queried: {train_run.events} {train_run.fault_error}")
    empty = []
    for key, query in train_run.panel_queries.items():
        result = train_run.panels[key]
        if key.startswith("var:"):
            assert "stgrl" in _series(result), (key, result)
            continue
        series = _series(result)
        values = [float(s["value"][1]) for s in series]
        if not series or not all(v == v for v in values):  # empty, or NaN (a quantile of nothing)
            empty.append((key, query, series))
            continue
        if "by (pool)" in query:
            assert {s["metric"].get("pool") for s in series} == {"rollout", "learner"}, (key, series)
    up = [(s["metric"].get("pod"), s["value"][1]) for s in _series(train_run.panels["debug:up"])]
    assert not empty, "panels without data:\n" + "\n".join(f"{k}: {q} -> {s}" for k, q, s in empty) + f"\nup: {up}"


def test_each_metric_is_exported_by_one_pool(train_run):
    """In Prometheus, the driver's names come from the head only and the shards' from the reward
    pods only: no dashboard sum mixes two sources."""
    if train_run.prometheus_missing:
        pytest.skip("prometheus is not installed")
    assert train_run.panels is not None, train_run.events
    for name in METRIC_NAMES:
        groups = {s["metric"].get("ray_io_group") for s in _series(train_run.panels[f"owner:{name}"])}
        want = {"headgroup"} if name in DRIVER_OWNED else {"reward-cpu"}
        assert name in DRIVER_OWNED or name in SHARD_OWNED
        assert groups == want, f"{name} exported by {groups}, expected {want}"


def test_the_box_follows_the_manifests(pod_cluster):
    """The pods are what the rendered overlay says: the head offers no CPU to actors, each worker
    group its custom resource, CPU count and dashboard/metrics flags from rayStartParams/limits."""
    cluster = cluster_of(rendered_overlay())
    head = pod_cluster.head()
    assert "--num-cpus=0" in head.spec.ray_start and "--dashboard-host=0.0.0.0" in head.spec.ray_start
    for group in cluster["spec"]["workerGroupSpecs"]:
        offered = manifests.offered(group)
        pods = [p for p in pod_cluster.pods.values() if p.spec.group == group["groupName"]]
        assert pods, group["groupName"]
        for pod in pods:
            assert f"--resources={json.dumps(offered)}" in pod.spec.ray_start
            cpus = group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
            assert f"--num-cpus={int(cpus)}" in pod.spec.ray_start
    # each pod: own hostname, own IP, no route off the pod network
    for pod in [p for p in pod_cluster.pods.values() if p.spec.group != "plain"][:2]:
        out = pod_cluster.exec(pod, ["sh", "-c", "hostname; ip -o -4 addr show dev eth0; ip route"])
        assert pod.name in out.stdout and pod.ip in out.stdout, out
        assert "default" not in out.stdout, f"{pod.name} has a route off the pod network: {out.stdout}"
