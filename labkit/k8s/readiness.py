"""Is the room ready? One look at the workshop cluster before the doors open.

The most reported workshop failure with JupyterHub is the first minute: everyone clicks "start"
together, nodes are still booting and images still pulling, and spawns time out. The platform
prepares for it (``doors_open``: the CPU pool sized for the room and a user placeholder per
attendee; the image pre-puller; the model cache seeded the day before). This module tells the
instructor whether that preparation has landed, one line per item with what to do when it has not:

- nodes: Ready CPU nodes against what the head-count needs, GPU nodes (they may be at zero);
- images: the pre-puller's DaemonSet ready on every node (the workshop image is on each disk);
- placeholders: every user placeholder running (each holds a server's room on a live node);
- model cache: its claim Bound and the seeding Job finished;
- Ray: the shared RayCluster ready;
- hub: the hub and proxy Deployments ready, the public address assigned, ``/hub/api`` answering.

It reads objects with plain GETs through the official client's ``ApiClient`` (JSON as sent, no
model classes: a missing status field on a half-started object must not crash the report).

Example:
    >>> from labkit.k8s.cluster import connect
    >>> from labkit.k8s.readiness import room_readiness, report
    >>> checks = room_readiness(api_client=connect(), attendees=40)   # doctest: +SKIP
    >>> print(report(checks))                                         # doctest: +SKIP
    ok    nodes         16 of 16 CPU nodes Ready (40 attendees, 3 per node, 2 for the system); 0 GPU nodes
    ...
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from labkit.i18n import tr
from labkit.k8s.cluster import ClusterError, explain_api_error

OK, WAIT, FAIL = "ok", "wait", "FAIL"


@dataclass(frozen=True)
class Check:
    """One item of the room: ``state`` is ok, wait (not ready yet, or cannot tell) or FAIL."""

    name: str
    state: str
    detail: str
    fix: str = ""


def _get(api_client, path: str) -> dict | None:
    """GET ``path`` from the API server as JSON; None when it does not exist (404)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        request = api_client.param_serialize("GET", path, header_params={"Accept": "application/json"},
                                             auth_settings=["BearerToken"])
        response = api_client.call_api(*request)
        response.read()
        if response.status == 404:
            return None
        if response.status >= 400:
            raise ApiException(http_resp=response)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise explain_api_error(exc, f"reading {path}") from exc
    except HTTPError as exc:
        host = api_client.configuration.host
        raise ClusterError(tr(
            f"cannot reach the Kubernetes API server at {host} ({type(exc).__name__}): is the cluster up and "
            "your kubeconfig the room's (`terraform output -raw kubeconfig`)?",
            f"连不上 Kubernetes API server（{host}，{type(exc).__name__}）：集群是否已启动？kubeconfig 是否为本场的"
            "（`terraform output -raw kubeconfig`）？")) from exc
    return json.loads(response.data)


def _ready(node: dict) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def check_nodes(api_client, *, attendees: int | None, attendees_per_cpu_node: int = 3,
                pool_label: str = "labkit/pool") -> Check:
    nodes = (_get(api_client, "/api/v1/nodes") or {}).get("items", [])
    pools: dict[str, list[dict]] = {}
    for node in nodes:
        pools.setdefault(node["metadata"].get("labels", {}).get(pool_label, "system"), []).append(node)
    cpu, gpu = pools.get("system", []), pools.get("gpu", [])
    ready = [n for n in cpu if _ready(n)]
    not_ready = [n["metadata"]["name"] for n in nodes if not _ready(n)]
    gpu_ready = sum(_ready(n) for n in gpu)
    needed = math.ceil(attendees / attendees_per_cpu_node) + 2 if attendees else 1
    detail = tr(f"{len(ready)} of {needed} CPU nodes Ready", f"CPU 节点就绪 {len(ready)} / 需要 {needed}")
    if attendees:
        detail += tr(f" ({attendees} attendees, {attendees_per_cpu_node} per node, 2 for the system)",
                     f"（{attendees} 位学员，每节点 {attendees_per_cpu_node} 位，另加 2 个系统节点）")
    detail += tr(f"; {gpu_ready} GPU nodes Ready", f"；GPU 节点就绪 {gpu_ready} 个")
    if not_ready:
        detail += tr(f"; NotReady: {', '.join(not_ready[:5])}", f"；未就绪：{', '.join(not_ready[:5])}")
    if len(ready) >= needed:
        return Check("nodes", OK, detail)
    fix = tr("the pool is still growing (a node takes a few minutes) or is too small: apply with doors_open = true "
             "and a system_nodes.max that fits the room; `kubectl describe node <name>` for a NotReady one",
             "节点池仍在扩容（每个节点需几分钟），或上限太小：用 doors_open = true 并把 system_nodes.max "
             "设得够大后再 apply；未就绪的节点用 `kubectl describe node <名字>` 查看")
    return Check("nodes", WAIT, detail, fix)


