"""Small, checked descriptions of a Ray cluster on Kubernetes: what an instructor decides.

The KubeRay manifests (``labkit.k8s.manifests``) are made from these. Every check runs in
``check()`` before any YAML exists, so a negative replica count or a GPU on a CPU group is an
error that names the field, never a manifest that the operator rejects half an hour later.

Example:
    >>> from labkit.k8s.spec import ClusterSpec, GroupSpec
    >>> spec = ClusterSpec(name="lab", image="rayproject/ray:2.60.0-py311",
    ...                    workers=[GroupSpec(name="cpu", replicas=1, max_replicas=3)])
    >>> spec.check()
    >>> spec.autoscaling
    True
"""

from __future__ import annotations

import dataclasses
import re
import sys
import warnings
from dataclasses import dataclass, field

RAY_IMAGE_REPO = "rayproject/ray"
WORKSHOP_IMAGE_REPO = "labkit/workshop"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
MODEL_CACHE_MOUNT = "/var/lib/labkit/models"  # = $LABKIT_HOME/models inside the pods
LABKIT_HOME_IN_POD = "/var/lib/labkit"

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


class SpecError(ValueError):
    """A spec that would give a broken or unsafe manifest; the message names the field and the fix."""


def local_versions() -> tuple[str, str]:
    """(Ray version, Python tag like ``py311``) of this machine: what a cluster image must match."""
    from importlib.metadata import version  # not `import ray`: seconds faster for the CLI

    return version("ray"), f"py{sys.version_info.major}{sys.version_info.minor}"


def ray_base_image(*, gpu: bool = False) -> str:
    """The official Ray image matching the local Ray and Python, e.g. ``rayproject/ray:2.60.0-py311-gpu``."""
    ray_version, py = local_versions()
    return f"{RAY_IMAGE_REPO}:{ray_version}-{py}{'-gpu' if gpu else ''}"


def default_image(*, gpu: bool = False) -> str:
    """The workshop image, e.g. ``labkit/workshop:0.1.0-ray2.60.0-py311``: Ray's image plus labkit.

    Jobs run ``python -m labkit ...`` on the cluster, so the pods need labkit, not just Ray. It is
    built ``FROM`` :func:`ray_base_image` by ``infra/docker/Dockerfile``; push it to a registry the
    cluster can reach and pass its full name as ``image``.
    """
    from labkit import __version__

    ray_version, py = local_versions()
    return f"{WORKSHOP_IMAGE_REPO}:{__version__}-ray{ray_version}-{py}{'-gpu' if gpu else ''}"


def image_version_problem(image: str) -> str | None:
    """Why ``image`` may not talk to this machine's Ray (a sentence with the fix), or None if it matches.

    Ray clients and clusters must run the same Ray and Python versions (pickled functions cross
    between them). The tag is read in the official scheme (``2.60.0-py311``) or the workshop
    image's (``...-ray2.60.0-py311``).
    """
    ray_version, py = local_versions()
    name = image.split("@", 1)[0]  # name:tag@sha256:... pins a digest; the tag still says the versions
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    found_ray = re.search(r"ray(\d+\.\d+\.\d+)", tag) or re.match(r"(\d+\.\d+\.\d+)", tag)
    found_py = re.search(r"py(\d{2,3})", tag)
    if not found_ray or not found_py:
        return (f"cannot tell the Ray/Python versions of image {image!r} from its tag; make sure it runs "
                f"Ray {ray_version} and Python {py[2]}.{py[3:]} (tag it like '...-ray{ray_version}-{py}')")
    problems = []
    if found_ray.group(1) != ray_version:
        problems.append(f"Ray {found_ray.group(1)} in the image but {ray_version} here")
    if f"py{found_py.group(1)}" != py:
        problems.append(f"Python {found_py.group(1)[0]}.{found_py.group(1)[1:]} in the image but "
                        f"{py[2]}.{py[3:]} here")
    if problems:
        return (f"image {image!r}: {'; '.join(problems)}. Jobs and clients would fail to unpickle; use "
                f"{default_image()!r} (built on {ray_base_image()!r}) or install ray=={ray_version} here")
    return None


