"""The clusters the workshop uses, as ready specs: what ``labkit k8s render --preset NAME`` prints.

Each preset is a list of manifests (PVCs first, then the Ray resource). They are also the
golden files the tests compare against, so a change here shows up as a reviewed diff.

Example:
    >>> from labkit.k8s import preset
    >>> [m["kind"] for m in preset("job", image="rayproject/ray:2.60.0-py311")]
    ['PersistentVolumeClaim', 'PersistentVolumeClaim', 'NetworkPolicy', 'RayJob']
"""

from __future__ import annotations

import shlex

from labkit.k8s.manifests import (
    network_policy,
    priority_class,
    pvc,
    ray_cluster,
    ray_job,
    ray_service,
    time_slicing_config,
)
from labkit.k8s.spec import GPU_TAINT, ClusterSpec, GroupSpec, JobSpec, ServiceSpec

MODEL_CACHE = "labkit-models"  # filled once by the seeding Job of infra/ (`labkit models pull --profile gpu`)
GPU_POOL = {"labkit/pool": "gpu"}  # the label infra/terraform puts on the GPU node pool


def batch_entrypoint(source: str, output: str, *, actors: int = 2, num_cpus: float | None = None,
                     num_gpus: float = 0, batch_size: int = 16, max_new_tokens: int = 64,
                     limit: int | None = None, python: str = "python") -> str:
    """The command that runs lab 05's batch job on a cluster it joins (``--address auto``).

    The same string goes into a RayJob's ``entrypoint`` and into ``labkit jobs submit``.
    """
    args = [python, "-m", "labkit", "batch", source, "--output", output, "--address", "auto",
            "--actors", str(actors), "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens)]
    if num_cpus is not None:
        args += ["--num-cpus", f"{num_cpus:g}"]
    if num_gpus:
        args += ["--num-gpus", f"{num_gpus:g}"]
    if limit is not None:
        args += ["--limit", str(limit)]
    return shlex.join(args)


def cpu_cluster(*, image: str | None = None, name: str = "labkit-cpu") -> ClusterSpec:
    """A CPU-only cluster: the cpu profile's models on 1-4 workers."""
    return ClusterSpec(name=name, image=image, model_cache_claim=MODEL_CACHE,
                       head=GroupSpec(cpus=2, memory="8Gi"),
                       workers=[GroupSpec(name="cpu", cpus=4, memory="8Gi", replicas=1, min_replicas=1,
                                          max_replicas=4, idle_timeout_s=300)])


def gpu_cluster(*, image: str | None = None, name: str = "labkit-gpu") -> ClusterSpec:
    """A GPU pool that scales from zero (GPUs cost money while idle) plus a small CPU group."""
    return ClusterSpec(name=name, image=image, profile="gpu", model_cache_claim=MODEL_CACHE,
                       head=GroupSpec(cpus=4, memory="16Gi"),
                       workers=[GroupSpec(name="cpu", cpus=4, memory="8Gi", replicas=1),
                                GroupSpec(name="gpu", cpus=8, memory="48Gi", gpus=1, replicas=1, min_replicas=0,
                                          max_replicas=4, node_selector=dict(GPU_POOL),
                                          tolerations=[dict(GPU_TAINT)], idle_timeout_s=600)])


def shared_gpu_cluster(*, image: str | None = None, name: str = "labkit-shared-gpu") -> ClusterSpec:
    """Pods that each get a time-slice of a GPU (NVIDIA time-slicing renames the resource to
    ``nvidia.com/gpu.shared``); Ray sees one GPU per pod and tasks take halves of it."""
    return ClusterSpec(name=name, image=image, profile="gpu", model_cache_claim=MODEL_CACHE,
                       head=GroupSpec(cpus=2, memory="8Gi"),
                       workers=[GroupSpec(name="shared-gpu", cpus=4, memory="24Gi", gpus=1,
                                          gpu_resource="nvidia.com/gpu.shared", replicas=2, min_replicas=0,
                                          max_replicas=8, node_selector=dict(GPU_POOL),
                                          tolerations=[dict(GPU_TAINT)], idle_timeout_s=600)])


def batch_job_spec(*, image: str | None = None, name: str = "labkit-batch", source: str = "prompts_500",
                   limit: int | None = None) -> JobSpec:
    """Lab 05's batch job as a RayJob: its own cluster, results on a PVC, everything gone after."""
    cluster = cpu_cluster(image=image, name=name)
    cluster.workers = [GroupSpec(name="cpu", cpus=2, memory="8Gi", replicas=2)]
    results = f"/var/lib/labkit/results/{name}"
    return JobSpec(name=name, cluster=cluster, results_claim="labkit-results",
                   entrypoint=batch_entrypoint(source, results, actors=2, num_cpus=2, limit=limit),
                   runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})  # job logs line by line


def serve_service_spec(*, image: str | None = None, name: str = "labkit-serve") -> ServiceSpec:
    """Lab 06's chat and image apps as a RayService, the two models sharing one GPU (0.5 + 0.5)."""
    from labkit.serve import ServeSettings

    cluster = gpu_cluster(image=image, name=name)
    cluster.workers = [cluster.workers[1]]
    cluster.workers[0].min_replicas = 1  # a service keeps one GPU warm
    return ServiceSpec(name=name, cluster=cluster,
                       serve=ServeSettings(profile="gpu", chat_num_gpus=0.5, image_num_gpus=0.5, max_batch_size=16))


