"""checkov on everything labkit renders for Kubernetes, each skip justified in the manifests.

checkov conflicts with the kit's dependencies, so it lives in its own virtualenv
(`make checkov` creates `.venv-checkov`; `$LABKIT_CHECKOV` may point at another checkov). It does
not know KubeRay's kinds, so the pod templates inside them are also checked as Pods.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE_IMAGE as IMAGE
from conftest import REPO

from labkit.k8s import preset, to_yaml
from labkit.k8s.manifests import CHECKOV_SKIPS, embedded_pods
from labkit.k8s.presets import PRESETS


def checkov_binary() -> str:
    found = os.environ.get("LABKIT_CHECKOV") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    if Path(found).is_file() or shutil.which(found):
        return found
    if os.environ.get("CI"):
        pytest.fail(f"checkov not found at {found}: `make test` installs it with `make checkov`")
    pytest.skip(f"checkov not installed at {found}: run `make checkov` (own virtualenv) or set LABKIT_CHECKOV")


def run_checkov(folder: Path) -> dict:
    done = subprocess.run([checkov_binary(), "-d", str(folder), "--framework", "kubernetes", "--skip-download",
                           "--output", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def test_rendered_manifests_pass_checkov(tmp_path):
    for name in PRESETS:
        manifests = preset(name, image=IMAGE)
        (tmp_path / f"{name}.yaml").write_text(to_yaml(manifests + embedded_pods(manifests)))
    report = run_checkov(tmp_path)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert len(results["passed_checks"]) > 100  # it really looked at the pods
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    assert skipped <= set(CHECKOV_SKIPS)
    assert all(len(why) > 30 for why in CHECKOV_SKIPS.values())  # each skip says why


def test_checkov_would_catch_an_unsafe_pod(tmp_path):
    manifests = preset("cpu", image=IMAGE)
    pod = embedded_pods(manifests)[0]
    container = pod["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
    (tmp_path / "unsafe.yaml").write_text(to_yaml([pod]))
    failed = {c["check_id"] for c in run_checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_20"} <= failed  # privileged; privilege escalation
