"""The narrow boundary between fleetlab and SkyPilot's Python SDK: the only module that imports `sky`.

Everything the SkyPilot fleet needs is one of these nine calls, each taking plain data (a task as the dict of a
SkyPilot task YAML) and returning plain data (strings, ints), so the executor's logic can be tested against a fake
of this class (tests/fake_sky.py) and the SDK's own types never leak. Recent SkyPilot versions return a request id
from every call; `sky.get` waits for its result (`sky.stream_and_get` for launch/exec, which also shows progress).

Nothing here has been run against a live cloud in this repository's tests; see the README.
"""

from __future__ import annotations

import copy
import io
from typing import Any

from fleetlab.errors import ExecutorError

# SkyPilot's job states that are final
JOB_FINAL = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED")


class SkyFailure(ExecutorError):
    """A SkyPilot call failed; `setup` is True when the project's setup failed on the cluster (not the cloud)."""

    def __init__(self, message: str, setup: bool = False):
        super().__init__(message)
        self.setup = setup


def _name(value: Any) -> str | None:
    """An enum's name (ClusterStatus.UP -> "UP"), a string as is, None as None."""
    if value is None:
        return None
    return getattr(value, "name", None) or str(value).rpartition(".")[2]


def hardware_of(accelerators: dict[str, Any] | None) -> str:
    """The hardware class of launched resources: the accelerator's name ({"H100": 1} -> "H100"), "cpu" without."""
    if not accelerators:
        return "cpu"
    return str(next(iter(accelerators)))


class SkyAdapter:
    """SkyPilot through its Python SDK. Every method blocks until SkyPilot has answered."""

    def __init__(self) -> None:
        import sky  # noqa: F401 - fail early, with the executor's hint to install the extra

        self._sky = sky

    def _task(self, config: dict[str, Any]):
        return self._sky.Task.from_yaml_config(copy.deepcopy(config))  # it consumes the dict it is given

    def _wait(self, request_id: Any, stream: bool = False) -> Any:
        sky = self._sky
        if stream:
            return sky.stream_and_get(request_id, output_stream=io.StringIO())
        return sky.get(request_id)

    def launch(self, config: dict[str, Any], cluster: str, *, autostop_minutes: int | None = None,
               down: bool = False) -> int | None:
        """Provision `cluster` (or reuse it) and run the task's setup and run; the job id of its run, if any."""
        from sky import exceptions

        try:
            job_id, _ = self._wait(self._sky.launch(self._task(config), cluster_name=cluster,
                                                    idle_minutes_to_autostop=autostop_minutes, down=down), True)
        except exceptions.ResourcesUnavailableError as e:
            raise SkyFailure(f"no cloud could provide the resources of {cluster}: {e}") from e
        except exceptions.CommandError as e:  # the setup command failed on the cluster
            raise SkyFailure(f"the setup of {cluster} failed: {e}", setup=True) from e
        except Exception as e:  # noqa: BLE001 - SkyPilot raises many types; ours is one
            raise SkyFailure(f"launching {cluster} failed: {e}") from e
        return job_id

    def exec(self, config: dict[str, Any], cluster: str) -> int:
        """Queue the task on an already launched cluster (no provisioning, no setup); its job id."""
        try:
            job_id, _ = self._wait(self._sky.exec(self._task(config), cluster_name=cluster), True)
        except Exception as e:  # noqa: BLE001
            raise SkyFailure(f"queueing a job on {cluster} failed: {e}") from e
        return int(job_id)

    def cluster_status(self, cluster: str) -> tuple[str | None, str | None]:
        """(status, hardware): status "UP", "INIT", "STOPPED" or None when the cluster does not exist (any more);
        hardware from the cluster's launched resources."""
        try:
            records = self._wait(self._sky.status(cluster_names=[cluster]))
        except Exception as e:  # noqa: BLE001
            raise SkyFailure(f"could not get the status of {cluster}: {e}") from e
        for r in records or []:  # dicts, or SkyPilot's response models, which answer .get like one
            if r.get("name") == cluster:
                handle = r.get("handle")
                resources = getattr(handle, "launched_resources", None)
                return _name(r.get("status")), hardware_of(getattr(resources, "accelerators", None))
        return None, None

    def job_status(self, cluster: str, job_id: int) -> str | None:
        """PENDING, SETTING_UP, RUNNING, or a JOB_FINAL state; None if the cluster does not know the job."""
        try:
            return _name(self._wait(self._sky.job_status(cluster, [job_id])).get(job_id))
        except Exception as e:  # noqa: BLE001
            raise SkyFailure(f"could not get the status of job {job_id} on {cluster}: {e}") from e

    def queue(self, cluster: str) -> list[dict[str, Any]]:
        """The cluster's jobs as {"job_id", "name", "status"}."""
        try:
            records = self._wait(self._sky.queue(cluster))
        except Exception as e:  # noqa: BLE001
            raise SkyFailure(f"could not list the jobs of {cluster}: {e}") from e
        out = []
        for r in records or []:
            out.append({"job_id": r.get("job_id"), "name": r.get("job_name"), "status": _name(r.get("status"))})
        return out

    def logs(self, cluster: str, job_id: int) -> str:
        """The job's whole output so far."""
        out = io.StringIO()
        try:
            self._sky.tail_logs(cluster, job_id, follow=False, output_stream=out)
        except Exception as e:  # noqa: BLE001
            raise SkyFailure(f"could not read the log of job {job_id} on {cluster}: {e}") from e
        return out.getvalue()

    def cancel(self, cluster: str, job_id: int) -> None:
        try:
            self._wait(self._sky.cancel(cluster, job_ids=[job_id]))
        except Exception as e:  # noqa: BLE001
            raise SkyFailure(f"could not cancel job {job_id} on {cluster}: {e}") from e

    def down(self, cluster: str) -> None:
        try:
            self._wait(self._sky.down(cluster))
        except Exception as e:  # noqa: BLE001
            raise SkyFailure(f"could not tear down {cluster}: {e}") from e

    @staticmethod
    def validate(config: dict[str, Any]) -> None:
        """Raise if SkyPilot itself rejects the task (used on the dry-run YAMLs)."""
        import sky

        sky.Task.from_yaml_config(copy.deepcopy(config))