INFERENCE_PRIORITY, TRAINING_PRIORITY = "labkit-inference", "labkit-training"


def elastic_pool_specs(*, image: str | None = None) -> tuple[ServiceSpec, ClusterSpec]:
    """Lab 10's shared pool on Kubernetes: the chat and image service and a training cluster on
    the same GPU node pool, inference first.

    What ``labkit.elastic_training.InferenceFirst`` does on the laptop, Kubernetes does with
    priorities: the service's pods have the higher PriorityClass and may preempt, so at a peak,
    when the pool is at its largest and Serve's autoscaler asks KubeRay for one more GPU pod, the
    scheduler evicts a training pod for it. Ray Train (elastic, ``num_workers=(1, 4)``) loses that
    worker and goes on from its checkpoint with fewer; after the peak the service's idle pod is
    removed, the training cluster's autoscaler (which Ray Train asks for its maximum) adds a pod
    back, and Train grows at its next check. Training pods never preempt anyone.
    """
    from labkit.serve import ServeSettings

    service_cluster = gpu_cluster(image=image, name="labkit-inference")
    service_cluster.workers = [service_cluster.workers[1]]
    service_cluster.workers[0].min_replicas = 1  # one GPU always warm for traffic
    service_cluster.priority_class = INFERENCE_PRIORITY
    service = ServiceSpec(name="labkit-inference", cluster=service_cluster,
                          serve=ServeSettings(profile="gpu", chat_num_gpus=0.5, image_num_gpus=0.5, max_batch_size=16,
                                              chat_max_replicas=4, image_max_replicas=2,
                                              upscale_delay_s=10, downscale_delay_s=120))
    training = gpu_cluster(image=image, name="labkit-training")
    training.workers = [training.workers[1]]
    training.workers[0].idle_timeout_s = 120  # a freed GPU goes back to the pool soon
    training.priority_class = TRAINING_PRIORITY
    return service, training


def _elastic_pool(image=None):
    service, training = elastic_pool_specs(image=image)
    return [priority_class(INFERENCE_PRIORITY, 100_000, preempts=True,
                           description="labkit inference: scheduled first, may evict training pods"),
            priority_class(TRAINING_PRIORITY, 1_000, preempts=False,
                           description="labkit training: uses what inference leaves, never evicts"),
            network_policy(service.name, namespace=service.cluster.namespace), ray_service(service),
            network_policy(training.name, namespace=training.namespace), ray_cluster(training)]


def _shared_gpu(image=None):
    spec = shared_gpu_cluster(image=image)
    return [time_slicing_config(replicas=2), network_policy(spec.name, namespace=spec.namespace), ray_cluster(spec)]


def _cluster(make):
    def build(image=None):
        spec = make(image=image)
        return [network_policy(spec.name, namespace=spec.namespace), ray_cluster(spec)]
    return build


def _job(image=None):
    spec = batch_job_spec(image=image)
    return [pvc(MODEL_CACHE, size="100Gi", access_mode="ReadWriteMany"),
            pvc("labkit-results", size="10Gi", access_mode="ReadWriteMany"),
            network_policy(spec.name, namespace=spec.cluster.namespace), ray_job(spec)]


def _service(image=None):
    spec = serve_service_spec(image=image)
    return [network_policy(spec.name, namespace=spec.cluster.namespace), ray_service(spec)]


PRESETS = {
    "cpu": _cluster(cpu_cluster),
    "gpu": _cluster(gpu_cluster),
    "shared-gpu": _shared_gpu,
    "elastic-pool": _elastic_pool,
    "job": _job,
    "service": _service,
}


def preset(name: str, *, image: str | None = None) -> list[dict]:
    """The manifests of a named preset (``cpu``, ``gpu``, ``shared-gpu``, ``elastic-pool``, ``job``,
    ``service``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](image=image)


def manifests_from_spec(data: dict) -> list[dict]:
    """The manifests for a spec file's content: ``kind`` (RayCluster, RayJob or RayService) + its fields.

    Example spec (YAML)::

        kind: RayCluster
        name: my-lab
        workers: [{name: cpu, cpus: 4, memory: 8Gi, replicas: 1, max_replicas: 3}]
    """
    from labkit.k8s.spec import SpecError

    if not isinstance(data, dict) or "kind" not in data:
        raise SpecError("a spec file needs 'kind: RayCluster', 'kind: RayJob' or 'kind: RayService' at the top")
    data = dict(data)
    kind = data.pop("kind")
    if kind == "RayCluster":
        spec = ClusterSpec.from_dict(data)
        return [network_policy(spec.name, namespace=spec.namespace), ray_cluster(spec)]
    if kind == "RayJob":
        spec = JobSpec.from_dict(data)
        return [network_policy(spec.name, namespace=spec.cluster.namespace), ray_job(spec)]
    if kind == "RayService":
        spec = ServiceSpec.from_dict(data)
        return [network_policy(spec.name, namespace=spec.cluster.namespace), ray_service(spec)]
    raise SpecError(f"kind {kind!r}: a spec file describes a RayCluster, RayJob or RayService")
