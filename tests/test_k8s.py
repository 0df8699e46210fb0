"""KubeRay manifests: golden files, validation against the real CRDs, and specs refused early."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import yaml
from conftest import EXAMPLE_IMAGE as IMAGE
from conftest import REPO, run_cli, shared_dir

from labkit.k8s import ClusterSpec, GroupSpec, JobSpec, ServiceSpec, SpecError, preset, ray_cluster, ray_job, to_yaml
from labkit.k8s.manifests import network_policy, pvc
from labkit.k8s.presets import PRESETS, batch_entrypoint, manifests_from_spec
from labkit.k8s.schema import SchemaSourceError, load_crds, validate_manifests, validate_yaml
from labkit.k8s.spec import default_image, image_version_problem

GOLDEN = REPO / "tests" / "golden" / "k8s"


def _ray_parts(m: dict) -> dict:
    return m["spec"].get("rayClusterSpec") or m["spec"].get("rayClusterConfig") or m["spec"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_their_golden_files(name):
    text = to_yaml(preset(name, image=IMAGE))
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("LABKIT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed: review it, then LABKIT_UPDATE_GOLDEN=1 pytest {__file__}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_golden_manifests_validate_against_the_kuberay_crds(name, kuberay_crds):
    problems = validate_yaml((GOLDEN / f"{name}.yaml").read_text(), kuberay_crds)
    assert problems == []


def test_golden_set_covers_what_the_workshop_needs():
    docs = {name: yaml.safe_load_all((GOLDEN / f"{name}.yaml").read_text()) for name in PRESETS}
    docs = {name: list(d) for name, d in docs.items()}
    kinds = {name: [d["kind"] for d in ds] for name, ds in docs.items()}
    assert kinds["cpu"][-1] == kinds["gpu"][-1] == kinds["shared-gpu"][-1] == "RayCluster"
    assert kinds["job"][-1] == "RayJob" and kinds["service"][-1] == "RayService"
    cpu_limits = [c["resources"]["limits"] for g in _ray_parts(docs["cpu"][-1])["workerGroupSpecs"]
                  for c in g["template"]["spec"]["containers"]]
    assert all("nvidia.com/gpu" not in limits for limits in cpu_limits)
    gpu_group = _ray_parts(docs["gpu"][-1])["workerGroupSpecs"][1]
    assert gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_group["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_group["rayStartParams"]["num-gpus"] == "1" and gpu_group["minReplicas"] == 0
    assert _ray_parts(docs["gpu"][-1])["enableInTreeAutoscaling"] is True
    shared = _ray_parts(docs["shared-gpu"][-1])["workerGroupSpecs"][0]
    assert "nvidia.com/gpu.shared" in shared["template"]["spec"]["containers"][0]["resources"]["limits"]
    job = docs["job"][-1]["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["submissionMode"] == "K8sJobMode" and "labkit batch" in job["entrypoint"]


def test_nothing_is_exposed_outside_the_cluster():
    for name in PRESETS:
        for doc in yaml.safe_load_all((GOLDEN / f"{name}.yaml").read_text()):
            if doc["kind"].startswith("Ray"):
                ray = _ray_parts(doc)
                assert ray["headGroupSpec"]["serviceType"] == "ClusterIP", name
                assert not ray["headGroupSpec"].get("enableIngress"), name
                assert ray["authOptions"] == {"mode": "token"}, name
            assert "LoadBalancer" not in yaml.safe_dump(doc) and "NodePort" not in yaml.safe_dump(doc), name


def test_service_serve_config_is_lab_06s_config_listening_in_the_pod():
    from ray.serve.schema import ServeDeploySchema

    doc = preset("service", image=IMAGE)[-1]
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    apps = {a["name"]: a for a in config["applications"]}
    assert apps["chat"]["import_path"] == "labkit.serve:chat_app"
    assert apps["chat"]["args"]["chat_num_gpus"] == apps["images"]["args"]["image_num_gpus"] == 0.5


def test_core_objects_are_checked_with_kubernetes_schemas(kuberay_crds):
    good = [pvc("models", size="10Gi"), network_policy("lab")]
    assert validate_manifests(good, kuberay_crds) == []
    bad = copy.deepcopy(good)
    bad[0]["spec"]["accesModes"] = ["ReadWriteMany"]
    bad[1]["spec"]["policyTypes"] = "Ingress"
    problems = validate_manifests(bad, kuberay_crds)
    assert len(problems) == 2
    assert "unknown field(s) accesModes" in str(problems[0]) and "PersistentVolumeClaim models" in str(problems[0])
    assert problems[1].path == "spec.policyTypes"


def test_unknown_fields_typos_and_wrong_types_are_errors(kuberay_crds):
    doc = preset("job", image=IMAGE)[-1]
    bad = copy.deepcopy(doc)
    ray = bad["spec"]["rayClusterSpec"]
    ray["workerGroupSpecs"][0]["minReplica"] = 1
    ray["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    ray["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "two"
    bad["spec"]["ttlSecondsAfterFinished"] = 2**40
    bad["spec"]["shutdownAfterJobFinishes"] = "yes"
    problems = {p.path: p.message for p in validate_manifests([bad], kuberay_crds)}
    assert "unknown field(s) minReplica" in problems["spec.rayClusterSpec.workerGroupSpecs[0]"]
    assert "imagePullPolicyy" in problems["spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]"]
    assert "'two' does not match" in problems[
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources.limits.cpu"]
    assert "int32" in problems["spec.ttlSecondsAfterFinished"]
    assert "not of type 'boolean'" in problems["spec.shutdownAfterJobFinishes"]
    wrong_version = dict(copy.deepcopy(doc), apiVersion="ray.io/v2")
    assert "not served" in str(validate_manifests([wrong_version], kuberay_crds)[0])
    nameless = copy.deepcopy(doc)
    nameless["metadata"]["name"] = "Not_A_Name"
    assert validate_manifests([nameless], kuberay_crds)[0].path == "metadata.name"


def test_crd_sources_fail_clearly(tmp_path):
    with pytest.raises(SchemaSourceError, match="--crds PATH"):
        load_crds(tmp_path / "missing")
    (tmp_path / "empty.yaml").write_text("kind: ConfigMap\n")
    with pytest.raises(SchemaSourceError, match="no CustomResourceDefinition"):
        load_crds(tmp_path)
    with pytest.raises(SchemaSourceError, match="needs the KubeRay CRDs"):
        validate_manifests(preset("cpu", image=IMAGE))


def _cluster(**group) -> ClusterSpec:
    return ClusterSpec(name="lab", image=IMAGE, workers=[GroupSpec(name="cpu", **group)])


@pytest.mark.parametrize("make, match", [
    (lambda: _cluster(replicas=-1), r"workers\[0\].replicas must be an integer >= 0"),
    (lambda: _cluster(replicas=2, max_replicas=1), r"min_replicas <= replicas <= max_replicas"),
    (lambda: _cluster(replicas=1.5), r"replicas must be an integer"),
    (lambda: _cluster(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
     r"no GPUs but a GPU setting"),
    (lambda: _cluster(gpu_resource="nvidia.com/gpu.shared"), r"no GPUs but a GPU setting"),
    (lambda: _cluster(cpus="lots"), r"cpus must be a positive Kubernetes quantity"),
    (lambda: _cluster(memory="-4Gi"), r"memory must be a positive Kubernetes quantity"),
    (lambda: _cluster(max_replicas=0, replicas=0), r"could never run a pod"),
    (lambda: ClusterSpec(name="lab", image=""), r"image is empty"),
    (lambda: ClusterSpec(name="Lab_1", image=IMAGE), r"lower-case letters"),
    (lambda: ClusterSpec(name="lab", image=IMAGE, head=GroupSpec(replicas=2)), r"exactly one head"),
    (lambda: ClusterSpec(name="lab", image=IMAGE, workers=[GroupSpec(name="a"), GroupSpec(name="a")]), "used twice"),
    (lambda: ClusterSpec(name="lab", image=IMAGE, profile="tpu"), "profile must be"),
])
def test_invalid_cluster_specs_are_refused_before_any_yaml(make, match):
    with pytest.raises(SpecError, match=match):
        ray_cluster(make())


def test_invalid_job_and_service_specs_are_refused():
    from labkit.serve import ServeSettings

    cluster = ClusterSpec(name="j", image=IMAGE)
    with pytest.raises(SpecError, match="entrypoint is empty"):
        ray_job(JobSpec(name="j", entrypoint=" ", cluster=cluster, results_claim="r"))
    with pytest.raises(SpecError, match="working_dir must be a remote URI"):
        ray_job(JobSpec(name="j", entrypoint="python x.py", cluster=cluster, runtime_env={"working_dir": "."},
                        results_claim="r"))
    with pytest.raises(SpecError, match="submission_mode"):
        ray_job(JobSpec(name="j", entrypoint="python x.py", cluster=cluster, submission_mode="Batch"))
    with pytest.warns(UserWarning, match="no results_claim"):
        ray_job(JobSpec(name="j", entrypoint="python x.py", cluster=cluster))
    from labkit.k8s import ray_service

    with pytest.raises(SpecError, match="ask for 1 GPUs but the cluster has at most 0"):
        ray_service(ServiceSpec(name="s", cluster=cluster, serve=ServeSettings(chat_num_gpus=0.5, image_num_gpus=0.5)))


def test_spec_files_reject_unknown_keys():
    with pytest.raises(SpecError, match="unknown field.*replica"):
        manifests_from_spec({"kind": "RayCluster", "name": "lab", "image": IMAGE,
                             "workers": [{"name": "cpu", "replica": 2}]})
    with pytest.raises(SpecError, match="RayCluster, RayJob or RayService"):
        manifests_from_spec({"kind": "Deployment", "name": "x"})
    docs = manifests_from_spec({"kind": "RayJob", "name": "nightly", "entrypoint": "python -m labkit doctor",
                                "results_claim": "labkit-results", "cluster": {"image": IMAGE}})
    assert docs[-1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"][
        "labkit/cluster"] == "nightly"


def test_image_versions_are_checked_against_this_machine():
    import ray

    assert default_image().startswith("labkit/workshop:") and default_image(gpu=True).endswith("-gpu")
    assert image_version_problem(default_image()) is None
    assert image_version_problem(f"rayproject/ray:{ray.__version__}-py311") is None
    assert image_version_problem(f"cr.example.com:5000/w:0.1.0-ray{ray.__version__}-py311@sha256:{'a' * 64}") is None
    problem = image_version_problem("rayproject/ray:2.9.3-py310-gpu")
    assert "Ray 2.9.3 in the image" in problem and "Python 3.10" in problem and "use " in problem
    assert "cannot tell" in image_version_problem("myimage:latest")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ray_cluster(ClusterSpec(name="lab", image="rayproject/ray:2.9.3-py310"))
    assert any("2.9.3" in str(w.message) for w in caught)


def test_batch_entrypoint_quotes_its_arguments():
    command = batch_entrypoint("my prompts.jsonl", "/results/run 1", actors=2, num_gpus=0.5, limit=10)
    assert "'my prompts.jsonl'" in command and "'/results/run 1'" in command
    assert "--num-gpus 0.5" in command and "--limit 10" in command and "--address auto" in command


def test_cli_render_and_validate(tmp_path, kuberay_crds):
    from labkit.k8s.schema import CRD_DIR_ENV

    out = tmp_path / "cpu.yaml"
    done = run_cli("k8s", "render", "--preset", "cpu", "--image", IMAGE, "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text() == (GOLDEN / "cpu.yaml").read_text()
    # No kubeconfig: validate falls back to the CRD files.
    env = {CRD_DIR_ENV: str(shared_dir() / "kuberay-crds" / "v1.7.0"), "KUBECONFIG": str(tmp_path / "none")}
    ok = run_cli("k8s", "validate", str(out), env=env)
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stdout + ok.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text(out.read_text().replace("minReplicas", "minReplica"))
    bad = run_cli("k8s", "validate", str(broken), env=env)
    assert bad.returncode == 1 and "unknown field(s) minReplica" in bad.stdout

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"kind: RayCluster\nname: lab\nimage: {IMAGE}\nworkers:\n- {{name: cpu, replicas: -2}}\n")
    target = tmp_path / "out.yaml"
    refused = run_cli("k8s", "render", "--spec", str(spec), "--output", str(target))
    assert refused.returncode == 2 and "replicas must be an integer >= 0" in refused.stderr
    assert not target.exists() and not list(tmp_path.glob(".out.yaml*"))


def test_the_elastic_pool_puts_inference_first_on_kubernetes():
    docs = list(yaml.safe_load_all((GOLDEN / "elastic-pool.yaml").read_text()))
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PriorityClass"}
    inference, training = classes["labkit-inference"], classes["labkit-training"]
    assert inference["value"] > training["value"], "inference pods are scheduled first"
    assert inference["preemptionPolicy"] == "PreemptLowerPriority" and training["preemptionPolicy"] == "Never"
    assert not inference["globalDefault"] and not training["globalDefault"], "other pods keep their own priority"
    service = next(d for d in docs if d["kind"] == "RayService")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    for doc, wanted in ((service, "labkit-inference"), (cluster, "labkit-training")):
        parts = _ray_parts(doc)
        templates = [parts["headGroupSpec"]["template"]] + [g["template"] for g in parts["workerGroupSpecs"]]
        assert {t["spec"]["priorityClassName"] for t in templates} == {wanted}
        assert parts["enableInTreeAutoscaling"] is True and "autoscalerOptions" in parts
        group = parts["workerGroupSpecs"][0]
        assert group["template"]["spec"]["nodeSelector"] == {"labkit/pool": "gpu"}, "one GPU pool for both"
    assert _ray_parts(service)["workerGroupSpecs"][0]["minReplicas"] == 1
    assert _ray_parts(cluster)["workerGroupSpecs"][0]["minReplicas"] == 0
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    chat = next(a["args"] for a in apps if a["name"] == "chat")  # labkit.serve's settings, as in lab 06
    assert chat["chat_num_gpus"] == chat["image_num_gpus"] == 0.5, "two models share one GPU"
    assert chat["chat_replicas"] == 1 and chat["chat_max_replicas"] == 4, "the service scales with traffic"


def test_time_slicing_shares_each_gpu_under_the_resource_the_shared_pool_asks_for():
    docs = list(yaml.safe_load_all((GOLDEN / "shared-gpu.yaml").read_text()))
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["any"])
    slicing = config["sharing"]["timeSlicing"]
    assert slicing["renameByDefault"] is True and slicing["resources"] == [{"name": "nvidia.com/gpu", "replicas": 2}]
    group = _ray_parts(docs[-1])["workerGroupSpecs"][0]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu.shared"] == 1
    from labkit.k8s.manifests import priority_class, time_slicing_config
    from labkit.k8s.spec import SpecError

    with pytest.raises(SpecError, match="from 2 to 16"):
        time_slicing_config(replicas=1)
    with pytest.raises(SpecError, match="0 to 1e9"):
        priority_class("x", 2_000_000_000, preempts=False, description="")