def check_images(api_client, *, hub_namespace: str) -> Check:
    ds = _get(api_client, f"/apis/apps/v1/namespaces/{hub_namespace}/daemonsets/continuous-image-puller")
    if ds is None:
        return Check("images", FAIL, tr("no image pre-puller in the hub's namespace", "hub 命名空间里没有镜像预拉取"),
                     tr("enable prePuller.continuous in the hub's values (infra/terraform does)",
                        "在 hub 的 values 中开启 prePuller.continuous（infra/terraform 默认开启）"))
    status = ds.get("status", {})
    want, have = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
    detail = tr(f"workshop images on {have} of {want} nodes", f"工作坊镜像已在 {have} / {want} 个节点上")
    if want and have >= want:
        return Check("images", OK, detail)
    return Check("images", WAIT, detail, tr(
        f"images are still pulling (the GPU image is about 15 GB): `kubectl -n {hub_namespace} get pods "
        "-l component=continuous-image-puller -o wide` shows which nodes",
        f"镜像仍在拉取（GPU 镜像约 15 GB）：`kubectl -n {hub_namespace} get pods -l component=continuous-image-puller "
        "-o wide` 可看是哪些节点"))


def check_placeholders(api_client, *, hub_namespace: str, attendees: int | None) -> Check:
    sts = _get(api_client, f"/apis/apps/v1/namespaces/{hub_namespace}/statefulsets/user-placeholder")
    if sts is None:
        return Check("placeholders", FAIL, tr("no user placeholders", "没有 user placeholder"),
                     tr("enable scheduling.userPlaceholder in the hub's values (infra/terraform does)",
                        "在 hub 的 values 中开启 scheduling.userPlaceholder（infra/terraform 默认开启）"))
    want = sts.get("spec", {}).get("replicas", 0)
    have = sts.get("status", {}).get("readyReplicas", 0) or 0
    detail = tr(f"{have} of {want} placeholders running", f"placeholder 运行中 {have} / {want}")
    if attendees and want < attendees:
        return Check("placeholders", WAIT, detail + tr(f" (fewer than the {attendees} attendees)",
                                                       f"（少于 {attendees} 位学员）"),
                     tr("before the doors open, apply with doors_open = true: one placeholder per attendee",
                        "开门前用 doors_open = true 再 apply：每位学员一个 placeholder"))
    if have >= want:
        return Check("placeholders", OK, detail)
    return Check("placeholders", WAIT, detail, tr(
        "pending placeholders wait for nodes: the CPU pool is still growing",
        "pending 的 placeholder 在等节点：CPU 节点池仍在扩容"))


