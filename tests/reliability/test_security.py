"""Security defaults (issue 12, part 4).

Proven elsewhere (docs/reliability.md): `needs_curve` per host and mode, CURVE on off loopback, and
peers without the run's key refused (tests/transport/test_security.py); KubeRay token auth in the
manifests (tests/k8s). Here: the Ray cluster refuses a client without its token, local Ray and the
reward shards stay on loopback, shipped configs never turn CURVE off, no pickle on the data plane,
and the wandb key never reaches the run directory or the logs.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from pathlib import Path

import pytest

from stgrl.orchestration.config import load_config
from stgrl.transport.security import needs_curve

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


# --- Ray: token auth on, local cluster on loopback -------------------------------------------------

def test_local_ray_init_binds_loopback_and_never_disables_token_auth():
    from stgrl.orchestration.ray_setup import actor_env, local_init_kwargs

    cfg = load_config(None)
    kw = local_init_kwargs(cfg)
    assert kw["_node_ip_address"] == "127.0.0.1" and kw["dashboard_host"] == "127.0.0.1"
    assert kw["include_dashboard"] is False
    assert not any("auth" in k.lower() for k in kw) and "_system_config" not in kw
    assert "RAY_AUTH_MODE" not in actor_env(cfg)
    hits = [str(p.relative_to(REPO)) for d in ("orchestration", "transport", "actors", "reward_service", "learner", "rollout", "k8s")
            for p in (REPO / d).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".sh")
            and "RAY_AUTH_MODE=disabled" in p.read_text(errors="replace").replace('"', "").replace(" ", "")]
    assert not hits, f"token auth switched off in {hits}"


def _gcs_call(address: str, metadata: tuple):
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        return stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=metadata)


def test_ray_cluster_refuses_a_client_without_its_token(ray_cluster):
    """Ray's GCS/raylet gRPC servers listen on every interface whatever the node address (Ray 2.60),
    so the cluster token is what keeps strangers out: a raw call without it, or with a wrong one, is
    refused; the same call with the token goes through."""
    import grpc
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._raylet import AuthenticationTokenLoader

    assert is_token_auth_enabled()
    address = ray_cluster.get_runtime_context().gcs_address
    for metadata in [(), (("authorization", "Bearer not-the-cluster-token"),)]:
        with pytest.raises(grpc.RpcError) as err:
            _gcs_call(address, metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
    token = tuple(AuthenticationTokenLoader.instance().get_token_for_http_header().items())
    assert len(_gcs_call(address, token).node_info_list) >= 1


@pytest.mark.xfail(strict=True, reason="known gap (docs/reliability.md): Ray 2.60 resolves _node_ip_address="
                   "127.0.0.1 to the host's reachable IP, and its Prometheus export listens on 0.0.0.0 "
                   "without auth; firewall it, or rely on KubeRay's cluster-internal metrics port")
def test_ray_metrics_export_listens_on_loopback_only(ray_cluster):
    import psutil

    node = ray_cluster._private.worker._global_node
    if node.node_ip_address in LOOPBACK:  # a host with no other interface: the gap cannot show here
        pytest.xfail(f"node address is {node.node_ip_address}")
    port = node.metrics_export_port
    addrs = {c.laddr.ip for c in psutil.net_connections("inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert addrs, f"nothing listens on the metrics export port {port}"
    assert addrs <= LOOPBACK, f"metrics export port {port} listens on {addrs}"


# --- our own sockets --------------------------------------------------------------------------------

def test_reward_shards_bind_loopback_and_refuse_exposed_plaintext():
    from stgrl.reward_service.config import RewardConfig
    from stgrl.reward_service.server import ShardServer
    from stgrl.transport.config import TransportConfig

    for host in ("0.0.0.0", "10.1.2.3", "::"):
        exposed = ShardServer(0, RewardConfig(), TransportConfig(bind_host=host))  # no keys given
        with pytest.raises(RuntimeError, match=rf"CURVE is required for bind host '{re.escape(host)}'"):
            exposed.start()
    server = ShardServer(0, RewardConfig())
    try:
        assert server.start().startswith("tcp://127.0.0.1:")
    finally:
        server.stop()


@pytest.mark.parametrize("name", [None, *sorted(p.name for p in (REPO / "configs").glob("*.yaml"))])
def test_shipped_configs_keep_curve_on_off_loopback(name):
    cfg = load_config(None if name is None else REPO / "configs" / name)
    assert cfg.transport.curve in ("auto", "on"), name
    assert needs_curve("0.0.0.0", cfg.transport.curve)  # any exposed bind gets CURVE
    assert needs_curve(cfg.transport.bind_host, cfg.transport.curve) or cfg.transport.bind_host in LOOPBACK | {"localhost"}


# --- no pickle on the wire ---------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
PICKLE_CALLS = {"recv_pyobj", "send_pyobj", "recv_serialized", "send_serialized"}


def pickle_uses(source: str) -> list[str]:
    """Every way `source` could unpickle bytes: pickle-family imports, pyzmq's *_pyobj, torch.load,
    numpy loads with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if set(a.name.split(".")) & PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            parts = set((node.module or "").split(".")) | {a.name for a in node.names}
            if parts & PICKLE_MODULES:
                found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if attr in PICKLE_CALLS or (owner == "torch" and attr == "load"):
                found.append(f"{owner}.{attr}() line {node.lineno}")
            if any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                found.append(f"allow_pickle line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr in PICKLE_CALLS:
            found.append(f".{node.attr} line {node.lineno}")
    return sorted(set(found))


def test_the_pickle_scan_catches_each_pattern():
    for snippet in ["import pickle", "import ray.cloudpickle as cp", "from ray import cloudpickle",
                    "import dill", "from pickle import loads", "sock.recv_pyobj()", "s.send_pyobj(x)",
                    "f = sock.recv_pyobj", "torch.load(buf)", "np.load(f, allow_pickle=True)",
                    "import marshal"]:
        assert pickle_uses(snippet), snippet
    assert pickle_uses("import msgspec\nsock.recv_multipart(copy=False)\nnp.load(f)") == []


def test_no_pickle_on_the_data_plane():
    files = sorted(p for d in ("transport", "actors", "reward_service", "orchestration") for p in (REPO / d).rglob("*.py"))
    zmq_users = {p.relative_to(REPO).as_posix() for p in files if "import zmq" in p.read_text()}
    assert {"transport/endpoints.py", "transport/trajectory_channel.py", "transport/weight_channel.py",
            "reward_service/client.py"} <= zmq_users, zmq_users  # the scan covers the sockets
    bad = {p.relative_to(REPO).as_posix(): u for p in files if (u := pickle_uses(p.read_text()))}
    assert not bad, f"pickle on the data plane: {bad}"


# --- secrets -------------------------------------------------------------------------------------------

def test_wandb_key_never_reaches_the_run_directory_or_logs(tmp_path, monkeypatch, caplog, capfd):
    import msgspec

    from stgrl.orchestration.metrics import MetricsSink

    sentinel = "stgrlsecret" + "0123456789abcdef" * 2  # 40 characters, like a real key
    monkeypatch.setenv("WANDB_API_KEY", sentinel)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    cfg = load_config(REPO / "configs" / "demo.yaml")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        sink = MetricsSink(run_dir, wandb_enabled=True, wandb_mode="offline", wandb_project="stgrl-test",
                           wandb_run_name="secret-check", prometheus=False, config_dict=msgspec.to_builtins(cfg))
        assert sink._wandb is not None, "wandb did not start: the check would be vacuous"
        for step in range(3):
            sink.log(step, {"train/reward_mean": 0.1 * step, "learner/step_time_s": float("nan")})
        sink.close()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and (run_dir / "metrics.jsonl").is_file()
    leaks = [str(p.relative_to(tmp_path)) for p in files if sentinel.encode() in p.read_bytes()]
    assert not leaks, f"the wandb key was written to {leaks}"
    out, err = capfd.readouterr()
    assert sentinel not in caplog.text and sentinel not in out and sentinel not in err
    assert os.environ["WANDB_API_KEY"] == sentinel  # it was really there to leak
