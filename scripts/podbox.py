"""A KubeRay-shaped cluster in a box: Ray pods as Linux namespaces, built from rendered manifests.

Why: every other test runs on one host: loopback, one /dev/shm, one environment. A pod has its own
IP, hostname, /dev/shm and /tmp/ray, and reaches the other pods only over the pod network. Here each
pod is

* its own network namespace with one veth into a bridge that lives in a namespace of its own, an
  address on a private subnet that exists only inside these namespaces, and no route anywhere else
  (nothing a pod sends can leave the box: only the pods' own addresses and loopback exist);
* its own UTS namespace (hostname = the pod name) and mount namespace: a private tmpfs /dev/shm
  (sized like the manifest's `dshm` emptyDir), a private /tmp/ray, a private /etc/hosts naming its
  IP and the head service (Ray finds its node IP through the hostname when no route exists), and the
  shared volume bind-mounted at /data (the PVC);
* started the way KubeRay starts it: `ray start` with the group's `rayStartParams` as flags, the
  container's CPU/memory limits as `--num-cpus`/`--memory`, the container's env plus what KubeRay
  injects (token auth from the Secret, the head address).

The harness reads plain manifest dicts (render them first; tests/k8s/test_manifests.py has the
renderer) and imports nothing of the project. It needs root (`ip netns`, `unshare`); `can_run()`
says why not otherwise. Everything it makes (namespaces, processes, mounts) goes with `down()`; the
mounts live in the pods' own mount namespaces and vanish with their processes.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUBNET = "10.244.0"  # a Kubernetes-style pod subnet; it exists only inside this box's namespaces
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CONTAINER_SHM = "64m"  # a container's /dev/shm without a `dshm` volume


class PodboxError(RuntimeError):
    """The box cannot be built or a pod did not come up; the message names the pod and its log."""


def can_run() -> str | None:
    """None when namespaces can be made here, else the reason (for a test skip)."""
    if os.geteuid() != 0:
        return "the cluster in a box needs root (network, UTS and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"pbx-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# --------------------------------------------------------------------------- manifests -> pods


def _quantity_bytes(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _cpus(text: str) -> str:
    return str(int(text[:-1]) // 1000) if text.endswith("m") else str(int(float(text)))


def _param_value(key: str, value: Any) -> str:
    """A rayStartParams value as `ray start` receives it through KubeRay's shell command line."""
    text = str(value)
    if key == "resources":
        return json.dumps(json.loads(text.strip("'\"` ")))
    return text


@dataclass
class PodSpec:
    """One pod of a RayCluster: what KubeRay would create for the head or one worker replica."""

    name: str
    group: str  # "head" or the worker group name
    ray_start: list[str]  # `ray start` arguments (no `--block`, no address)
    env: dict[str, str]
    labels: dict[str, str]
    shm_size: str
    working_dir: str = "/data"

    @property
    def is_head(self) -> bool:
        return self.group == "head"


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def _shm_size(group: dict) -> str:
    for volume in group["template"]["spec"].get("volumes", []):
        if volume.get("name") == "dshm" and "emptyDir" in volume:
            return volume["emptyDir"].get("sizeLimit", "1Gi").replace("Gi", "g").replace("Mi", "m")
    return CONTAINER_SHM