def _quantity(value: str | int | float, name: str) -> str:
    text = str(value)
    if not _QUANTITY.match(text) or float(_QUANTITY.match(text).group(1)) <= 0:
        raise SpecError(f"{name} must be a positive Kubernetes quantity like '2', '500m' or '8Gi', got {value!r}")
    return text


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity as cores: ``"4"`` -> 4.0, ``"500m"`` -> 0.5."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass(kw_only=True)
class GroupSpec:
    """One group of Ray pods: the head, or a worker group that can scale between min and max.

    ``gpus`` whole devices per pod are requested as ``gpu_resource`` (``nvidia.com/gpu``; with GPU
    sharing, e.g. NVIDIA time-slicing, ``nvidia.com/gpu.shared``). Ray is told the count through
    ``rayStartParams`` (``num-gpus``), and tasks then ask for fractions (``num_gpus=0.5``) of it.
    """

    name: str = "head"
    cpus: str | int | float = 2
    memory: str = "8Gi"
    gpus: int = 0
    gpu_resource: str = GPU_RESOURCE
    replicas: int = 1
    min_replicas: int | None = None  # None: = replicas; min < max turns on Ray's autoscaler
    max_replicas: int | None = None  # None: = replicas
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    idle_timeout_s: int | None = None  # autoscaler removes an idle worker after this long

    def check(self, *, where: str, is_head: bool = False) -> None:
        if not isinstance(self.name, str) or not _DNS1123.match(self.name) or len(self.name) > 40:
            raise SpecError(f"{where}.name {self.name!r}: use lower-case letters, digits and '-' (<= 40 chars)")
        self.cpus = _quantity(self.cpus, f"{where}.cpus")
        self.memory = _quantity(self.memory, f"{where}.memory")
        for attr in ("gpus", "replicas", "min_replicas", "max_replicas"):
            value = getattr(self, attr)
            if value is None and attr.endswith("_replicas"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(f"{where}.{attr} must be an integer >= 0, got {value!r}")
        if not is_head and not self.min <= self.replicas <= self.max:
            raise SpecError(f"{where}: need min_replicas <= replicas <= max_replicas, got "
                            f"{self.min} <= {self.replicas} <= {self.max}")
        if not is_head and self.max == 0:
            raise SpecError(f"{where}.max_replicas is 0: the group could never run a pod; remove the group")
        if self.gpus == 0 and (self.gpu_resource != GPU_RESOURCE or self.tolerations_for_gpu()):
            raise SpecError(f"{where} has no GPUs but a GPU setting ({self.gpu_resource!r} or a GPU "
                            "toleration): set gpus >= 1 or drop the GPU setting")
        if self.gpus and "/" not in self.gpu_resource:
            raise SpecError(f"{where}.gpu_resource must be an extended resource like 'nvidia.com/gpu', "
                            f"got {self.gpu_resource!r}")
        for t in self.tolerations:
            if not isinstance(t, dict) or "key" not in t and t.get("operator") != "Exists":
                raise SpecError(f"{where}.tolerations: each needs a 'key' (e.g. {GPU_TAINT}), got {t!r}")

    @property
    def min(self) -> int:
        return self.replicas if self.min_replicas is None else self.min_replicas

    @property
    def max(self) -> int:
        return self.replicas if self.max_replicas is None else self.max_replicas

    def tolerations_for_gpu(self) -> bool:
        return any(str(t.get("key", "")).startswith("nvidia.com/") for t in self.tolerations)


@dataclass(kw_only=True)
class ClusterSpec:
    """A RayCluster: a head, worker groups, the image, the shared model cache and the runtime env.

    ``model_cache_claim`` names a PersistentVolumeClaim (ReadOnlyMany/ReadWriteMany, e.g. on NAS)
    that holds ``labkit models pull`` output; it is mounted read-only in every pod so no pod
    downloads a model. ``image`` None picks the workshop image of the local versions (:func:`default_image`).
    """

    name: str
    namespace: str = "labkit"
    image: str | None = None
    head: GroupSpec = field(default_factory=GroupSpec)
    workers: list[GroupSpec] = field(default_factory=list)
    model_cache_claim: str | None = None
    profile: str = "cpu"
    env: dict[str, str] = field(default_factory=dict)
    token_auth: bool = True
    priority_class: str | None = None  # a PriorityClass for every pod (see presets.elastic_pool)

    def check(self) -> None:
        if not isinstance(self.name, str) or not _DNS1123.match(self.name) or len(self.name) > 40:
            raise SpecError(f"name {self.name!r}: use lower-case letters, digits and '-' (<= 40 chars)")
        if not _DNS1123.match(self.namespace or ""):
            raise SpecError(f"namespace {self.namespace!r} is not a valid Kubernetes namespace name")
        if self.image is not None and (not isinstance(self.image, str) or not self.image.strip()):
            raise SpecError("image is empty: give an image name, or leave it out for the workshop image "
                            f"{default_image()!r}")
        if self.profile not in ("cpu", "gpu"):
            raise SpecError(f"profile must be 'cpu' or 'gpu', got {self.profile!r}")
        self.head.check(where="head", is_head=True)
        if self.head.replicas != 1:
            raise SpecError("head.replicas must be 1: a Ray cluster has exactly one head")
        names = set()
        for i, group in enumerate(self.workers):
            if not isinstance(group, GroupSpec):
                raise SpecError(f"workers[{i}] must be a GroupSpec, got {type(group).__name__}")
            group.check(where=f"workers[{i}]")
            if group.name in names:
                raise SpecError(f"workers[{i}].name {group.name!r} is used twice")
            names.add(group.name)
        if self.priority_class is not None and not _DNS1123.match(str(self.priority_class)):
            raise SpecError(f"priority_class {self.priority_class!r} is not a valid PriorityClass name")
        if self.model_cache_claim is not None and not _DNS1123.match(self.model_cache_claim):
            raise SpecError(f"model_cache_claim {self.model_cache_claim!r} is not a valid PVC name")
        for key in self.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise SpecError(f"env name {key!r} is not a valid environment variable name")
        problem = image_version_problem(self.resolved_image)
        if problem:
            warnings.warn(problem, stacklevel=3)

    @property
    def gpu(self) -> bool:
        return any(g.gpus for g in [self.head, *self.workers])

    @property
    def autoscaling(self) -> bool:
        return any(g.min < g.max for g in self.workers)

    @property
    def resolved_image(self) -> str:
        return self.image or default_image(gpu=self.gpu)

    @classmethod
    def from_dict(cls, data: dict) -> ClusterSpec:
        """Build from plain data (a YAML spec file); unknown keys are errors, not silently ignored."""
        data = dict(data)
        head = _group_from_dict(data.pop("head", {}) or {}, "head")
        workers = [_group_from_dict(w, f"workers[{i}]") for i, w in enumerate(data.pop("workers", []) or [])]
        _no_unknown(data, cls, "cluster")
        return cls(head=head, workers=workers, **data)


def _no_unknown(data: dict, kind: type, where: str) -> None:
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _group_from_dict(data: dict, where: str) -> GroupSpec:
    _no_unknown(data, GroupSpec, where)
    return GroupSpec(**data)


SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "SidecarMode")


