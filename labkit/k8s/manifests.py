"""KubeRay manifests (API ``ray.io/v1``, operator v1.7) made from labkit's checked specs.

Each builder checks its spec first and returns plain dicts; ``to_yaml`` writes them as one
multi-document YAML. The choices that matter for a workshop are made here once:

* the head Service is ClusterIP and no Ingress is made: the dashboard and GCS accept job
  submissions, so they are reached with ``kubectl port-forward``, never a public LoadBalancer;
* Ray token authentication is on (``authOptions.mode: token``), as on a laptop with Ray 2.60;
* the shared model cache is mounted read-only and ``HF_HUB_OFFLINE=1`` is set, so no pod tries
  the Hugging Face hub (often unreachable where workshops run);
* containers drop privileges (no privilege escalation, read-only service-account token off).

Example:
    >>> from labkit.k8s import ClusterSpec, GroupSpec, ray_cluster
    >>> m = ray_cluster(ClusterSpec(name="lab", image="rayproject/ray:2.60.0-py311",
    ...                             workers=[GroupSpec(name="cpu", replicas=2)]))
    >>> m["kind"], m["spec"]["headGroupSpec"]["serviceType"]
    ('RayCluster', 'ClusterIP')
"""

from __future__ import annotations

import yaml

from labkit.k8s.spec import (
    LABKIT_HOME_IN_POD,
    MODEL_CACHE_MOUNT,
    ClusterSpec,
    GroupSpec,
    JobSpec,
    ServiceSpec,
    SpecError,
    local_versions,
)

API_VERSION = "ray.io/v1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "labkit"}
HEAD_PORTS = [("gcs", 6379), ("dashboard", 8265), ("client", 10001), ("serve", 8000)]
CLIENT_PORTS = (8265, 10001, 8000)  # jobs API + dashboard, Ray client, Serve: what other pods may reach

# checkov (see tests/test_k8s_checkov.py) reads these skips from the pod annotations; each says why.
CHECKOV_SKIPS = {
    "CKV_K8S_8": "KubeRay injects Ray's liveness probes (GCS and raylet health) into every Ray container",
    "CKV_K8S_9": "KubeRay injects Ray's readiness probes into every Ray container",
    "CKV_K8S_15": "IfNotPresent on purpose: workshop nodes pre-pull the large image; venue networks are slow",
    "CKV_K8S_22": "Ray writes its session, object spill and caches under /tmp and the home dir at run time",
    "CKV_K8S_40": "Ray's images run as the 'ray' user, uid 1000, whose home holds the Python environment",
    "CKV_K8S_43": "tags carry the Ray/Python versions labkit checks; pass image@sha256:... to pin a digest",
}


def _metadata(name: str, namespace: str, component: str) -> dict:
    return {"name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "labkit", "app.kubernetes.io/component": component, **MANAGED_BY}}


def _container(spec: ClusterSpec, group: GroupSpec, *, head: bool, extra_mounts: list[dict]) -> dict:
    limits = {"cpu": group.cpus, "memory": group.memory}
    if group.gpus:
        limits[group.gpu_resource] = group.gpus
    env = {"LABKIT_HOME": LABKIT_HOME_IN_POD, "LABKIT_PROFILE": spec.profile, "HF_HUB_OFFLINE": "1", **spec.env}
    mounts = [{"name": "ray-logs", "mountPath": "/tmp/ray"}]  # Ray's session dir; emptyDir keeps it off the image
    if spec.model_cache_claim:
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT, "readOnly": True})
    container = {
        "name": "ray-head" if head else "ray-worker",
        "image": spec.resolved_image,
        "imagePullPolicy": "IfNotPresent",
        # Requests = limits: Ray sizes its CPU/memory resources from what the pod is given, and a
        # Guaranteed pod is not the first one evicted when a node runs short.
        "resources": {"requests": dict(limits), "limits": dict(limits)},
        "env": [{"name": k, "value": str(v)} for k, v in env.items()],
        "volumeMounts": mounts + extra_mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True, "runAsUser": 1000},  # uid 1000 = 'ray' in Ray's images
    }
    if head:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in HEAD_PORTS]
    return container


def _pod_template(spec: ClusterSpec, group: GroupSpec, *, head: bool, extra_volumes: list[dict] = (),
                  extra_mounts: list[dict] = ()) -> dict:
    volumes = [{"name": "ray-logs", "emptyDir": {}}]
    if spec.model_cache_claim:
        volumes.append({"name": "model-cache",
                        "persistentVolumeClaim": {"claimName": spec.model_cache_claim, "readOnly": True}})
    pod = {"containers": [_container(spec, group, head=head, extra_mounts=list(extra_mounts))],
           "volumes": volumes + list(extra_volumes),
           "automountServiceAccountToken": False,
           "securityContext": {"fsGroup": 100, "seccompProfile": {"type": "RuntimeDefault"}}}
    if spec.priority_class:
        pod["priorityClassName"] = spec.priority_class
    if group.node_selector:
        pod["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        pod["tolerations"] = [dict(t) for t in group.tolerations]
    labels = {"app.kubernetes.io/name": "labkit", "labkit/cluster": spec.name, "labkit/group": group.name}
    annotations = {f"checkov.io/skip{i}": f"{check}={why}" for i, (check, why) in enumerate(CHECKOV_SKIPS.items(), 1)}
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}


