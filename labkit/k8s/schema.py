"""Validate manifests the way the API server would, before they reach a cluster.

Ray resources are checked against KubeRay's CRD ``openAPIV3Schema`` (from the CRD files, or read
from the connected cluster). The API server rejects unknown fields when asked to
(``fieldValidation=Strict``) and otherwise drops them silently, so a typo such as
``minReplica`` would quietly vanish: here every object schema that does not say
``x-kubernetes-preserve-unknown-fields`` is closed, and unknown fields are errors. Core objects
(PVCs, Services, ConfigMaps) are checked with ``kubernetes-validate``'s copy of Kubernetes' schemas.

Example:
    >>> from labkit.k8s import preset
    >>> from labkit.k8s.schema import load_crds, validate_manifests
    >>> crds = load_crds()          # $LABKIT_KUBERAY_CRDS, or shared/ beside the checkout  # doctest: +SKIP
    >>> validate_manifests(preset("cpu"), crds)                      # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

RAY_KINDS = {"RayCluster": "rayclusters.ray.io", "RayJob": "rayjobs.ray.io", "RayService": "rayservices.ray.io",
             "RayCronJob": "raycronjobs.ray.io"}
CRD_DIR_ENV = "LABKIT_KUBERAY_CRDS"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SchemaSourceError(RuntimeError):
    """No CRD schemas could be found; the message says where labkit looked and what to pass."""


@dataclass(frozen=True)
class Problem:
    """One reason a manifest would be rejected: which document, where in it, and why."""

    document: int
    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"document {self.document} ({self.kind} {self.name}): {where}{self.message}"


def _strict(schema: dict) -> dict:
    """A copy of a structural CRD schema in which unknown fields fail, as with strict field validation."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-validations")}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    return out


