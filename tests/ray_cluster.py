"""One local Ray cluster on 127.0.0.1 shared by the Ray tests and the contract suite (it takes ~20-30 s to start).

A head with one CPU (hardware "cpu") and a second node with one CPU and a custom `accelerator_type:XYZ` resource
(hardware "XYZ"), so the fleet is heterogeneous. Shut down by its own handle when the test process exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import time

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
