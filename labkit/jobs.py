"""Ray jobs: submit a command to a cluster, follow it, fetch its logs, stop it.

One client for every Ray cluster: a ``ray start --head`` on this laptop, or a KubeRay head
reached through ``kubectl port-forward svc/<cluster>-head-svc 8265:8265``. Both speak the Jobs
API on the dashboard port, both have token authentication on (Ray 2.60's default; KubeRay's
``authOptions.mode: token``): the token comes from ``$RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``.

Example:
    >>> from labkit import jobs
    >>> job_id = jobs.submit("python -c 'print(42)'", address="http://127.0.0.1:8265")  # doctest: +SKIP
    >>> jobs.wait(job_id, address="http://127.0.0.1:8265").status                       # doctest: +SKIP
    'SUCCEEDED'
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from labkit.ray_runtime import LOOPBACK, auth_token_file, configure_auth

DEFAULT_ADDRESS = f"http://{LOOPBACK}:8265"
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(RuntimeError):
    """The jobs API could not be reached or refused us; the message says what to do."""


@dataclass(frozen=True)
class JobState:
    """What ``labkit jobs status`` shows about one job."""

    job_id: str
    status: str
    entrypoint: str
    message: str
    seconds: float | None

    def __str__(self) -> str:
        took = f", {self.seconds:.0f}s" if self.seconds is not None else ""
        return f"{self.job_id}: {self.status}{took} - {self.message or self.entrypoint}"


def dashboard_address(address: str | None = None) -> str:
    """``address``, else ``$RAY_DASHBOARD_ADDRESS``, else the local head's ``http://127.0.0.1:8265``."""
    address = address or os.environ.get("RAY_DASHBOARD_ADDRESS") or DEFAULT_ADDRESS
    return address if "://" in address else f"http://{address}"


def client(address: str | None = None):
    """A ``JobSubmissionClient`` for the cluster at ``address``, with a clear error if none answers."""
    configure_auth()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError, AuthenticationError) as exc:
        if isinstance(exc, AuthenticationError) or "401" in str(exc) or "403" in str(exc):
            source = "$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else str(auth_token_file())
            raise JobsError(
                f"the Ray cluster at {url} refused our token (from {source}). A local head's token is in "
                f"{auth_token_file()}; for a KubeRay cluster copy it from the cluster's auth Secret "
                "(kubectl get secrets -n <namespace> | grep <cluster>) into RAY_AUTH_TOKEN") from exc
        raise JobsError(
            f"no Ray jobs API answers at {url}. Start a local head (`labkit serve up` or `ray start --head "
            "--dashboard-host=127.0.0.1`), or forward a KubeRay head's port: kubectl port-forward "
            "svc/<cluster>-head-svc 8265:8265") from exc


def submit(entrypoint: str, *, address: str | None = None, runtime_env: dict | None = None,
           submission_id: str | None = None, entrypoint_num_cpus: float | None = None,
           entrypoint_num_gpus: float | None = None, agent_wait_s: float = 120) -> str:
    """Submit ``entrypoint`` (a shell command run on the head); returns the submission id.

    Waits up to ``agent_wait_s`` for a freshly started head's job agent.
    """
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise ValueError("entrypoint is empty: give the command to run, e.g. 'python -m labkit batch ...'")
    jobs_client = client(address)
    # A head that has just started answers HTTP before its job agent has registered ("No available
    # agent"); KubeRay heads do the same right after the pod turns ready. Waiting is the fix.
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return jobs_client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                          submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus,
                                          entrypoint_num_gpus=entrypoint_num_gpus)
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise JobsError(f"the head at {dashboard_address(address)} has no job agent after {agent_wait_s:.0f}s. "
                                "Its agent may have failed to start: another Ray on the same machine holding port "
                                "52365 is the usual cause (start the head with --dashboard-agent-listen-port)") from exc
            time.sleep(1)


def _state(info) -> JobState:
    seconds = None
    if info.start_time:
        end = info.end_time or time.time() * 1000
        seconds = (end - info.start_time) / 1000
    return JobState(job_id=info.submission_id or info.job_id, status=str(getattr(info.status, "value", info.status)),
                    entrypoint=info.entrypoint, message=info.message or "", seconds=seconds)


def status(job_id: str, *, address: str | None = None) -> JobState:
    """The job's status, how long it ran, and Ray's message about it."""
    jobs_client = client(address)
    try:
        return _state(jobs_client.get_job_info(job_id))
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise JobsError(f"no job {job_id!r} on {dashboard_address(address)}; "
                            "`labkit jobs list` shows them") from exc
        raise


def list_jobs(*, address: str | None = None) -> list[JobState]:
    """All jobs the cluster knows, oldest first."""
    infos = client(address).list_jobs()
    return [_state(i) for i in sorted(infos, key=lambda i: i.start_time or 0)]


def logs(job_id: str, *, address: str | None = None) -> str:
    """Everything the job has printed so far."""
    status(job_id, address=address)  # a clear error for an unknown id
    return client(address).get_job_logs(job_id)


def stop(job_id: str, *, address: str | None = None) -> bool:
    """Ask Ray to stop the job; False if it had already finished."""
    status(job_id, address=address)
    return bool(client(address).stop_job(job_id))


def wait(job_id: str, *, address: str | None = None, timeout_s: float = 600, progress: bool = True,
         poll_s: float = 1.0) -> JobState:
    """Block until the job finishes (or ``timeout_s`` passes, then ``TimeoutError``), showing its status."""
    from tqdm.auto import tqdm

    deadline = time.monotonic() + timeout_s
    bar = tqdm(total=None, desc=job_id, bar_format="{desc} [{elapsed}]", disable=not progress)
    try:
        while True:
            state = status(job_id, address=address)
            bar.set_description_str(f"{job_id}: {state.status}")
            if state.status in FINISHED:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state.status} after {timeout_s:.0f}s; "
                                   f"`labkit jobs logs {job_id}` shows what it is doing")
            time.sleep(poll_s)
    finally:
        bar.close()