def check_model_cache(api_client, *, namespace: str, claim: str = "labkit-models",
                      job: str = "labkit-seed-models") -> Check:
    pvc = _get(api_client, f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
    if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
        phase = "missing" if pvc is None else pvc.get("status", {}).get("phase", "Pending")
        return Check("model cache", FAIL,
                     tr(f"claim {namespace}/{claim}: {phase}", f"存储卷声明 {namespace}/{claim}：{phase}"),
                     tr(f"`kubectl -n {namespace} describe pvc {claim}`: is the NAS mount address right?",
                        f"`kubectl -n {namespace} describe pvc {claim}`：NAS 挂载地址是否正确？"))
    seed = _get(api_client, f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}")
    logs = f"`kubectl -n {namespace} logs job/{job} -f`"
    if seed is None:
        return Check("model cache", WAIT, tr("claim Bound; the seeding Job is gone (it is removed a day after it ends)",
                                             "存储卷已绑定；填充 Job 已不在（结束一天后会被删除）"),
                     tr("run `labkit models verify` in a server to be sure the models are there",
                        "在某个服务器里运行 `labkit models verify` 确认模型都在"))
    status = seed.get("status", {})
    if status.get("succeeded"):
        return Check("model cache", OK, tr("claim Bound, seeding Job finished", "存储卷已绑定，模型填充已完成"))
    if status.get("failed") and not status.get("active"):
        return Check("model cache", FAIL, tr(f"the seeding Job failed {status['failed']} times",
                                             f"模型填充 Job 失败 {status['failed']} 次"),
                     tr(f"{logs}; a mirror (hf_endpoint) that answers from the cluster?",
                        f"{logs}；集群能访问镜像站（hf_endpoint）吗？"))
    return Check("model cache", WAIT, tr("claim Bound, models still downloading", "存储卷已绑定，模型仍在下载"),
                 tr(f"follow it: {logs}", f"查看进度：{logs}"))


def check_ray(api_client, *, namespace: str, name: str = "room") -> Check:
    cluster = _get(api_client, f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters/{name}")
    if cluster is None:
        return Check("ray", FAIL, tr(f"no RayCluster {namespace}/{name}", f"没有 RayCluster {namespace}/{name}"),
                     tr("the platform's shared cluster is missing: `terraform apply` again",
                        "平台的共享 Ray 集群不存在：再运行一次 `terraform apply`"))
    state = cluster.get("status", {}).get("state", "pending")
    if state == "ready":
        return Check("ray", OK, tr(f"RayCluster {name} ready", f"RayCluster {name} 已就绪"))
    return Check("ray", WAIT, tr(f"RayCluster {name}: {state}", f"RayCluster {name}：{state}"),
                 f"`kubectl -n {namespace} describe raycluster {name}`")


def hub_address(service: dict | None) -> str | None:
    """The hub's URL from the proxy-public Service's load balancer, or None while it has none."""
    if not service:
        return None
    ingress = (service.get("status", {}).get("loadBalancer", {}).get("ingress") or [{}])[0]
    host = ingress.get("hostname") or ingress.get("ip")
    if not host:
        return None
    port = next((p.get("port") for p in service.get("spec", {}).get("ports", []) if p.get("name") == "http"), 80)
    return f"http://{host}" + ("" if port == 80 else f":{port}")


def check_hub(api_client, *, hub_namespace: str, hub_url: str | None = None, timeout_s: float = 5.0) -> Check:
    for deployment in ("hub", "proxy"):
        d = _get(api_client, f"/apis/apps/v1/namespaces/{hub_namespace}/deployments/{deployment}")
        if d is None or not d.get("status", {}).get("readyReplicas"):
            return Check("hub", FAIL,
                         tr(f"the {deployment} Deployment is not ready", f"{deployment} Deployment 未就绪"),
                         tr(f"`kubectl -n {hub_namespace} describe deploy/{deployment}` and its pod's logs",
                            f"查看 `kubectl -n {hub_namespace} describe deploy/{deployment}` 及其 pod 日志"))
    url = hub_url or hub_address(_get(api_client, f"/api/v1/namespaces/{hub_namespace}/services/proxy-public"))
    if url is None:
        return Check("hub", WAIT,
                     tr("hub running; its public address is not assigned yet", "hub 已运行；公网地址尚未分配"),
                     tr(f"`kubectl -n {hub_namespace} get svc proxy-public` until EXTERNAL-IP shows",
                        f"等待 `kubectl -n {hub_namespace} get svc proxy-public` 出现 EXTERNAL-IP"))
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/hub/api", timeout=timeout_s) as answer:
            version = json.loads(answer.read()).get("version", "?")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Check("hub", FAIL, tr(f"{url} does not answer from here ({exc})", f"从这里访问不到 {url}（{exc}）"),
                     tr("try from the venue's network; hub_source_ranges must include the venue's public address",
                        "请在会场网络下再试；hub_source_ranges 须包含会场的公网出口地址"))
    return Check("hub", OK, tr(f"{url} answers (JupyterHub {version})", f"{url} 可访问（JupyterHub {version}）"))


def room_readiness(*, api_client, attendees: int | None = None, attendees_per_cpu_node: int = 3,
                   hub_namespace: str = "jhub", ray_namespace: str = "labkit",
                   hub_url: str | None = None) -> list[Check]:
    """Every check of the room, in the order an instructor fixes them (nodes first, hub last)."""
    if attendees is not None and attendees < 1:
        raise ValueError(f"attendees must be at least 1, got {attendees}")
    return [check_nodes(api_client, attendees=attendees, attendees_per_cpu_node=attendees_per_cpu_node),
            check_images(api_client, hub_namespace=hub_namespace),
            check_placeholders(api_client, hub_namespace=hub_namespace, attendees=attendees),
            check_model_cache(api_client, namespace=ray_namespace),
            check_ray(api_client, namespace=ray_namespace),
            check_hub(api_client, hub_namespace=hub_namespace, hub_url=hub_url)]


def wait_until_ready(*, timeout_s: float, every_s: float = 20.0, progress: bool = True,
                     **options) -> list[Check]:
    """``room_readiness(**options)`` again every ``every_s`` seconds until every check is ok or
    ``timeout_s`` has passed; the last checks. A bar shows how many items are ready."""
    import time

    from tqdm.auto import tqdm

    deadline = time.monotonic() + timeout_s
    with tqdm(total=6, desc=tr("room ready", "现场就绪"), unit="item", disable=not progress) as bar:
        while True:
            checks = room_readiness(**options)
            ready = [c.name for c in checks if c.state == OK]
            bar.n = len(ready)
            bar.set_postfix_str(", ".join(c.name for c in checks if c.state != OK) or "READY")
            bar.refresh()
            if len(ready) == len(checks) or time.monotonic() + every_s > deadline:
                return checks
            time.sleep(every_s)


def report(checks: list[Check]) -> str:
    """One line per check, the fix indented under anything not ok, and a verdict."""
    lines = []
    for c in checks:
        lines.append(f"{c.state:<5} {c.name:<13} {c.detail}")
        if c.fix:
            lines.append(f"{'':<20}→ {c.fix}")
    bad = [c.name for c in checks if c.state != OK]
    lines.append(tr("READY: open the doors" if not bad else f"NOT READY: {', '.join(bad)}",
                    "就绪：可以开门" if not bad else f"尚未就绪：{', '.join(bad)}"))
    return "\n".join(lines)
