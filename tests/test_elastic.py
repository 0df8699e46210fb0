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


LOAD_STEP = """
import json, sys, threading, time
from labkit import serve
from labkit.loadtest import load_test
from labkit.ray_runtime import free_port

address, out = sys.argv[1], open(sys.argv[2], "w")
def say(**row):
    out.write(json.dumps({"t": time.time(), **row}) + "\\n"); out.flush()

# One chat replica to start with, up to two; a replica wants a CPU and half a (logical) GPU, so each
# needs a node of the "gpu" group, which starts at 0 nodes.
settings = serve.ServeSettings(port=free_port(), images=False, chat_num_cpus=1, chat_num_gpus=0.5,
                               chat_replicas=1, chat_max_replicas=2, chat_target_ongoing_requests=1,
                               upscale_delay_s=1, downscale_delay_s=4, max_batch_size=4, max_tokens_limit=64,
                               default_max_tokens=48)
url = serve.deploy(settings, address=address)
serve.wait_ready(url, timeout_s=300)
say(phase="quiet", replicas=serve.running_replicas())
done = threading.Event()
def watch():
    while not done.is_set():
        say(phase="watch", replicas=serve.running_replicas())
        time.sleep(1)
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
# A load curve, as `labkit serve bench --curve 5:0.2,20:3,20:0.2` sends it: quiet, peak, quiet.
report = load_test(url, mode="open", phases=[(5, 0.2), (20, 3.0), (20, 0.2)], max_tokens=48, progress=False,
                   timeout_s=600)
say(phase="peak over", errors=report["errors"], requests=report["requests"], replicas=serve.running_replicas(),
    starts=[r["start_s"] for r in report["rows"]])
deadline = time.time() + 180
while serve.running_replicas().get("ChatServer") != 1 and time.time() < deadline:
    time.sleep(1)
say(phase="quiet again", replicas=serve.running_replicas())
import ray
def gpu_nodes():
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))
deadline = time.time() + 120
while gpu_nodes() != 1 and time.time() < deadline:  # the idle node goes after its idle timeout
    time.sleep(1)
say(phase="node gone", gpu_nodes=gpu_nodes(), replicas=serve.running_replicas())
done.set()  # Serve ends with the cluster (the test's cluster.stop())
"""


@pytest.mark.slow
def test_a_load_step_adds_a_replica_and_a_node_and_quiet_takes_them_away(tmp_path, monkeypatch):
    import json
    import threading
    import time

    log = tmp_path / "load.jsonl"
    # Serve runs an HTTP proxy on every node with a replica and, once the node's last replica is
    # gone, drains it for 30 s before ending it: the node is not idle until then. 1 s here, so the
    # idle node goes after the idle timeout (the cluster's processes inherit the variable).
    monkeypatch.setenv("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "1")
    with AutoscalingCluster(laptop_cluster(idle_timeout_s=5)) as cluster:
        nodes, stop = [], threading.Event()

        def watch_nodes() -> None:
            while not stop.is_set():
                nodes.append((time.time(), cluster.counts()["gpu"]))
                time.sleep(1)

        watcher = threading.Thread(target=watch_nodes, daemon=True)
        watcher.start()
        try:
            subprocess.run([sys.executable, "-c", LOAD_STEP, cluster.address, str(log)], timeout=900, check=True)
        finally:
            stop.set()
            watcher.join()
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        by_phase = {r["phase"]: r for r in rows}
        assert by_phase["quiet"]["replicas"] == {"ChatServer": 1}
        assert by_phase["peak over"]["errors"] == 0
        starts = by_phase["peak over"]["starts"]
        assert sum(5 <= t < 25 for t in starts) > 3 * sum(t < 5 or t >= 25 for t in starts), "the peak is the peak"
        assert max(r["replicas"].get("ChatServer", 0) for r in rows) == 2, "the load step should add a replica"
        assert by_phase["quiet again"]["replicas"] == {"ChatServer": 1}, "quiet should take it away again"
        assert max(n for _, n in nodes) == 2, "the second replica needs a second GPU node"
        assert by_phase["node gone"]["gpu_nodes"] == 1, "the idle node should be removed, the busy one kept"
        session = str(cluster.head.temp_dir)
    assert not _processes_of(session)


def test_a_load_curve_draws_each_phase_at_its_own_rate_and_refuses_bad_phases():
    from labkit.loadtest import MAX_REQUESTS, phased_arrivals

    curve = [(100, 0.5), (100, 5.0), (50, 0.0), (100, 0.5)]
    starts = phased_arrivals(curve, seed=3)
    assert starts == phased_arrivals(curve, seed=3) != phased_arrivals(curve, seed=4)
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] < 350
    per_phase = [sum(a <= t < b for t in starts) for a, b in ((0, 100), (100, 200), (200, 250), (250, 350))]
    assert per_phase[2] == 0, "a rate of 0 is a silent phase"
    assert 380 <= per_phase[1] <= 620 and 20 <= per_phase[0] <= 80 and 20 <= per_phase[3] <= 80  # ~500, ~50
    for bad, match in [([(10,)], "must be \\(seconds, requests per second\\)"), ([(0, 1.0)], "seconds must be"),
                       ([(10, -1.0)], "rate must be"), ([(10, "fast")], "rate must be"),
                       ([(3600, 1000.0)], f"more than {MAX_REQUESTS}")]:
        with pytest.raises(ValueError, match=match):
            phased_arrivals(bad)