@dataclass(kw_only=True)
class JobSpec:
    """A RayJob: a cluster made for one entrypoint, torn down when it ends (workshop jobs clean up).

    ``results_claim`` is a PVC mounted read-write on the head at ``results_path``: the driver
    runs on the head, and with ``shutdown_after_finish`` everything else written there is gone.
    """

    name: str
    entrypoint: str
    cluster: ClusterSpec
    runtime_env: dict = field(default_factory=dict)
    submission_mode: str = "K8sJobMode"
    shutdown_after_finish: bool = True
    ttl_seconds_after_finished: int = 600
    active_deadline_s: int | None = 3600
    backoff_limit: int = 0
    entrypoint_num_cpus: float = 0
    results_claim: str | None = None
    results_path: str = f"{LABKIT_HOME_IN_POD}/results"

    def check(self) -> None:
        if not isinstance(self.name, str) or not _DNS1123.match(self.name) or len(self.name) > 40:
            raise SpecError(f"job name {self.name!r}: use lower-case letters, digits and '-' (<= 40 chars)")
        if not isinstance(self.entrypoint, str) or not self.entrypoint.strip():
            raise SpecError("entrypoint is empty: give the command the job runs, e.g. 'python -m labkit batch ...'")
        if self.submission_mode not in SUBMISSION_MODES:
            raise SpecError(f"submission_mode must be one of {', '.join(SUBMISSION_MODES)}, "
                            f"got {self.submission_mode!r}")
        for attr in ("ttl_seconds_after_finished", "backoff_limit"):
            if not isinstance(getattr(self, attr), int) or getattr(self, attr) < 0:
                raise SpecError(f"{attr} must be an integer >= 0, got {getattr(self, attr)!r}")
        if self.active_deadline_s is not None and (not isinstance(self.active_deadline_s, int)
                                                   or self.active_deadline_s < 1):
            raise SpecError(f"active_deadline_s must be a positive integer or None, got {self.active_deadline_s!r}")
        if not isinstance(self.runtime_env, dict):
            raise SpecError("runtime_env must be a mapping (Ray's runtime_env: env_vars, pip, working_dir, ...)")
        if "working_dir" in self.runtime_env and "://" not in str(self.runtime_env["working_dir"]):
            raise SpecError("runtime_env.working_dir must be a remote URI (https://.../labs.zip) in a RayJob: the "
                            "operator cannot upload a local folder; use `labkit jobs submit` for local folders")
        if self.results_claim is not None and not _DNS1123.match(self.results_claim):
            raise SpecError(f"results_claim {self.results_claim!r} is not a valid PVC name")
        self.cluster.check()
        if self.shutdown_after_finish and self.results_claim is None:
            warnings.warn("the cluster is deleted when the job ends and no results_claim is set: anything the job "
                          "writes inside the cluster is lost with it", stacklevel=3)

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        data = dict(data)
        cluster = ClusterSpec.from_dict({"name": data.get("name", "job")} | (data.pop("cluster", None) or {}))
        _no_unknown(data, cls, "job")
        return cls(cluster=cluster, **data)


