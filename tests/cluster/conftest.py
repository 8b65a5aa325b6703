"""The cluster in a box (scripts/podbox.py) built from the rendered `k8s/overlays/demo-cpu`: one pod
per replica of the head and worker groups, token auth on, a shared volume at /data holding the
config, the tiny model and synthetic data, as README step 5 puts them there. One cluster serves
every test of this folder; it is torn down (processes, namespaces, mounts) even on failure."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest


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
REPO, cluster_of, podbox, prepare_volume, rendered_overlay = (
    _pc.REPO, _pc.cluster_of, _pc.podbox, _pc.prepare_volume, _pc.rendered_overlay)


@pytest.fixture(scope="session")
def pod_cluster():
    """A running box: head + one pod per worker replica of the rendered overlay, all nodes alive."""
    reason = podbox.can_run()
    if reason:
        pytest.skip(f"cluster in a box unavailable: {reason}")
    docs = rendered_overlay()
    cluster = cluster_of(docs)
    base = Path(tempfile.mkdtemp(prefix="stgrl-pbx-", dir="/tmp"))  # short: Ray's unix socket paths
    data = base / "data"
    data.mkdir()
    prepare_volume(data)
    venv_bin = str(Path(sys.executable).parent)
    image_env = {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",  # the image's venv first, as its ENV PATH
        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "MPLCONFIGDIR": str(base / "mpl"),
        # test-speed knob: our gauges reach the metrics endpoint every 2 s instead of 10 s
        "RAY_metrics_report_interval_ms": "2000",
    }
    box = podbox.Box(cluster=cluster, data_dir=data, work_dir=base / "pods", token=secrets.token_hex(32),
                     image_env=image_env)
    try:
        box.up_network()
        box.add_pod("head")
        expected = 1
        for group in cluster["spec"]["workerGroupSpecs"]:
            for _ in range(group["replicas"]):
                box.add_pod(group["groupName"])
                expected += 1
        box.wait_ready(expected, timeout=300)
        yield box
    finally:
        box.down()
        if not os.environ.get("STGRL_KEEP_PODBOX"):  # set it to keep the pods' logs and the volume
            shutil.rmtree(base, ignore_errors=True)
