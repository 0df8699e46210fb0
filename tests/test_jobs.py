"""Ray jobs for real: a `ray start --head` with token auth and the jobs API, driven by `labkit jobs`.

The same client talks to a KubeRay head through `kubectl port-forward`; here the head is local.
"""

from __future__ import annotations

import shlex
import sys

import pytest
from conftest import closed_port, ray_head, run_cli

from labkit import jobs
from labkit.k8s.presets import batch_entrypoint


@pytest.fixture(scope="module")
def head(chat_model_path):
    with ray_head(num_cpus=2, dashboard=True) as (_, dashboard_url):
        jobs.client(dashboard_url)  # fails loudly here if the head did not come up
        yield dashboard_url


def test_the_batch_job_runs_as_a_submitted_job(head, tmp_path):
    from labkit.batch import read_results

    out = tmp_path / "results"
    # sys.executable: the head's PATH may not lead to this virtualenv's python.
    command = batch_entrypoint("prompts_500", str(out), actors=1, num_cpus=1, limit=4, max_new_tokens=8,
                               python=sys.executable)
    done = run_cli("jobs", "submit", "--wait", "--timeout", "400", "--address", head, "--env", "PYTHONUNBUFFERED=1",
                   "--", *shlex.split(command), timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 rows: 4 ok, 0 errors" in done.stdout and "SUCCEEDED" in done.stdout
    job_id = done.stdout.split("submitted ", 1)[1].split()[0]

    rows = read_results(out)
    assert sorted(rows["id"].to_pylist()) == sorted(rows["id"].to_pylist()) and len(rows) == 4
    assert set(rows["status"].to_pylist()) == {"ok"} and all(t > 0 for t in rows["tokens"].to_pylist())

    status = run_cli("jobs", "status", job_id, "--address", head)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout
    listed = run_cli("jobs", "list", "--address", head)
    assert job_id in listed.stdout
    logs = run_cli("jobs", "logs", job_id, "--address", head)
    assert "4 rows: 4 ok" in logs.stdout


def test_a_running_job_can_be_stopped(head):
    job_id = jobs.submit(f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(600)'", address=head)
    for _ in range(60):
        if jobs.status(job_id, address=head).status == "RUNNING":
            break
        import time

        time.sleep(0.5)
    assert jobs.stop(job_id, address=head) is True
    assert jobs.wait(job_id, address=head, timeout_s=60, progress=False).status == "STOPPED"
    assert jobs.stop(job_id, address=head) is False


def test_failures_are_reported_clearly(head, tmp_path):
    failed = run_cli("jobs", "submit", "--wait", "--address", head, "--", sys.executable, "-c", "raise SystemExit(3)")
    assert failed.returncode == 1 and "FAILED" in failed.stdout

    unknown = run_cli("jobs", "status", "no-such-job", "--address", head)
    assert unknown.returncode == 2 and "no job 'no-such-job'" in unknown.stderr

    with closed_port() as port:
        nobody = run_cli("jobs", "list", "--address", f"http://127.0.0.1:{port}")
    assert nobody.returncode == 2 and "no Ray jobs API answers" in nobody.stderr and "port-forward" in nobody.stderr

    wrong_token = run_cli("jobs", "list", "--address", head, env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong_token.returncode == 2 and "token" in wrong_token.stderr.lower()

    empty = run_cli("jobs", "submit", "--address", head)
    assert empty.returncode == 2 and "no command given" in empty.stderr
