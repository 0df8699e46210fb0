"""Ray's autoscaler on one machine: nodes added for work that does not fit, removed when idle."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
from conftest import EXAMPLE_IMAGE

from labkit.elastic import GROUP_LABEL, AutoscalingCluster, autoscaler_config, laptop_cluster
from labkit.k8s import preset
from labkit.k8s.presets import gpu_cluster
from labkit.k8s.spec import GroupSpec
from labkit.ray_runtime import processes_naming


def test_the_config_mirrors_the_kuberay_groups():
    config = autoscaler_config(gpu_cluster(), gcs_address="127.0.0.1:1")
    types = config["available_node_types"]
    # the same groups, sizes and bounds as the RayCluster the room gets
    workers = {g["groupName"]: g for g in preset("gpu", image=EXAMPLE_IMAGE)[-1]["spec"]["workerGroupSpecs"]}
    assert set(types) - {"ray.head.default"} == set(workers) == {"cpu", "gpu"}
    for name, group in workers.items():
        assert types[name]["min_workers"] == group["minReplicas"]
        assert types[name]["max_workers"] == group["maxReplicas"]
        pod = group["template"]
        assert types[name]["resources"]["CPU"] == int(pod["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        assert types[name]["labels"] == {GROUP_LABEL: name} == {GROUP_LABEL: pod["metadata"]["labels"][GROUP_LABEL]}
    assert types["gpu"]["resources"]["GPU"] == 1 and "GPU" not in types["cpu"]["resources"]
    assert config["idle_timeout_minutes"] == 600 / 60  # the shortest group's timeout
    assert config["provider"]["gcs_address"] == "127.0.0.1:1"


def test_bad_specs_are_refused_with_what_to_change():
    spec = laptop_cluster()
    spec.workers = []
    with pytest.raises(ValueError, match="no worker groups"):
        autoscaler_config(spec, gcs_address="127.0.0.1:1")
    spec.workers = [GroupSpec(name="cpu", cpus="500m", replicas=1)]
    with pytest.raises(ValueError, match="whole number of CPUs"):
        autoscaler_config(spec, gcs_address="127.0.0.1:1")


GPU_TASK = """
import sys
from labkit.ray_runtime import init_ray
import ray

init_ray(address=sys.argv[1])
print(ray.get(ray.remote(num_gpus=1, num_cpus=1)(lambda: ray.get_runtime_context().get_node_id()).remote()))
"""


@pytest.mark.slow
def test_work_that_needs_a_gpu_adds_a_gpu_node_and_idle_nodes_go():
    with AutoscalingCluster(laptop_cluster(idle_timeout_s=5)) as cluster:
        assert cluster.counts() == {"cpu": 0, "gpu": 0}  # min 0 everywhere, a head with no CPUs
        # A driver of its own (this test process may already be joined to the suite's cluster).
        node_id = subprocess.run([sys.executable, "-c", GPU_TASK, cluster.address], capture_output=True, text=True,
                                 timeout=300, check=True).stdout.split()[-1]  # pending until a "gpu" node is added
        nodes = {n.node_id: n for n in cluster.nodes()}
        assert nodes[node_id].node_type == "gpu" and nodes[node_id].gpus == 1
        assert cluster.counts()["cpu"] == 0, "a GPU task must not bring up a CPU node"
        cluster.wait_for_nodes({"gpu": 0}, timeout_s=120)  # idle for 5 s: removed
        session = str(cluster.head.temp_dir)
        assert _processes_of(session), "the cluster's processes should name its temp folder"
    assert not _processes_of(session), "processes of the cluster still running"


def _processes_of(folder: str) -> list[int]:
    return [p.pid for p in processes_naming(folder)]


@pytest.mark.slow
def test_stop_ends_the_nodes_the_autoscaler_started_and_nothing_else(ray_cluster):
    import ray

    spec = laptop_cluster()
    spec.workers[0].min_replicas = spec.workers[0].replicas = 1  # the CPU group starts with one node
    with AutoscalingCluster(spec) as cluster:
        assert cluster.wait_for_nodes({"cpu": 1}, timeout_s=120)["gpu"] == 0
        session = str(cluster.head.temp_dir)
        raylets = [p for p in _processes_of(session) if "raylet" in " ".join(psutil.Process(p).cmdline()[:1])]
        assert len(raylets) == 2, "the head's raylet and the CPU node's"
    assert not _processes_of(session)
    assert ray.is_initialized() and ray.get(ray.remote(lambda: 1).remote()) == 1, "the suite's own cluster lives on"
