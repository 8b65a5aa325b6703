"""`stgrl run`: SFT and RL as two Ray jobs, chained.

SFT is submitted with the Ray Jobs API, watched until it reaches a terminal state, and only when it
SUCCEEDED is RL submitted from its checkpoint; a failed SFT stops the chain and its log tail is shown.
With `RAY_ADDRESS` (or `--address`) the jobs go to that cluster; otherwise a local head is started on
loopback (dashboard on 127.0.0.1) and stopped at the end. Every wait has a timeout that names the job.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
FAILED_TAIL_LINES = 30
"""Lines of a failed job's log shown on the console (its whole log is in the run's logs/)."""


class JobChainError(RuntimeError):
    """A chained stage did not succeed; the message names the job, its status and its log tail."""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


class LocalHead:
    """A `ray start --head` on loopback with the pool resources and token auth, stopped on exit.

    Token auth is explicit: a fresh random token per head, given to the head and to this process
    (which submits the jobs) through the environment and never logged or written to the run.
    """

    def __init__(self, resources: dict[str, float], dashboard_port: int = 8265) -> None:
        import secrets

        self.resources = resources
        # Other Ray clusters may run on this machine: take the default dashboard port only if free,
        # and free ports for everything else that would otherwise clash (GCS, agent, metrics, client).
        self.dashboard_port = dashboard_port if _port_free(dashboard_port) else _free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="stgrl-ray-")
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self._auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> LocalHead:
        log.info("starting a local Ray head with token auth (dashboard %s)", self.address)
        for key, value in self._auth.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        exe = Path(sys.executable).with_name("ray")
        self._log = open(Path(self.temp_dir) / "head.log", "w")  # noqa: SIM115 - closed in __exit__
        # --block + its own process group: stopping it stops exactly this cluster (`ray stop` would
        # stop every Ray cluster of the user on this machine).
        self._proc = subprocess.Popen(
            [str(exe), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host",
             "127.0.0.1", "--dashboard-port", str(self.dashboard_port), "--port", str(_free_port()),
             "--dashboard-agent-listen-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
             "--ray-client-server-port", str(_free_port()), "--num-cpus",
             str(max(8, os.cpu_count() or 2)), "--resources", json.dumps(self.resources),
             "--temp-dir", self.temp_dir, "--disable-usage-stats"],
            env=dict(os.environ), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout_s=180)
        except BaseException:
            self.__exit__()  # __exit__ is not called when __enter__ raises: stop the head, restore env
            raise
        return self

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._auth['RAY_AUTH_TOKEN']}"}

    def _wait_ready(self, timeout_s: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise JobChainError(f"local Ray head exited with {self._proc.returncode}; see "
                                    f"{Path(self.temp_dir) / 'head.log'}")
            try:
                req = urllib.request.Request(f"{self.address}/api/version", headers=self.auth_headers)
                with urllib.request.urlopen(req, timeout=2):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise JobChainError(f"local Ray head dashboard {self.address} not up within {timeout_s:.0f}s")
            time.sleep(1.0)

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self._proc.pid, sig)
                self._proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        for key, old in self._saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def forward_job_line(name: str, line: str) -> None:
    """One line of a job's log, re-logged here. The job's own log lines (plain `HH:MM:SS LEVEL msg`:
    a job's console is not a terminal) keep their level, lose their timestamp (ours is added: no
    double timestamps) and get the job's name; anything else (Ray's job-manager lines, the job's
    progress lines, which this process shows itself from the run directory) is chatter: the log file
    only, the console too with -v."""
    from stgrl.orchestration.console_log import PLAIN_LINE, strip_ansi

    line = strip_ansi(line).rstrip()
    if not line.strip():
        return
    m = PLAIN_LINE.match(line)
    if m:
        log.log(logging.getLevelName(m.group(2)), "[%s] %s", name, m.group(3))
    else:
        logging.getLogger(f"{__name__}.output").log(logging.INFO, "[%s] %s", name, line)


def submit_and_wait(client, entrypoint: list[str], name: str, env: dict[str, str], timeout_s: float,
                    poll_s: float = 2.0) -> str:
    """Submit one job, stream its new log lines, and return its terminal status (or raise on timeout)."""
    job_id = None
    for attempt in range(60):  # a fresh head's job agent comes up a little after its dashboard
        try:
            job_id = client.submit_job(entrypoint=shlex.join(entrypoint),
                                       submission_id=f"{name}-{int(time.time())}",
                                       runtime_env={"env_vars": env})
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or attempt == 59:
                raise
            time.sleep(2.0)
    log.info("submitted Ray job %s", job_id)
    log.debug("job %s entrypoint: %s", job_id, shlex.join(entrypoint))
    deadline = time.monotonic() + timeout_s
    shown = 0
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        logs = client.get_job_logs(job_id)
        for line in logs[shown:].splitlines():
            forward_job_line(name, line)
        shown = len(logs)
        if status in TERMINAL:
            if status != "SUCCEEDED":
                # quiet mode kept the job's raw lines (a traceback among them) off the console: show
                # the end of its log now, when it matters
                from stgrl.orchestration.console_log import strip_ansi

                tail = [strip_ansi(line) for line in logs.splitlines()[-FAILED_TAIL_LINES:]]
                log.error("job %s ended %s; the last %d lines of its log:\n%s", name, status, len(tail),
                          "\n".join(tail))
            return status
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise JobChainError(f"job {name} ({job_id}) did not finish within {timeout_s:.0f}s (last status {status})")
        time.sleep(poll_s)


def run_chain(config_path: str | None, overrides: list[str], run_dir: Path, address: str | None,
              resources: dict[str, float], timeout_s: float, verbose: bool = False) -> None:
    """SFT job -> (on SUCCEEDED) RL job from the SFT checkpoint. `verbose`: the jobs run with -v."""
    from ray.job_submission import JobSubmissionClient

    base = [sys.executable, "-m", "stgrl", *(["-v"] if verbose else [])]
    cfg_args = (["--config", str(Path(config_path).resolve())] if config_path else []) + list(overrides)
    env = {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "TORCH_EXTENSIONS_DIR", "MPLCONFIGDIR",
                                                         "WANDB_MODE", "DS_ACCELERATOR", "OMP_NUM_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    sft_cmd = [*base, "sft", *cfg_args, "--run-dir", str(run_dir.resolve())]
    rl_cmd = [*base, "rl", *cfg_args, "--run-dir", str(run_dir.resolve()),
              "--init-from", str((run_dir / "sft" / "hf").resolve())]

    def chain(addr: str, headers: dict[str, str] | None = None) -> None:
        client = JobSubmissionClient(addr, headers=headers)
        status = submit_and_wait(client, sft_cmd, "stgrl-sft", env, timeout_s)
        if status != "SUCCEEDED":
            raise JobChainError(f"SFT job ended {status}; RL not started (see the log lines above)")
        status = submit_and_wait(client, rl_cmd, "stgrl-rl", env, timeout_s)
        if status != "SUCCEEDED":
            raise JobChainError(f"RL job ended {status} (see the log lines above)")

    if address or os.environ.get("RAY_ADDRESS"):
        chain(address or os.environ["RAY_ADDRESS"])
    else:
        with LocalHead(resources) as head:
            chain(head.address, headers=head.auth_headers)