def _ray_start_params(group: GroupSpec, *, head: bool, has_workers: bool) -> dict[str, str]:
    params: dict[str, str] = {}
    if head:
        # Inside the pod the dashboard must listen on the pod IP so port-forward and the
        # ClusterIP Service reach it; nothing outside the cluster can.
        params["dashboard-host"] = "0.0.0.0"
        if has_workers:
            params["num-cpus"] = "0"  # the head coordinates; work goes to workers so it never OOMs
    if group.gpus:
        # Said explicitly: with a shared-GPU resource KubeRay cannot infer the count, and Ray
        # tasks then take fractions of it (num_gpus=0.5).
        params["num-gpus"] = str(group.gpus)
    return params


def ray_cluster_spec(spec: ClusterSpec, *, head_volumes: list[dict] = (), head_mounts: list[dict] = ()) -> dict:
    """The ``spec`` of a RayCluster (also embedded in RayJob and RayService)."""
    body: dict = {
        # KubeRay reads this to pick behaviour per Ray release; spec.check() has already warned
        # if the image's tag says a different Ray than this machine's.
        "rayVersion": local_versions()[0],
        "enableInTreeAutoscaling": spec.autoscaling,
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            "rayStartParams": _ray_start_params(spec.head, head=True, has_workers=bool(spec.workers)),
            "template": _pod_template(spec, spec.head, head=True, extra_volumes=head_volumes,
                                      extra_mounts=head_mounts),
        },
        "workerGroupSpecs": [],
    }
    if spec.token_auth:
        body["authOptions"] = {"mode": "token"}
    if spec.autoscaling:
        idle = min((g.idle_timeout_s for g in spec.workers if g.idle_timeout_s), default=60)
        body["autoscalerOptions"] = {"upscalingMode": "Default", "idleTimeoutSeconds": idle,
                                     "resources": {"requests": {"cpu": "200m", "memory": "512Mi"},
                                                   "limits": {"cpu": "500m", "memory": "512Mi"}}}
    for group in spec.workers:
        worker = {"groupName": group.name, "replicas": group.replicas, "minReplicas": group.min,
                  "maxReplicas": group.max,
                  "rayStartParams": _ray_start_params(group, head=False, has_workers=True),
                  "template": _pod_template(spec, group, head=False)}
        if group.idle_timeout_s:
            worker["idleTimeoutSeconds"] = group.idle_timeout_s
        body["workerGroupSpecs"].append(worker)
    return body


def ray_cluster(spec: ClusterSpec) -> dict:
    """A RayCluster manifest; raises ``SpecError`` before building anything if the spec is wrong."""
    spec.check()
    return {"apiVersion": API_VERSION, "kind": "RayCluster",
            "metadata": _metadata(spec.name, spec.namespace, "cluster"), "spec": ray_cluster_spec(spec)}


def ray_job(spec: JobSpec) -> dict:
    """A RayJob manifest: the cluster is created for the entrypoint and deleted after it (with TTL)."""
    spec.check()
    volumes, mounts = [], []
    if spec.results_claim:
        volumes = [{"name": "results", "persistentVolumeClaim": {"claimName": spec.results_claim}}]
        mounts = [{"name": "results", "mountPath": spec.results_path}]
    body = {
        "entrypoint": spec.entrypoint,
        "submissionMode": spec.submission_mode,
        "shutdownAfterJobFinishes": spec.shutdown_after_finish,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
        "backoffLimit": spec.backoff_limit,
        "rayClusterSpec": ray_cluster_spec(spec.cluster, head_volumes=volumes, head_mounts=mounts),
    }
    if spec.entrypoint_num_cpus:
        body["entrypointNumCpus"] = spec.entrypoint_num_cpus
    if spec.active_deadline_s:
        body["activeDeadlineSeconds"] = spec.active_deadline_s
    if spec.runtime_env:
        body["runtimeEnvYAML"] = yaml.safe_dump(spec.runtime_env, sort_keys=True)
    return {"apiVersion": API_VERSION, "kind": "RayJob",
            "metadata": _metadata(spec.name, spec.cluster.namespace, "job"), "spec": body}


