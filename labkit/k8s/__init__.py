"""Kubernetes for the labs: KubeRay manifests from small specs, checked against the real CRDs.

* ``spec``: what an instructor decides (groups, GPUs, image, model cache), checked early;
* ``manifests``: RayCluster / RayJob / RayService (``ray.io/v1``) and PVCs as plain dicts;
* ``schema``: validation against KubeRay's CRD OpenAPI schemas and Kubernetes' own;
* ``cluster``: server-side apply, dry-run, wait, status, logs and delete with the official client.

Example:
    >>> from labkit.k8s import ClusterSpec, GroupSpec, ray_cluster, to_yaml
    >>> spec = ClusterSpec(name="lab", image="rayproject/ray:2.60.0-py311",
    ...                    workers=[GroupSpec(name="cpu", cpus=2, memory="4Gi", replicas=1)])
    >>> print(to_yaml(ray_cluster(spec)).splitlines()[1])
    kind: RayCluster
"""

from labkit.k8s.manifests import pvc, ray_cluster, ray_job, ray_service, to_yaml
from labkit.k8s.presets import PRESETS, batch_job_spec, preset
from labkit.k8s.spec import ClusterSpec, GroupSpec, JobSpec, ServiceSpec, SpecError, default_image

__all__ = ["ClusterSpec", "GroupSpec", "JobSpec", "ServiceSpec", "SpecError", "default_image", "pvc", "ray_cluster",
           "ray_job", "ray_service", "to_yaml", "PRESETS", "preset", "batch_job_spec"]
