"""One local Ray cluster on 127.0.0.1 shared by the Ray tests and the contract suite (it takes ~20-30 s to start).

A head with one CPU (hardware "cpu") and a second node with one CPU and a custom `accelerator_type:XYZ` resource
(hardware "XYZ"), so the fleet is heterogeneous. Shut down by its own handle when the test process exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import time
from pathlib import Path

_CLUSTER = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cluster():
    """(cluster, dashboard address), started on first use."""
    global _CLUSTER
    if _CLUSTER is None:
        # Ray guesses a node's address from the default route; here that is not reachable from 127.0.0.1 and its job
        # agent hangs. With this variable Ray uses the loopback address (the processes inherit it).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        from ray.cluster_utils import Cluster

        port = _free_port()
        cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args=dict(
            num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
            dashboard_port=port, object_store_memory=80 * 2**20,
            # a dead node is noticed in ~1.5 s instead of ~30 s
            _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                            "health_check_initial_delay_ms": 0}))
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 2**20,
                         resources={"accelerator_type:XYZ": 1})
        atexit.register(cluster.shutdown)
        cluster.wait_for_nodes()
        address = f"http://127.0.0.1:{port}"
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 60
        while True:  # the dashboard comes up a little after the head
            try:
                JobSubmissionClient(address)
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        _CLUSTER = (cluster, address)
    return _CLUSTER


class RayHead:
    """A Ray head started the way users start one, by `ray start --head` in another process, with Ray's token
    authentication on (RAY_AUTH_MODE=token, the token generated into $HOME/.ray/auth_token, HOME being `home` here).
    `--block` keeps that process in the foreground; it is stopped by its own process group, never a bare `ray stop`."""

    def __init__(self, home: Path):
        import subprocess
        import sys
        import tempfile

        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.dashboard_port = _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update({"HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        ray = str(Path(sys.executable).parent / "ray")
        # as Ray's message tells a user to: generate the token (into $HOME/.ray/auth_token), then start
        subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
        self.log = open(home / "ray-start.log", "wb")
        self.proc = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=1",
             "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}",
             f"--object-store-memory={80 * 2**20}", "--disable-usage-stats",
             # ports of its own: the shared test cluster of this process may hold Ray's defaults
             f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
             f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def token_file(self) -> Path:
        return self.home / ".ray" / "auth_token"

    def wait(self, timeout_s: float = 90.0) -> str:
        """Until the dashboard answers with the token and lists the head node (a few seconds later); the token."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: "
                                   f"{(self.home / 'ray-start.log').read_text()[-2000:]}")
            try:
                token = self.token_file.read_text().strip()
                client = StateApiClient(self.address, headers={"Content-Type": "application/json",
                                                               "Authorization": f"Bearer {token}"})
                if not client.list(StateResource.NODES, options=ListApiOptions(), raise_on_missing_output=False):
                    raise RuntimeError("no node yet")
                return token
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        import shutil
        import signal

        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
                break
            except Exception:  # noqa: BLE001 - TimeoutExpired: escalate
                continue
        try:  # what `ray start` left in its group after it ended
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