def _schemas_from_crd(crd: dict) -> dict[tuple[str, str], dict]:
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    out = {}
    for version in crd["spec"]["versions"]:
        if version.get("served", True):
            out[(f"{group}/{version['name']}", kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return out


def default_crd_dir() -> Path:
    """``$LABKIT_KUBERAY_CRDS``; else ``kuberay-crds/v1.7.0`` under ``$LABKIT_SHARED`` or the ``shared/``
    folder beside the labkit checkout (the layout of this repository's CI).

    Elsewhere, get the CRDs from KubeRay's chart (``helm pull kuberay/kuberay-operator --version
    1.7.0 --untar``, folder ``kuberay-operator/crds``) and point ``$LABKIT_KUBERAY_CRDS`` at them.
    """
    if os.environ.get(CRD_DIR_ENV):
        return Path(os.environ[CRD_DIR_ENV])
    shared = os.environ.get("LABKIT_SHARED") or Path(__file__).resolve().parents[3] / "shared"
    return Path(shared) / "kuberay-crds" / "v1.7.0"


def load_crds(source: str | os.PathLike | None = None, *, api_client=None) -> dict[tuple[str, str], dict]:
    """Schemas by (apiVersion, kind), from CRD YAML files (a folder or file) or a connected cluster.

    With neither a path nor a client, ``default_crd_dir()`` is tried. Raises ``SchemaSourceError``
    with what to do when nothing is found.
    """
    if api_client is not None:
        return _crds_from_cluster(api_client)
    path = Path(source) if source else default_crd_dir()
    files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise SchemaSourceError(
            f"no KubeRay CRD files at {path}. Pass --crds PATH (a folder with ray.io_*.yaml from KubeRay v1.7.0's "
            "helm chart, ray-operator/config/crd/bases), set $LABKIT_KUBERAY_CRDS, or connect to a cluster where "
            "the KubeRay operator is installed")
    schemas: dict = {}
    for file in files:
        # The C loader when PyYAML has it: the four CRDs are ~2 MB of YAML.
        for doc in yaml.load_all(file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                schemas.update(_schemas_from_crd(doc))
    if not schemas:
        raise SchemaSourceError(f"{path} holds no CustomResourceDefinition documents")
    return schemas


def _crds_from_cluster(api_client) -> dict[tuple[str, str], dict]:
    from kubernetes.client import ApiextensionsV1Api
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from labkit.k8s.cluster import ClusterError, explain_api_error

    api = ApiextensionsV1Api(api_client)
    schemas: dict = {}
    for crd_name in RAY_KINDS.values():
        try:
            # Raw JSON: the typed model would rename schema keys (x-kubernetes-* and $ref) to snake_case.
            raw = api.read_custom_resource_definition(crd_name, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise explain_api_error(exc, f"reading CRD {crd_name}") from exc
        except HTTPError as exc:
            host = api_client.configuration.host
            raise ClusterError(f"cannot reach the Kubernetes API server at {host} to read the KubeRay CRDs "
                               f"({type(exc).__name__}); pass --crds PATH to validate offline") from exc
        schemas.update(_schemas_from_crd(json.loads(raw.data)))
    if not schemas:
        raise SchemaSourceError("the cluster has no KubeRay CRDs (rayclusters.ray.io ...): install the operator "
                                "(helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0) "
                                "or pass --crds")
    return schemas


def _format_checker():
    from jsonschema import FormatChecker

    checker = FormatChecker()

    @checker.checks("int32")
    def _int32(value) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    @checker.checks("int64")
    def _int64(value) -> bool:
        return not isinstance(value, int) or -(2**63) <= value < 2**63

    return checker


def _path(error) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error) -> str:
    if error.validator == "additionalProperties" and error.validator_value is False:
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown field(s) {', '.join(extra)} (known here: {known})"
    return error.message


def validate_manifests(manifests: list[dict], crds: dict | None = None, *,
                       kubernetes_version: str | None = None) -> list[Problem]:
    """Every reason the API server would reject these manifests; an empty list means all valid.

    Ray kinds need ``crds`` (from :func:`load_crds`); other kinds are checked with
    ``kubernetes-validate`` (strict: unknown fields are errors) for ``kubernetes_version``.
    """
    from jsonschema import Draft7Validator

    problems: list[Problem] = []
    checker = _format_checker()
    for i, doc in enumerate(manifests):
        if not isinstance(doc, dict):
            problems.append(Problem(i, "?", "?", "", f"is a {type(doc).__name__}, not a Kubernetes object"))
            continue
        kind, api_version = doc.get("kind", "?"), doc.get("apiVersion", "?")
        name = str((doc.get("metadata") or {}).get("name", "?"))
        found = []
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            found.append(("metadata", "metadata.name is required"))
        elif not _NAME.match(str(meta["name"])) or len(str(meta["name"])) > 63:
            found.append(("metadata.name", f"{meta['name']!r} is not a valid name (lower-case letters, digits, '-')"))
        if kind in RAY_KINDS:
            if crds is None:
                raise SchemaSourceError(f"document {i} is a {kind}: validating it needs the KubeRay CRDs (load_crds)")
            schema = crds.get((api_version, kind))
            if schema is None:
                served = sorted(v for v, k in crds if k == kind)
                found.append(("apiVersion", f"{api_version} {kind} is not served by these CRDs (served: {served})"))
            else:
                for err in sorted(Draft7Validator(schema, format_checker=checker).iter_errors(doc),
                                  key=lambda e: list(map(str, e.absolute_path))):
                    found.append((_path(err), _message(err)))
        else:
            found.extend(_validate_core(doc, kubernetes_version))
        problems.extend(Problem(i, kind, name, path, msg) for path, msg in found)
    return problems


def _validate_core(doc: dict, kubernetes_version: str | None) -> list[tuple[str, str]]:
    import kubernetes_validate

    version = kubernetes_version or kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [(_path(exc), _message(exc))]  # kubernetes-validate raises jsonschema's error
    except kubernetes_validate.SchemaNotFoundError:
        return [("kind", f"{doc.get('apiVersion')} {doc.get('kind')} is not a Kubernetes {version} kind")]
    return []


def validate_yaml(text: str, crds: dict | None = None, **kwargs) -> list[Problem]:
    """:func:`validate_manifests` on a multi-document YAML string."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        return [Problem(0, "?", "?", "", f"not valid YAML: {exc}")]
    return validate_manifests(docs, crds, **kwargs)
