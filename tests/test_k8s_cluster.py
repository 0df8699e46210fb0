"""Apply/status/delete error paths with the real Kubernetes client.

No Kubernetes API server runs here (no kind, no Docker engine), so these tests talk to a small
HTTP server on loopback that answers like one for the few calls involved: discovery, server-side
apply PATCHes, 403 and 422 Status objects. What it proves: the real client's requests (apply
content type, dry run first, field manager) and that every failure turns into a message that says
what to do. Against a real cluster this is not verified here (README, "Not verified here").
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from conftest import EXAMPLE_IMAGE as IMAGE
from conftest import closed_port

from labkit.k8s import preset
from labkit.k8s.cluster import ClusterError, apply, connect, delete, summary

GROUPS = {"networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")],
          "ray.io/v1": [("rayclusters", "RayCluster"), ("rayjobs", "RayJob"), ("rayservices", "RayService")]}


class FakeApiServer(BaseHTTPRequestHandler):
    """Answers discovery for the groups in ``groups``; PATCH/DELETE per ``mode``; records requests."""

    groups: dict = GROUPS
    mode = "ok"
    requests: list = []

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                          "code": code, "message": message})

    def do_GET(self):
        path = self.path.split("?")[0]
        if self.mode == "forbidden":
            return self._status(403, "Forbidden", f'User "attendee-7" cannot get path "{path}"')
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/api/v1":
            return self._send(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "persistentvolumeclaims", "singularName": "", "namespaced": True,
                 "kind": "PersistentVolumeClaim", "verbs": ["get", "patch", "delete"]}]})
        if path == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
                       "preferredVersion": {"groupVersion": gv, "version": "v1"}} for gv in self.groups]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for gv, resources in self.groups.items():
            if path == f"/apis/{gv}":
                return self._send(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": [
                    {"name": n, "singularName": "", "namespaced": True, "kind": k, "verbs": ["get", "patch", "delete"]}
                    for n, k in resources]})
        return self._status(404, "NotFound", f"{path} not found")

    def do_PATCH(self):
        body = yaml.safe_load(self.rfile.read(int(self.headers["Content-Length"])))
        FakeApiServer.requests.append(("PATCH", self.path, self.headers["Content-Type"], body["kind"]))
        if self.mode == "reject-ray" and body["kind"].startswith("Ray"):
            return self._status(422, "Invalid", f'{body["kind"]}.ray.io "x" is invalid: spec.headGroupSpec: Required')
        if self.mode == "patch-forbidden":
            return self._status(403, "Forbidden", 'User "attendee-7" cannot patch resource "rayclusters"')
        self._send(200, body)

    def do_DELETE(self):
        FakeApiServer.requests.append(("DELETE", self.path, None, None))
        if "rayclusters" in self.path:
            return self._status(404, "NotFound", "not found")
        self._send(200, {"kind": "Status", "status": "Success"})


@pytest.fixture
def api_server(tmp_path, monkeypatch):
    FakeApiServer.requests = []
    FakeApiServer.mode = "ok"
    FakeApiServer.groups = GROUPS
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _kubeconfig(tmp_path, port: int) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}]}))
    return str(path)


def _api(tmp_path, server):
    return connect(kubeconfig=_kubeconfig(tmp_path, server.server_address[1]))


def test_apply_is_server_side_and_dry_runs_everything_first(tmp_path, api_server):
    lines = apply(preset("cpu", image=IMAGE), api_client=_api(tmp_path, api_server))
    assert lines == ["NetworkPolicy labkit/labkit-cpu-ray: applied", "RayCluster labkit/labkit-cpu: applied"]
    patches = [r for r in FakeApiServer.requests if r[0] == "PATCH"]
    assert all(r[2] == "application/apply-patch+yaml" and "fieldManager=labkit" in r[1] for r in patches)
    assert ["dryRun=All" in r[1] for r in patches] == [True, True, False, False]


def test_dry_run_saves_nothing(tmp_path, api_server):
    lines = apply(preset("cpu", image=IMAGE), api_client=_api(tmp_path, api_server), dry_run=True)
    assert all(line.endswith("valid (dry run)") for line in lines)
    assert all("dryRun=All" in r[1] for r in FakeApiServer.requests if r[0] == "PATCH")


def test_a_rejected_object_leaves_nothing_applied(tmp_path, api_server):
    FakeApiServer.mode = "reject-ray"
    with pytest.raises(ClusterError, match="HTTP 422 .*Required.*labkit k8s validate"):
        apply(preset("cpu", image=IMAGE), api_client=_api(tmp_path, api_server))
    assert all("dryRun=All" in r[1] for r in FakeApiServer.requests if r[0] == "PATCH")


def test_missing_kuberay_crds_are_named(tmp_path, api_server):
    FakeApiServer.groups = {"networking.k8s.io/v1": GROUPS["networking.k8s.io/v1"]}
    with pytest.raises(ClusterError, match="KubeRay CRDs are not installed.*helm install kuberay-operator"):
        apply(preset("cpu", image=IMAGE), api_client=_api(tmp_path, api_server))
    assert not [r for r in FakeApiServer.requests if r[0] == "PATCH"]


@pytest.mark.parametrize("mode", ["forbidden", "patch-forbidden"])
def test_rbac_refusals_say_what_to_ask_for(tmp_path, api_server, mode):
    FakeApiServer.mode = mode
    with pytest.raises(ClusterError, match="HTTP 403 .*attendee-7.*RBAC forbids it.*rayclusters"):
        apply(preset("cpu", image=IMAGE), api_client=_api(tmp_path, api_server))


def test_no_kubeconfig_and_no_server_are_clear(tmp_path):
    with pytest.raises(ClusterError, match="no usable kubeconfig.*KUBECONFIG.*render"):
        connect(kubeconfig=str(tmp_path / "missing"))
    with closed_port() as port:
        api = connect(kubeconfig=_kubeconfig(tmp_path, port))
        api.configuration.retries = 0
        with pytest.raises(ClusterError, match="cannot reach the Kubernetes API server"):
            apply(preset("cpu", image=IMAGE), api_client=api)


def test_delete_goes_in_reverse_and_reports_missing_objects(tmp_path, api_server):
    lines = delete(preset("cpu", image=IMAGE), api_client=_api(tmp_path, api_server))
    assert lines == ["RayCluster labkit/labkit-cpu: already gone", "NetworkPolicy labkit/labkit-cpu-ray: deleted"]


def test_each_call_asks_the_api_server_not_a_shared_cache(tmp_path, api_server):
    # The client's default discovery cache is a file per host in /tmp: a later call whose
    # credentials lost their rights would not hear the 403 from discovery.
    api = _api(tmp_path, api_server)
    apply(preset("cpu", image=IMAGE), api_client=api, dry_run=True)
    FakeApiServer.mode = "forbidden"
    with pytest.raises(ClusterError, match="HTTP 403"):
        apply(preset("cpu", image=IMAGE), api_client=api, dry_run=True)


def test_status_summaries_read_kuberay_status():
    job = {"kind": "RayJob", "status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}
    assert summary(job)[1:] == (True, False)
    failed = {"kind": "RayJob", "status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"}}
    assert summary(failed)[1:] == (False, True)
    cluster = {"kind": "RayCluster", "status": {"state": "ready", "readyWorkerReplicas": 2, "desiredWorkerReplicas": 2,
                                                "conditions": [{"type": "HeadPodReady", "status": "True"},
                                                               {"type": "RayClusterProvisioned", "status": "True"}]}}
    assert summary(cluster) == ("ready, 2/2 workers ready", True, False)
    assert summary({"kind": "RayCluster", "status": {}})[1] is False
    service = {"kind": "RayService", "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert summary(service)[1] is True
