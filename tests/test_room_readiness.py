"""`labkit room ready` against the loopback API stand-in (no Kubernetes API server runs here; see
tests/test_k8s_cluster.py): a small HTTP server that answers the GETs the readiness report makes
with the objects of a room in a given state, and the hub's /hub/api. What it proves: the real
client's requests, each check's verdict and the fix it prints, the exit code. Against a real
cluster this is not verified here (README, "Not verified here").
"""

from __future__ import annotations

import copy
import threading
from http.server import ThreadingHTTPServer

import pytest
from conftest import closed_port
from test_k8s_cluster import FakeApiServer, _kubeconfig

from labkit.cli import main
from labkit.i18n import set_language
from labkit.k8s.cluster import ClusterError, connect
from labkit.k8s.readiness import FAIL, OK, WAIT, hub_address, room_readiness, wait_until_ready


def _node(name: str, pool: str, ready: bool = True) -> dict:
    return {"metadata": {"name": name, "labels": {"labkit/pool": pool}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def ready_room(port: int) -> dict[str, dict]:
    """Path -> object of a room an hour before the doors open, everything in place (6 attendees)."""
    apps, ns = "/apis/apps/v1/namespaces/jhub", "/api/v1/namespaces"
    return {
        "/api/v1/nodes": {"items": [_node(f"cpu-{i}", "system") for i in range(4)] + [_node("gpu-0", "gpu")]},
        f"{apps}/daemonsets/continuous-image-puller": {"status": {"desiredNumberScheduled": 5, "numberReady": 5}},
        f"{apps}/statefulsets/user-placeholder": {"spec": {"replicas": 6}, "status": {"readyReplicas": 6}},
        f"{ns}/labkit/persistentvolumeclaims/labkit-models": {"status": {"phase": "Bound"}},
        "/apis/batch/v1/namespaces/labkit/jobs/labkit-seed-models": {"status": {"succeeded": 1}},
        "/apis/ray.io/v1/namespaces/labkit/rayclusters/room": {"status": {"state": "ready"}},
        f"{apps}/deployments/hub": {"status": {"readyReplicas": 1}},
        f"{apps}/deployments/proxy": {"status": {"readyReplicas": 1}},
        f"{ns}/jhub/services/proxy-public": {
            "spec": {"ports": [{"name": "http", "port": port}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}},
        "/hub/api": {"version": "5.3.0"},
    }


class RoomApi(FakeApiServer):
    """Answers GETs from ``room`` (404 otherwise); ``forbidden`` answers 403 to everything."""

    room: dict = {}
    forbidden = False
    paths: list = []

    def do_GET(self):
        path = self.path.split("?")[0]
        RoomApi.paths.append(path)
        if self.forbidden:
            code, body = 403, {"kind": "Status", "code": 403, "message": f'User "ta" cannot get path "{path}"'}
        elif path in self.room:
            code, body = 200, self.room[path]
        else:
            code, body = 404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": f"{path} not found"}
        self._send(code, body)


@pytest.fixture
def room_api(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), RoomApi)
    RoomApi.room, RoomApi.forbidden, RoomApi.paths = ready_room(server.server_address[1]), False, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    set_language("en")
    yield server, _kubeconfig(tmp_path, server.server_address[1])
    server.shutdown()
    set_language(None)


def _states(kubeconfig: str, **options) -> dict[str, tuple[str, str, str]]:
    checks = room_readiness(api_client=connect(kubeconfig=kubeconfig), **options)
    return {c.name: (c.state, c.detail, c.fix) for c in checks}


def test_a_ready_room_says_open_the_doors(room_api, capsys):
    server, kubeconfig = room_api
    assert main(["room", "ready", "--kubeconfig", kubeconfig, "--attendees", "6", "--lang", "en"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("READY: open the doors")
    assert "4 of 4 CPU nodes Ready (6 attendees, 3 per node, 2 for the system); 1 GPU nodes Ready" in out
    assert f"http://127.0.0.1:{server.server_address[1]} answers (JupyterHub 5.3.0)" in out
    assert "/hub/api" in RoomApi.paths  # the hub was really asked, at the address its Service gives


def test_a_room_still_warming_up_says_what_is_missing_and_what_to_do(room_api, capsys):
    _, kubeconfig = room_api
    room = RoomApi.room
    room["/api/v1/nodes"]["items"][3] = _node("cpu-3", "system", ready=False)
    room["/apis/apps/v1/namespaces/jhub/daemonsets/continuous-image-puller"]["status"]["numberReady"] = 3
    room["/apis/apps/v1/namespaces/jhub/statefulsets/user-placeholder"]["status"]["readyReplicas"] = 2
    room["/apis/batch/v1/namespaces/labkit/jobs/labkit-seed-models"]["status"] = {"active": 1}
    room["/apis/ray.io/v1/namespaces/labkit/rayclusters/room"]["status"] = {}
    del room["/api/v1/namespaces/jhub/services/proxy-public"]["status"]["loadBalancer"]["ingress"]
    states = _states(kubeconfig, attendees=6)
    assert {name: s[0] for name, s in states.items()} == {
        "nodes": WAIT, "images": WAIT, "placeholders": WAIT, "model cache": WAIT, "ray": WAIT, "hub": WAIT}
    assert "3 of 4 CPU nodes Ready" in states["nodes"][1] and "NotReady: cpu-3" in states["nodes"][1]
    assert "3 of 5 nodes" in states["images"][1] and "continuous-image-puller" in states["images"][2]
    assert "2 of 6 placeholders" in states["placeholders"][1]
    assert "logs job/labkit-seed-models -f" in states["model cache"][2]
    assert "EXTERNAL-IP" in states["hub"][2]
    assert main(["room", "ready", "--kubeconfig", kubeconfig, "--attendees", "6", "--lang", "zh"]) == 1
    out = capsys.readouterr().out
    assert "尚未就绪：nodes, images, placeholders, model cache, ray, hub" in out and "镜像仍在拉取" in out


def test_what_the_doors_cannot_open_on_is_a_failure(room_api):
    server, kubeconfig = room_api
    room = RoomApi.room
    del room["/apis/apps/v1/namespaces/jhub/daemonsets/continuous-image-puller"]
    room["/apis/batch/v1/namespaces/labkit/jobs/labkit-seed-models"]["status"] = {"failed": 4}
    with closed_port() as port:
        states = _states(kubeconfig, attendees=6, hub_url=f"http://127.0.0.1:{port}")
    assert states["images"][0] == FAIL and "prePuller.continuous" in states["images"][2]
    assert states["model cache"][0] == FAIL and "failed 4 times" in states["model cache"][1]
    assert states["hub"][0] == FAIL and "hub_source_ranges" in states["hub"][2]
    room["/api/v1/namespaces/labkit/persistentvolumeclaims/labkit-models"]["status"]["phase"] = "Pending"
    del room["/apis/apps/v1/namespaces/jhub/deployments/proxy"]
    states = _states(kubeconfig)
    assert states["model cache"][0] == FAIL and "NAS mount address" in states["model cache"][2]
    assert states["hub"][0] == FAIL and "deploy/proxy" in states["hub"][2]


def test_too_few_nodes_or_placeholders_for_the_head_count(room_api):
    _, kubeconfig = room_api
    states = _states(kubeconfig, attendees=40)  # needs ceil(40 / 3) + 2 = 16 CPU nodes and 40 placeholders
    assert states["nodes"][0] == WAIT and "4 of 16 CPU nodes" in states["nodes"][1]
    assert "doors_open" in states["nodes"][2]
    assert states["placeholders"][0] == WAIT and "doors_open = true" in states["placeholders"][2]
    assert _states(kubeconfig, attendees=40, attendees_per_cpu_node=20)["nodes"][0] == OK
    with pytest.raises(ValueError, match="at least 1"):
        _states(kubeconfig, attendees=0)


def test_an_unreachable_or_forbidding_api_server_is_explained(room_api, tmp_path, capsys):
    _, kubeconfig = room_api
    RoomApi.forbidden = True
    with pytest.raises(ClusterError, match="HTTP 403.*RBAC forbids it"):
        _states(kubeconfig)
    with closed_port() as port:
        unreachable = _kubeconfig(tmp_path / "down", port) if (tmp_path / "down").mkdir() is None else None
        assert main(["room", "ready", "--kubeconfig", unreachable, "--lang", "en"]) == 2
    assert "cannot reach the Kubernetes API server" in capsys.readouterr().err


def test_the_hub_address_comes_from_the_load_balancer():
    service = copy.deepcopy(ready_room(80)["/api/v1/namespaces/jhub/services/proxy-public"])
    assert hub_address(service) == "http://127.0.0.1"
    service["status"]["loadBalancer"]["ingress"] = [{"hostname": "hub.example.com"}]
    service["spec"]["ports"][0]["port"] = 8080
    assert hub_address(service) == "http://hub.example.com:8080"
    assert hub_address({"status": {"loadBalancer": {}}}) is None and hub_address(None) is None


def test_waiting_asks_again_until_the_room_is_ready(room_api):
    _, kubeconfig = room_api
    placeholders = RoomApi.room["/apis/apps/v1/namespaces/jhub/statefulsets/user-placeholder"]["status"]
    placeholders["readyReplicas"] = 2

    def nodes_arrive():  # the autoscaler's nodes come up while the instructor waits
        while RoomApi.paths.count("/api/v1/nodes") < 2:
            threading.Event().wait(0.05)
        placeholders["readyReplicas"] = 6

    threading.Thread(target=nodes_arrive, daemon=True).start()
    checks = wait_until_ready(api_client=connect(kubeconfig=kubeconfig), attendees=6, timeout_s=30, every_s=0.2,
                              progress=False)
    assert all(c.state == OK for c in checks) and RoomApi.paths.count("/api/v1/nodes") >= 2
    placeholders["readyReplicas"] = 2  # never ready: gives up after the timeout with what is missing
    checks = wait_until_ready(api_client=connect(kubeconfig=kubeconfig), attendees=6, timeout_s=0.5, every_s=0.2,
                              progress=False)
    assert [c.name for c in checks if c.state != OK] == ["placeholders"]