def test_serve_bench_refuses_a_malformed_curve():
    from conftest import run_cli

    result = run_cli("serve", "bench", "--curve", "60-0.2,60:2")
    assert result.returncode == 2 and "SECONDS:RATE" in result.stderr
    result = run_cli("serve", "bench", "--curve", "60:0.2,0:2")
    assert result.returncode != 0 and "seconds must be between 0 and a day" in result.stderr


# --- training that yields to inference ------------------------------------------------------------

POOL = """
import json, sys
from labkit.pool_experiment import run_pool
# 3 GPUs: inference 1-2 replicas, training 1-2 workers; one replica serves 4 req/s, the peak needs two.
# The pool reacts in seconds here (Serve removes a replica after 3 s of quiet, not 10; training checks
# the pool every 2 s, not 5), so a short day holds the whole story: shrink at the peak, grow after it.
run = run_pool("shared", gpus=3, curve=[(5, 0.5), (20, 6.0), (25, 0.5)], checkpoint_every=10,
               downscale_delay_s=3, monitor_interval_s=2, storage=sys.argv[1], progress=False)
json.dump(run, open(sys.argv[2], "w"))
"""


@pytest.mark.slow
def test_training_gives_a_worker_to_inference_at_the_peak_and_takes_it_back_from_its_checkpoint(tmp_path):
    import json

    from labkit.elastic_training import ElasticRun
    from labkit.pool_experiment import summarize

    out = tmp_path / "run.json"
    subprocess.run([sys.executable, "-c", POOL, str(tmp_path / "train"), str(out)], timeout=900, check=True)
    run = json.loads(out.read_text())
    training = ElasticRun(rows=run["training_rows"])
    assert training.world_sizes()[0] == 2, "quiet: training holds the two GPUs inference does not need"
    sizes = training.world_sizes()
    assert 1 in sizes and 2 in sizes[sizes.index(1):], f"it should shrink at the peak and grow after: {sizes}"
    replicas = [s["replicas"] for s in run["timeline"]]
    assert max(replicas) == 2 and replicas[0] == 1, "the peak adds a replica on the GPU training gave up"
    restarts = training.restarts()
    assert len(restarts) >= 2
    by_step = {}
    for row in run["training_rows"]:
        by_step.setdefault(row["step"], row)  # the first time each step was done
    for restart in restarts:
        resumed = restart["resumed_at"]
        assert resumed > 1 and (resumed - 1) % 10 == 0, "each restart goes on from a checkpoint, not from step 0"
        assert 0 <= restart["redone"] <= 10, "at most the steps since the last checkpoint are done again"
        first = next(r for r in run["training_rows"] if r["t"] >= restart["t"])
        checkpointed = by_step[resumed - 1]["samples"]
        assert first["samples"] == checkpointed + 32 * first["world_size"], "samples go on from the checkpoint"
    steps = [r["step"] for r in run["training_rows"]]
    assert steps[-1] > max(r["resumed_at"] for r in restarts), "training went on after the last resize"
    summary = summarize(run)
    assert summary["errors"] == 0 and summary["scale_up_s"] is not None and summary["training_back_s"] is not None
    assert not _processes_of(run["session_dir"]), "every process of the pool ended"


