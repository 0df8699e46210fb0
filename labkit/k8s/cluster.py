"""Apply, watch and remove labkit's manifests with the official Kubernetes client.

Server-side apply (the API server merges and tracks field owners; KubeRay's objects embed whole
pod specs, too large for kubectl's client-side annotation), ``dry_run`` that asks the server to
validate without saving, waiting with a progress bar, a one-line status per object, a RayJob's
logs, and delete. Every failure becomes a ``ClusterError`` that says what to do: no kubeconfig,
unreachable API server, KubeRay not installed, RBAC refusing a verb.

Example:
    >>> from labkit.k8s import preset
    >>> from labkit.k8s.cluster import connect, apply, wait_ready
    >>> api = connect()                                        # doctest: +SKIP
    >>> apply(preset("cpu"), api_client=api, dry_run=True)     # doctest: +SKIP
    ['NetworkPolicy labkit/labkit-cpu-ray: valid (dry run)', 'RayCluster labkit/labkit-cpu: valid (dry run)']
"""

from __future__ import annotations

import json
import os
import time

FIELD_MANAGER = "labkit"
INSTALL_KUBERAY = "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0 (or infra/terraform)"


class ClusterError(RuntimeError):
    """Talking to the cluster failed; the message says why and what to do."""


def connect(*, kubeconfig: str | None = None, context: str | None = None):
    """An ``ApiClient`` from the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``), or in-cluster config."""
    from kubernetes import client, config

    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, FileNotFoundError, TypeError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClusterError(
            f"no usable kubeconfig ({where}: {exc}). Get one from the instructor (`terraform output -raw kubeconfig` "
            "in infra/terraform/envs/...), point KUBECONFIG at it, or pass --kubeconfig. Without a cluster, "
            "`labkit k8s render` and `labkit k8s validate` still work.") from exc


def explain_api_error(exc, action: str) -> ClusterError:
    """Turn a Kubernetes ``ApiException`` into a ``ClusterError`` that says what to do."""
    reason = ""
    try:
        reason = json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        reason = str(getattr(exc, "reason", "") or "")
    status = getattr(exc, "status", None)
    if status == 401:
        hint = "the cluster did not accept your credentials (expired token?): fetch a fresh kubeconfig"
    elif status == 403:
        hint = ("RBAC forbids it: ask the cluster admin for a Role in this namespace that allows get/list/watch/"
                "create/patch/delete on rayclusters, rayjobs and rayservices (ray.io) and the core objects")
    elif status == 404:
        hint = "not found (already deleted, another namespace, or the CRD is not installed: " + INSTALL_KUBERAY + ")"
    elif status == 409:
        hint = "another field manager owns these fields; re-run with --force-conflicts to take them over"
    elif status == 422:
        hint = "the API server rejected the object; `labkit k8s validate` shows every problem"
    else:
        hint = "unexpected answer from the API server"
    return ClusterError(f"{action}: HTTP {status} {reason}".rstrip() + f". {hint}")


def _resource(dyn, manifest: dict):
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    api_version, kind = manifest["apiVersion"], manifest["kind"]
    try:
        return dyn.resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError as exc:
        if api_version.startswith("ray.io/"):
            raise ClusterError(f"the cluster does not know {kind} ({api_version}): the KubeRay CRDs are not "
                               f"installed. Install the operator: {INSTALL_KUBERAY}") from exc
        raise ClusterError(f"the cluster does not serve {api_version} {kind}") from exc


def _fresh_cache_file() -> str:
    import tempfile

    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = tempfile.TemporaryDirectory(prefix="labkit-kube-")  # removed at exit
    return tempfile.mktemp(suffix=".json", dir=_CACHE_DIR.name)


_CACHE_DIR = None


def _dynamic(api_client):
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic import DynamicClient
    from urllib3.exceptions import HTTPError

    try:
        # A fresh discovery per call: the client's default cache is one file per API host in the
        # system temp dir, shared by every process, so what one cluster (or user) was allowed to
        # see would be reused instead of asking the API server again.
        return DynamicClient(api_client, cache_file=_fresh_cache_file())
    except ApiException as exc:
        raise explain_api_error(exc, "discovering the cluster's APIs") from exc
    except HTTPError as exc:
        host = api_client.configuration.host
        raise ClusterError(f"cannot reach the Kubernetes API server at {host} ({type(exc).__name__}): is the cluster "
                           "up, and are you on its network/VPN? `kubectl cluster-info` should answer") from exc


def _label(m: dict) -> str:
    meta = m.get("metadata", {})
    return f"{m['kind']} {meta.get('namespace', 'default')}/{meta.get('name')}"