def ray_service(spec: ServiceSpec) -> dict:
    """A RayService manifest whose ``serveConfigV2`` is lab 06's Serve config, listening inside the pod."""
    import dataclasses

    from labkit.serve import ServeSettings, serve_config

    spec.check()
    settings = spec.serve or ServeSettings()
    if not isinstance(settings, ServeSettings):
        raise SpecError(f"serve must be a labkit.serve.ServeSettings, got {type(settings).__name__}")
    # In the pod the proxy must listen on the pod IP for the serve Service; outside the cluster
    # it is reachable only through that ClusterIP Service (port-forward or an authenticated gateway).
    settings = dataclasses.replace(settings, host="0.0.0.0", port=8000,
                                   profile=settings.profile or spec.cluster.profile)
    needed_gpus = settings.chat_num_gpus * (settings.chat_max_replicas or settings.chat_replicas) * settings.chat \
        + settings.image_num_gpus * settings.image_replicas * settings.images
    have_gpus = sum(g.gpus * g.max for g in [spec.cluster.head, *spec.cluster.workers])
    if needed_gpus > have_gpus:
        raise SpecError(f"the Serve apps ask for {needed_gpus:g} GPUs but the cluster has at most {have_gpus}: "
                        "add a GPU worker group or lower chat_num_gpus/image_num_gpus")
    body = {
        "serveConfigV2": yaml.safe_dump(serve_config(settings), sort_keys=False),
        "rayClusterConfig": ray_cluster_spec(spec.cluster),
    }
    return {"apiVersion": API_VERSION, "kind": "RayService",
            "metadata": _metadata(spec.name, spec.cluster.namespace, "service"), "spec": body}


def pvc(name: str, *, namespace: str = "labkit", size: str = "50Gi", access_mode: str = "ReadWriteMany",
        storage_class: str | None = None) -> dict:
    """A PersistentVolumeClaim, e.g. the shared model cache (ReadWriteMany on NAS) or job results."""
    if access_mode not in ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"):
        raise SpecError(f"access_mode {access_mode!r} is not a Kubernetes access mode")
    body: dict = {"accessModes": [access_mode], "resources": {"requests": {"storage": size}}}
    if storage_class:
        body["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _metadata(name, namespace, "storage"),
            "spec": body}


def priority_class(name: str, value: int, *, preempts: bool, description: str) -> dict:
    """A PriorityClass: pods of a higher ``value`` are scheduled first and, with ``preempts``, evict
    pods of lower value when a node has no room (the scheduler's preemption); without it they
    only wait at the front of the queue."""
    if not (isinstance(value, int) and 0 <= value <= 1_000_000_000):
        raise SpecError(f"priority value must be a whole number from 0 to 1e9 (higher is reserved), got {value!r}")
    return {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "labkit", **MANAGED_BY}},
            "value": value, "globalDefault": False,
            "preemptionPolicy": "PreemptLowerPriority" if preempts else "Never", "description": description}


def time_slicing_config(*, replicas: int = 2, namespace: str = "gpu-operator",
                        name: str = "labkit-time-slicing") -> dict:
    """The NVIDIA GPU operator's device-plugin config that shares each GPU ``replicas`` ways in time.

    With ``renameByDefault`` the shared devices are advertised as ``nvidia.com/gpu.shared``, so a
    pod asking for a whole ``nvidia.com/gpu`` cannot land on a slice by mistake. Point the
    operator at it: ``kubectl patch clusterpolicies.nvidia.com/cluster-policy --type merge -p
    '{"spec":{"devicePlugin":{"config":{"name":"labkit-time-slicing","default":"any"}}}}'``.
    Time slices share the GPU's memory with no isolation: size the models to fit together.
    """
    if not (isinstance(replicas, int) and 2 <= replicas <= 16):
        raise SpecError(f"time-slicing replicas must be from 2 to 16 per GPU, got {replicas!r}")
    config = {"version": "v1", "sharing": {"timeSlicing": {
        "renameByDefault": True, "resources": [{"name": "nvidia.com/gpu", "replicas": replicas}]}}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name, namespace, "gpu-sharing"),
            "data": {"any": yaml.safe_dump(config, sort_keys=False)}}


def network_policy(cluster_name: str, *, namespace: str = "labkit") -> dict:
    """Ingress to a Ray cluster's pods: all ports among themselves, client ports from the namespace.

    GCS and the raylets trust whoever can reach them, so nothing outside the cluster's own pods
    reaches those ports. ``kubectl port-forward`` is not affected (it enters the pod locally).
    """
    own = {"podSelector": {"matchLabels": {"labkit/cluster": cluster_name}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(f"{cluster_name}-ray", namespace, "network-policy"),
            "spec": {"podSelector": {"matchLabels": {"labkit/cluster": cluster_name}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [own]},
                                 {"from": [{"podSelector": {}}],
                                  "ports": [{"protocol": "TCP", "port": p} for p in CLIENT_PORTS]}]}}


def embedded_pods(manifests: list[dict]) -> list[dict]:
    """The pod templates inside Ray resources, as Pods, for tools that only know core kinds (checkov)."""
    pods = []
    for m in manifests:
        if m.get("kind") not in ("RayCluster", "RayJob", "RayService"):
            continue
        spec = m["spec"].get("rayClusterSpec") or m["spec"].get("rayClusterConfig") or m["spec"]
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        for group_name, group in groups:
            meta = dict(group["template"].get("metadata", {}))
            meta.update(name=f"{m['metadata']['name']}-{group_name}", namespace=m["metadata"]["namespace"])
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": group["template"]["spec"]})
    return pods


def to_yaml(manifests: list[dict] | dict) -> str:
    """One multi-document YAML, in the order given (apply PVCs before the clusters that mount them)."""
    docs = manifests if isinstance(manifests, list) else [manifests]
    return yaml.safe_dump_all(docs, sort_keys=False, width=120)