def pod_spec(cluster: dict, group_name: str, index: int = 0) -> PodSpec:
    """The pod KubeRay makes for `group_name` ("head" or a worker group) of RayCluster `cluster`."""
    spec = cluster["spec"] if cluster.get("kind") == "RayCluster" else cluster
    name = cluster.get("metadata", {}).get("name", "stgrl")
    if group_name == "head":
        group = spec["headGroupSpec"]
    else:
        group = next((g for g in spec["workerGroupSpecs"] if g["groupName"] == group_name), None)
        if group is None:
            raise PodboxError(f"RayCluster {name} has no worker group {group_name!r}")
    container = _container(group)
    params = dict(group.get("rayStartParams", {}))
    limits = container.get("resources", {}).get("limits", {})
    # KubeRay: num-cpus and memory come from the container's limits unless rayStartParams set them.
    if "num-cpus" not in params and "cpu" in limits:
        params["num-cpus"] = _cpus(str(limits["cpu"]))
    if "memory" not in params and "memory" in limits:
        params["memory"] = str(_quantity_bytes(str(limits["memory"])))
    args = ["--head", f"--port={GCS_PORT}"] if group_name == "head" else []
    args += [f"--{key}={_param_value(key, value)}" for key, value in params.items()]
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    pod = f"{name}-head" if group_name == "head" else f"{name}-{group_name}-{index}"
    labels = {**group["template"].get("metadata", {}).get("labels", {}), "ray.io/cluster": name,
              "ray.io/group": "headgroup" if group_name == "head" else group_name,
              "ray.io/node-type": "head" if group_name == "head" else "worker"}
    return PodSpec(name=pod, group=group_name, ray_start=args, env=env, labels=labels,
                   shm_size=_shm_size(group), working_dir=container.get("workingDir", "/data"))


# --------------------------------------------------------------------------- the box