def apply(manifests: list[dict], *, api_client, dry_run: bool = False, force_conflicts: bool = False) -> list[str]:
    """Server-side apply each manifest in order; with ``dry_run`` the server checks but saves nothing.

    All kinds are looked up and the whole set is dry-run first, so a rejected third object does
    not leave the first two applied.
    """
    from kubernetes.client.exceptions import ApiException

    dyn = _dynamic(api_client)
    resources = [_resource(dyn, m) for m in manifests]
    for real in ([False] if dry_run else [False, True]):
        for m, resource in zip(manifests, resources, strict=True):
            extra = {} if real else {"dry_run": "All"}
            try:
                dyn.server_side_apply(resource, body=m, namespace=m["metadata"].get("namespace"),
                                      field_manager=FIELD_MANAGER, force_conflicts=force_conflicts, **extra)
            except ApiException as exc:
                raise explain_api_error(exc, f"applying {_label(m)}{'' if real else ' (dry run)'}") from exc
    return [f"{_label(m)}: {'valid (dry run)' if dry_run else 'applied'}" for m in manifests]


def summary(obj: dict) -> tuple[str, bool, bool]:
    """(one-line state, ready, failed) of a Ray object from its ``status``."""
    kind, status = obj.get("kind"), obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") == "True" for c in status.get("conditions", [])}
    if kind == "RayJob":
        deployment, job = status.get("jobDeploymentStatus", "New"), status.get("jobStatus", "")
        return (f"deployment {deployment}, job {job or 'not started'}", deployment == "Complete" and job == "SUCCEEDED",
                deployment == "Failed" or job in ("FAILED", "STOPPED"))
    if kind == "RayService":
        ready = conditions.get("Ready", False) or status.get("serviceStatus") == "Running"
        return (f"{'ready' if ready else 'not ready'} ({status.get('serviceStatus', 'pending')})", ready, False)
    if kind == "RayCluster":
        state = status.get("state", "pending")
        ready = conditions.get("HeadPodReady", False) and conditions.get("RayClusterProvisioned", state == "ready")
        workers = status.get("readyWorkerReplicas", 0)
        return (f"{state}, {workers}/{status.get('desiredWorkerReplicas', 0)} workers ready", bool(ready),
                state == "failed")
    return ("exists", True, False)


def get(manifest: dict, *, api_client) -> dict | None:
    """The live object for a manifest, or None if it does not exist."""
    from kubernetes.client.exceptions import ApiException

    dyn = _dynamic(api_client)
    try:
        return dyn.get(_resource(dyn, manifest), name=manifest["metadata"]["name"],
                       namespace=manifest["metadata"].get("namespace")).to_dict()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise explain_api_error(exc, f"reading {_label(manifest)}") from exc


def wait_ready(manifest: dict, *, api_client, timeout_s: float = 900, poll_s: float = 3,
               progress: bool = True) -> str:
    """Poll until the object is ready (a RayJob: finished successfully); returns its last state line."""
    from tqdm.auto import tqdm

    deadline = time.monotonic() + timeout_s
    with tqdm(total=None, desc=_label(manifest), bar_format="{desc} [{elapsed}]", disable=not progress) as bar:
        while True:
            obj = get(manifest, api_client=api_client)
            line, ready, failed = summary(obj) if obj else ("not created yet", False, False)
            bar.set_description_str(f"{_label(manifest)}: {line}")
            if ready:
                return line
            if failed:
                raise ClusterError(f"{_label(manifest)} failed: {line}; `labkit k8s logs` and "
                                   "`kubectl describe` show why")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{_label(manifest)} not ready after {timeout_s:.0f}s: {line}. Pending pods usually "
                                   "mean no node fits (GPU pool at max, quota): kubectl get pods; kubectl describe pod")
            time.sleep(poll_s)


def job_logs(name: str, *, namespace: str = "labkit", api_client, tail_lines: int | None = None) -> str:
    """Logs of a RayJob's submitter pod (K8sJobMode): the job's own output, as ``ray job logs`` shows it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        if not pods:
            raise ClusterError(f"no submitter pod for RayJob {namespace}/{name} yet (or it was cleaned up after "
                               "ttlSecondsAfterFinished); `labkit k8s status` shows the job's state")
        newest = max(pods, key=lambda p: p.metadata.creation_timestamp)
        return core.read_namespaced_pod_log(newest.metadata.name, namespace, tail_lines=tail_lines)
    except ApiException as exc:
        raise explain_api_error(exc, f"reading logs of RayJob {namespace}/{name}") from exc


def delete(manifests: list[dict], *, api_client) -> list[str]:
    """Delete in reverse order (Ray objects before the volumes they mount); missing ones are reported."""
    from kubernetes.client.exceptions import ApiException

    dyn = _dynamic(api_client)
    done = []
    for m in reversed(manifests):
        try:
            dyn.delete(_resource(dyn, m), name=m["metadata"]["name"], namespace=m["metadata"].get("namespace"),
                       body={"propagationPolicy": "Foreground"})
            done.append(f"{_label(m)}: deleted")
        except ApiException as exc:
            if exc.status != 404:
                raise explain_api_error(exc, f"deleting {_label(m)}") from exc
            done.append(f"{_label(m)}: already gone")
    return done