@dataclass(kw_only=True)
class ServiceSpec:
    """A RayService: a cluster plus the Serve apps of lab 06 (``serveConfigV2``), upgraded in place.

    ``serve`` is the same ``labkit.serve.ServeSettings`` the lab deploys locally; inside the pod
    the proxy listens on 0.0.0.0:8000, reached only through the ClusterIP serve Service.
    """

    name: str
    cluster: ClusterSpec
    serve: object = None  # labkit.serve.ServeSettings; None: its defaults

    def check(self) -> None:
        if not isinstance(self.name, str) or not _DNS1123.match(self.name) or len(self.name) > 40:
            raise SpecError(f"service name {self.name!r}: use lower-case letters, digits and '-' (<= 40 chars)")
        self.cluster.check()

    @classmethod
    def from_dict(cls, data: dict) -> ServiceSpec:
        from labkit.serve import ServeSettings

        data = dict(data)
        cluster = ClusterSpec.from_dict({"name": data.get("name", "service")} | (data.pop("cluster", None) or {}))
        serve = data.pop("serve", None)
        if serve is not None:
            _no_unknown(serve, ServeSettings, "serve")
            serve = ServeSettings(**serve)
        _no_unknown(data, cls, "service")
        return cls(cluster=cluster, serve=serve, **data)
