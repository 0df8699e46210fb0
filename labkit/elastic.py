"""A multi-node Ray cluster on one machine, scaled by Ray's real autoscaler.

The room's Kubernetes cluster has worker groups that KubeRay's autoscaler grows and shrinks (a
CPU group, a GPU pool from zero). Ray ships a node provider that does the same on one machine:
the autoscaler (the same code that asks KubeRay for pods) decides to add a node of some type,
and the provider starts a raylet here with that type's resources, logical GPUs included; an idle
node is ended after the idle timeout. So attendees watch real scaling decisions on a laptop.

Why not Ray's own wrapper, ``ray.cluster_utils.AutoscalingCluster``: it calls Ray's own stop command (forced)
before it starts and to stop, which ends every Ray process of the user (a notebook's cluster
included), and the defaults file its provider type loads is not in Ray's wheel. labkit writes
the autoscaler's config itself, from the same ``ClusterSpec`` that renders the KubeRay manifests,
and starts the head as a :class:`labkit.ray_runtime.LocalHead`, whose ``stop`` ends only its own
processes.

Serve apps deployed on such a cluster (``labkit.serve.deploy(settings, address=cluster.address)``)
with ``chat_max_replicas`` > ``chat_replicas`` scale with traffic: Serve adds a replica when the
ongoing requests per replica stay above the target, the replica asks for a CPU and (logical) GPUs
that no node has free, and the autoscaler adds a node of the group that has them; when traffic
falls, Serve removes the replica and the autoscaler the idle node. Replicas given only logical GPUs
run on the CPU (there is no CUDA device behind them). ``tests/test_elastic.py`` drives a load curve
(``labkit serve bench --curve``) through exactly that.

Example:
    >>> from labkit.elastic import AutoscalingCluster
    >>> with AutoscalingCluster() as cluster:                      # doctest: +SKIP
    ...     cluster.wait_for_nodes({"cpu": 1})
    ...     print(cluster.nodes())
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from labkit.k8s.spec import ClusterSpec, GroupSpec, cpu_cores
from labkit.ray_runtime import LOOPBACK, LocalHead, free_port

# Ray's module path of its one-machine provider, named as an "external" provider: the
# "fake_multinode" type name would make Ray load the missing defaults file.
_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
_HEAD_TYPE = "ray.head.default"
GROUP_LABEL = "labkit/group"  # each node's worker group as a Ray node label: the pods' label in labkit.k8s


def laptop_cluster(*, name: str = "labkit-laptop", gpu_max: int = 2, idle_timeout_s: int = 15) -> ClusterSpec:
    """The room's GPU cluster (``labkit.k8s.presets.gpu_cluster``: a CPU group and a GPU pool
    from zero) at laptop size: one CPU per node, logical GPUs, short idle timeouts."""
    return ClusterSpec(name=name, head=GroupSpec(cpus=1, memory="1Gi"),
                       workers=[GroupSpec(name="cpu", cpus=1, memory="1Gi", replicas=0, min_replicas=0,
                                          max_replicas=1, idle_timeout_s=idle_timeout_s),
                                GroupSpec(name="gpu", cpus=1, memory="1Gi", gpus=1, replicas=0, min_replicas=0,
                                          max_replicas=gpu_max, idle_timeout_s=idle_timeout_s)])


def autoscaler_config(spec: ClusterSpec, *, gcs_address: str, object_store_mb: int = 150) -> dict:
    """Ray's cluster config (what ``ray up`` reads) for ``spec``'s worker groups on this machine.

    Each group becomes a node type with the group's CPUs and GPUs as Ray resources (no real GPU
    is needed: Ray only counts them) and its min/max replicas as min/max workers. Ray's config
    has one idle timeout for the whole cluster: the shortest of the groups'.
    """
    spec.check()
    if not spec.workers:
        raise ValueError("the cluster spec has no worker groups: an autoscaler needs something to scale")
    types: dict = {_HEAD_TYPE: {"resources": {}, "node_config": {}, "max_workers": 0}}
    for group in spec.workers:
        cpus = cpu_cores(group.cpus)
        if cpus != int(cpus) or cpus < 1:
            raise ValueError(f"worker group {group.name!r}: a node here needs a whole number of CPUs (>= 1), "
                             f"got {group.cpus!r}")
        low = group.replicas if group.min_replicas is None else group.min_replicas
        high = group.replicas if group.max_replicas is None else group.max_replicas
        resources = {"CPU": int(cpus), "object_store_memory": object_store_mb * 2**20}
        if group.gpus:
            resources["GPU"] = group.gpus
        types[group.name] = {"resources": resources, "labels": {GROUP_LABEL: group.name}, "node_config": {},
                             "min_workers": low, "max_workers": high}
    timeouts = [g.idle_timeout_s for g in spec.workers if g.idle_timeout_s]
    return {
        "cluster_name": spec.name,
        "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": (min(timeouts) if timeouts else 60) / 60,
        "provider": {"type": "external", "module": _PROVIDER, "gcs_address": gcs_address,
                     "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {}, "docker": {}, "head_node_type": _HEAD_TYPE, "available_node_types": types,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass(frozen=True)
class NodeView:
    """One live node as Ray reports it: its type (``"head"`` or a worker group's name) and resources."""

    node_id: str
    node_type: str
    cpus: float
    gpus: float


class AutoscalingCluster:
    """A head on this machine plus worker nodes that Ray's autoscaler adds and removes.

    ``spec`` defaults to :func:`laptop_cluster`. As in the room's RayCluster the head takes no
    tasks (0 Ray CPUs), so every task lands on a worker node, one the autoscaler may have had to
    add. ``stop()`` ends the head and every node it started, and nothing else.
    """

    def __init__(self, spec: ClusterSpec | None = None, *, dashboard: bool = False, timeout_s: float = 180):
        self.spec = spec or laptop_cluster()
        port = free_port()
        self.config = autoscaler_config(self.spec, gcs_address=f"{LOOPBACK}:{port}")
        with tempfile.NamedTemporaryFile("w", prefix="labkit-autoscaler-", suffix=".json", delete=False) as f:
            json.dump(self.config, f)
        self._config_path = Path(f.name)
        try:
            # As in the RayCluster (labkit.k8s.manifests): the head coordinates and takes no tasks.
            self.head = LocalHead(num_cpus=0, num_gpus=0, dashboard=dashboard,
                                  timeout_s=timeout_s, port=port, autoscaling_config=self._config_path)
        except BaseException:
            self._config_path.unlink(missing_ok=True)
            raise
        self.address = self.head.address
        self.dashboard_url = self.head.dashboard_url
        self._gcs = None

    def nodes(self) -> list[NodeView]:
        """The live nodes, head first, as the cluster's GCS lists them (no ``ray.init`` or
        dashboard needed; the state API would need the dashboard)."""
        from ray._raylet import GcsClient

        if self._gcs is None:
            self._gcs = GcsClient(address=self.address)
        out = []
        for info in self._gcs.get_all_node_info(timeout=30).values():
            if info.state != 0:  # GcsNodeInfo.ALIVE
                continue
            kind = "head" if info.is_head_node else dict(info.labels).get(GROUP_LABEL, "?")
            total = dict(info.resources_total)
            out.append(NodeView(info.node_id.hex(), kind, total.get("CPU", 0), total.get("GPU", 0)))
        return sorted(out, key=lambda n: (n.node_type != "head", n.node_type, n.node_id))

    def counts(self) -> dict[str, int]:
        """Live worker nodes per type, e.g. ``{"cpu": 1, "gpu": 0}``."""
        counts = {g.name: 0 for g in self.spec.workers}
        for node in self.nodes():
            if node.node_type != "head":
                counts[node.node_type] = counts.get(node.node_type, 0) + 1
        return counts

    def wait_for_nodes(self, want: dict[str, int], *, timeout_s: float = 120, poll_s: float = 1.0) -> dict[str, int]:
        """Wait until the live worker nodes per type equal ``want`` (types not named: any count)."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = self.counts()
            if all(counts.get(k, 0) == v for k, v in want.items()):
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"the autoscaler did not reach {want} within {timeout_s:.0f}s (now {counts}); "
                                   f"its log: {self.head.log_dir / 'monitor.log'}")
            time.sleep(poll_s)

    def stop(self) -> None:
        self.head.stop()
        self._config_path.unlink(missing_ok=True)

    def __enter__(self) -> AutoscalingCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