def _run(argv: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise PodboxError(f"{shlex.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


@dataclass
class Pod:
    spec: PodSpec
    netns: str
    ip: str
    root: Path  # host dir with the pod's hosts file, /tmp/ray and logs
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Box:
    """N pods on one private bridge. Use as a context manager: `down()` runs even on failure.

    `image_env` is what the image's ENV would give every container (PATH to the project's venv,
    caches); `data_dir` is the shared volume mounted at /data in every pod.
    """

    cluster: dict
    data_dir: Path
    work_dir: Path
    token: str
    image_env: dict[str, str] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    pods: dict[str, Pod] = field(default_factory=dict)
    _next_ip: int = 10
    _made: dict[str, int] = field(default_factory=dict)  # pods made per group (names never reused)
    _bridge_ns: str = ""

    # ------------------------------------------------------------------ set-up
    def __enter__(self) -> Box:
        self.up_network()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def cluster_name(self) -> str:
        return self.cluster["metadata"]["name"]

    @property
    def head_service(self) -> str:
        """The head's Service name, as KubeRay names it (workers join through it)."""
        return f"{self.cluster_name}-head-svc"

    def up_network(self) -> None:
        self.down()  # namespaces of an earlier box with this tag (same pid) are stale
        for path in ("/data", "/tmp/ray"):  # mount points inside the pods' mount namespaces
            Path(path).mkdir(parents=True, exist_ok=True)
        self._bridge_ns = f"pbx{self.tag}-br"
        _run(["ip", "netns", "add", self._bridge_ns])
        self._ns(self._bridge_ns, ["ip", "link", "set", "lo", "up"])
        self._ns(self._bridge_ns, ["ip", "link", "add", "br0", "type", "bridge"])
        self._ns(self._bridge_ns, ["ip", "link", "set", "br0", "up"])

    def _ns(self, netns: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", netns, *argv], check=check)

    def add_pod(self, group: str, index: int | None = None) -> Pod:
        """Create the pod's namespaces and start its `ray start --block` (workers join the head)."""
        if index is None:  # a replacement pod gets a fresh name, as a ReplicaSet would
            index = self._made.get(group, 0)
        self._made[group] = max(self._made.get(group, 0), index + 1)
        spec = pod_spec(self.cluster, group, index)
        n = self._next_ip
        self._next_ip += 1
        netns = f"pbx{self.tag}-{n}"
        ip = f"{SUBNET}.{n}"
        root = self.work_dir / spec.name
        (root / "tmp-ray").mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        pod = Pod(spec=spec, netns=netns, ip=ip, root=root)
        self._make_netns(pod, n)
        self.pods[spec.name] = pod
        self._start(pod)
        return pod

    def _make_netns(self, pod: Pod, n: int) -> None:
        _run(["ip", "netns", "add", pod.netns])
        host_end = f"v{self.tag}-{n}"[:15]
        _run(["ip", "link", "add", host_end, "netns", self._bridge_ns, "type", "veth", "peer", "name", "eth0",
              "netns", pod.netns])
        self._ns(self._bridge_ns, ["ip", "link", "set", host_end, "master", "br0"])
        self._ns(self._bridge_ns, ["ip", "link", "set", host_end, "up"])
        self._ns(pod.netns, ["ip", "link", "set", "lo", "up"])
        self._ns(pod.netns, ["ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0"])
        self._ns(pod.netns, ["ip", "link", "set", "eth0", "up"])

    def _hosts(self, pod: Pod) -> str:
        head = next((p for p in self.pods.values() if p.spec.is_head), None)
        lines = ["127.0.0.1 localhost", f"{pod.ip} {pod.name}"]
        if head is not None:
            lines.append(f"{head.ip} {self.head_service}")
        return "\n".join(lines) + "\n"

    def pod_env(self, pod: Pod) -> dict[str, str]:
        """The container's env (manifest) + the image's + what KubeRay injects into a Ray pod."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               **self.image_env, **pod.spec.env}
        env |= {
            "HOME": str(pod.root / "home"),
            "HOSTNAME": pod.name,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_CLUSTER_NAME": self.cluster_name,
            "RAY_USAGE_STATS_ENABLED": "0",
            "MY_POD_IP": pod.ip,
        }
        if pod.spec.group not in ("head", "plain"):
            env["RAY_ADDRESS"] = f"{self.head_service}:{GCS_PORT}"
        return env

    def _pod_shell(self, pod: Pod, command: list[str]) -> list[str]:
        """argv that runs `command` inside the pod: its netns, a new UTS + mount namespace with the
        pod's hostname, /dev/shm, /tmp/ray, /etc/hosts and /data, in its working directory."""
        (pod.root / "hosts").write_text(self._hosts(pod))
        setup = " && ".join([
            "mount --make-rprivate /",
            f"hostname {shlex.quote(pod.name)}",
            f"mount -t tmpfs -o size={pod.spec.shm_size} shm /dev/shm",
            f"mount --bind {shlex.quote(str(pod.root / 'tmp-ray'))} /tmp/ray",
            f"mount --bind {shlex.quote(str(pod.root / 'hosts'))} /etc/hosts",
            f"mount --bind {shlex.quote(str(self.data_dir))} /data",
            f"cd {shlex.quote(pod.spec.working_dir)}",
            "exec " + shlex.join(command),
        ])
        return ["ip", "netns", "exec", pod.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                "sh", "-c", setup]

    def _start(self, pod: Pod) -> None:
        ray = shutil.which("ray", path=self.image_env.get("PATH")) or "ray"
        args = [ray, "start", "--block", "--disable-usage-stats", *pod.spec.ray_start]
        if not pod.spec.is_head:
            args.append(f"--address={self.head_service}:{GCS_PORT}")
        pod.log_path = pod.root / "ray-start.log"
        logf = pod.log_path.open("w")
        pod.proc = subprocess.Popen(self._pod_shell(pod, args), env=self.pod_env(pod), stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        log.info("pod %s (%s) at %s: %s", pod.name, pod.spec.group, pod.ip, shlex.join(args))

    # ------------------------------------------------------------------ using it
    def exec(self, pod: Pod | str, command: list[str], timeout: float = 120.0,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `command` in the pod (like `kubectl exec`) and wait for it."""
        pod = self.pods[pod] if isinstance(pod, str) else pod
        return subprocess.run(self._pod_shell(pod, command), env=self.pod_env(pod) | (env or {}),
                              capture_output=True, text=True, timeout=timeout)

    def spawn(self, pod: Pod | str, command: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start `command` in the pod in the background (its own process group)."""
        pod = self.pods[pod] if isinstance(pod, str) else pod
        logf = log_path.open("w")
        proc = subprocess.Popen(self._pod_shell(pod, command), env=self.pod_env(pod) | (env or {}),
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        return proc

    def add_plain_pod(self, name: str) -> Pod:
        """A pod without Ray on the same network (the RayJob submitter, a Prometheus)."""
        n = self._next_ip
        self._next_ip += 1
        spec = PodSpec(name=name, group="plain", ray_start=[], env={}, labels={}, shm_size=CONTAINER_SHM)
        root = self.work_dir / name
        (root / "tmp-ray").mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        pod = Pod(spec=spec, netns=f"pbx{self.tag}-{n}", ip=f"{SUBNET}.{n}", root=root)
        self._make_netns(pod, n)
        self.pods[name] = pod
        return pod

    def pods_matching(self, labels: dict[str, str]) -> list[Pod]:
        """Ray pods whose labels include `labels` (a PodMonitor's or Service's selector)."""
        return [p for p in self.pods.values() if labels.items() <= p.spec.labels.items()]

    def alive_nodes(self) -> int:
        """Alive Ray nodes, from the head's state API over the pod network (token header): a plain
        HTTP call from inside the head's network namespace, no Ray driver (which is slow to start)."""
        head = self.head()
        code = (
            "import json, sys, urllib.request\n"
            f"req = urllib.request.Request('http://{head.ip}:{DASHBOARD_PORT}/api/v0/nodes?limit=1000',"
            f" headers={{'Authorization': 'Bearer {self.token}'}})\n"
            "def walk(n):\n"
            "    if isinstance(n, dict):\n"
            "        return (n.get('state') == 'ALIVE' and 'node_id' in n) + sum(walk(v) for v in n.values())\n"
            "    return sum(walk(v) for v in n) if isinstance(n, list) else 0\n"
            "try:\n"
            "    print(walk(json.load(urllib.request.urlopen(req, timeout=10))))\n"
            "except Exception as e:\n"
            "    print(-1, e)\n"
        )
        out = _run(["ip", "netns", "exec", head.netns, "python3", "-c", code], check=False, timeout=60)
        try:
            return int(out.stdout.split()[0])
        except (IndexError, ValueError):
            return -1

    def wait_ready(self, expect_nodes: int, timeout: float = 300.0) -> None:
        """Wait until the head counts `expect_nodes` alive nodes; a pod whose `ray start` exited fails."""
        deadline = time.monotonic() + timeout
        alive = -1
        while time.monotonic() < deadline:
            for pod in self.pods.values():
                if pod.proc is not None and pod.proc.poll() is not None:
                    raise PodboxError(f"pod {pod.name} exited ({pod.proc.returncode}): {self.log_tail(pod)}")
            alive = self.alive_nodes()
            if alive >= expect_nodes:
                return
            time.sleep(2.0)
        raise PodboxError(f"cluster not up with {expect_nodes} nodes within {timeout:.0f}s (alive: {alive})")

    def head(self) -> Pod:
        return next(p for p in self.pods.values() if p.spec.is_head)

    def log_tail(self, pod: Pod, chars: int = 2000) -> str:
        return pod.log_path.read_text()[-chars:] if pod.log_path and pod.log_path.exists() else ""

    def pids(self, pod: Pod) -> list[int]:
        """Every process in the pod's network namespace (`ip netns pids`)."""
        out = _run(["ip", "netns", "pids", pod.netns], check=False)
        return [int(p) for p in out.stdout.split()]

    def kill_pod(self, pod: Pod | str) -> int:
        """Kill the pod whole: SIGKILL every process of its namespace, then delete the namespace
        (its IP is gone, as when a node or pod disappears). Returns how many processes died."""
        pod = self.pods[pod] if isinstance(pod, str) else pod
        killed = 0
        for _ in range(10):  # processes forked while we kill: repeat until the namespace is empty
            pids = self.pids(pod)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if pod.proc is not None:
            try:
                pod.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        _run(["ip", "netns", "del", pod.netns], check=False)
        del self.pods[pod.name]
        log.info("pod %s killed (%d processes)", pod.name, killed)
        return killed

    def down(self) -> None:
        """Kill every pod, delete every namespace (the veths go with them)."""
        for pod in list(self.pods.values()):
            try:
                self.kill_pod(pod)
            except Exception as e:  # keep tearing down the rest
                log.warning("tearing down pod %s: %s", pod.name, e)
        if self._bridge_ns:
            _run(["ip", "netns", "del", self._bridge_ns], check=False)
            self._bridge_ns = ""
        for name in _run(["ip", "netns", "list"], check=False).stdout.split():
            if name.startswith(f"pbx{self.tag}-"):
                _run(["ip", "netns", "del", name], check=False)