def test_the_pool_summary_counts_busy_device_time_and_the_slo():
    from labkit.pool_experiment import summarize

    run = {"mode": "static", "gpus": 2, "t0": 100.0, "t_end": 110.0, "service_s": 1.0, "slo_s": 1.5, "step_s": 1.0,
           "curve": [[5, 0.2], [5, 1.0]], "plan": {"inference": [1, 1], "training": [1, 1]},
           # one request on the device 104-105 (in the SLO), one answered late, one failed
           "requests": [{"start_s": 3.5, "latency_s": 1.5, "ok": True}, {"start_s": 6.0, "latency_s": 2.0, "ok": True},
                        {"start_s": 7.0, "latency_s": 0.1, "ok": False}],
           # one worker stepping 1 s at a time from 100 to 110; 10 samples per step
           "training_rows": [{"t": 101.0 + i, "step": i + 1, "world_size": 1, "samples": 10 * (i + 1),
                              "attempt": "a"} for i in range(10)], "timeline": []}
    s = summarize(run)
    assert s["utilisation"] == pytest.approx((10 + 1 + 1) / 20)
    assert s["slo_attainment"] == pytest.approx(1 / 3) and s["peak_slo_attainment"] == pytest.approx(0 / 2)
    assert s["training_samples"] == 100 and s["errors"] == 1 and s["restarts"] == 0


def test_elastic_training_and_the_inference_hold_refuse_bad_settings():
    from labkit.elastic_training import InferenceFirst, train_elastic
    from labkit.pool_experiment import plan, pool_cluster, run_pool

    for kwargs, match in [({"min_workers": 3, "max_workers": 2}, "must not be above"),
                          ({"min_workers": 0}, "min_workers must be a positive integer"),
                          ({"steps": 1.5}, "steps must be a positive integer"),
                          ({"step_s": -1}, "step_s must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            train_elastic(**kwargs)
    with pytest.raises(ValueError, match="at least one Serve deployment"):
        InferenceFirst({})
    with pytest.raises(ValueError, match="non-negative numbers"):
        InferenceFirst({"ChatServer": {"GPU": -1}})
    with pytest.raises(ValueError, match="expire_s more than 3 polls"):
        InferenceFirst({"ChatServer": {"GPU": 1}}, poll_s=10, expire_s=20)
    hold = InferenceFirst({"ChatServer": {"GPU": 0.5}, "ImageServer": {"CPU": 1, "GPU": 1}})
    assert hold.bundles({"ChatServer": 2, "ImageServer": 1}) == [{"GPU": 0.5}, {"GPU": 0.5}, {"CPU": 1, "GPU": 1}]
    assert plan("static", 4) == {"inference": (2, 2), "training": (2, 2)}
    assert plan("shared", 4) == {"inference": (1, 3), "training": (1, 3)}
    with pytest.raises(ValueError, match="mode must be one of"):
        plan("half", 4)
    with pytest.raises(ValueError, match="whole number from 2 to 8"):
        pool_cluster(1)
    with pytest.raises(ValueError, match="seconds must be"):
        run_pool("shared", curve=[(0, 1.0)])
