"""``labkit k8s ...`` and ``labkit jobs ...``: KubeRay manifests and Ray jobs from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub) -> None:
    k = sub.add_parser("k8s", help="KubeRay manifests: render, validate, apply, status, logs, delete")
    ksub = k.add_subparsers(metavar="ACTION")
    r = ksub.add_parser("render", help="print (or write) the manifests of a preset or a spec file")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="cpu, gpu, shared-gpu, elastic-pool, job or service")
    src.add_argument("--spec", type=Path, help="a YAML spec (kind: RayCluster|RayJob|RayService + fields)")
    r.add_argument("--image", help="container image (default: the workshop image of the local Ray/Python)")
    r.add_argument("--output", type=Path, help="write here instead of printing")
    r.set_defaults(func=_render)

    v = ksub.add_parser("validate", help="check manifests against the KubeRay CRDs and Kubernetes' schemas")
    v.add_argument("files", nargs="+", type=Path)
    v.add_argument("--crds", type=Path, help="folder with KubeRay's CRD YAML (default: the connected cluster's)")
    v.add_argument("--kubernetes-version", help="schemas of this Kubernetes version for core objects (default: latest)")
    _kube_args(v)
    v.set_defaults(func=_validate)

    a = ksub.add_parser("apply", help="server-side apply (all objects are dry-run first)")
    a.add_argument("file", type=Path)
    a.add_argument("--dry-run", action="store_true", help="let the API server check everything, save nothing")
    a.add_argument("--wait", action="store_true", help="wait until the Ray objects are ready")
    a.add_argument("--timeout", type=float, default=900)
    a.add_argument("--force-conflicts", action="store_true", help="take over fields another manager owns")
    _kube_args(a)
    a.set_defaults(func=_apply)

    s = ksub.add_parser("status", help="one line per object of a manifest file")
    s.add_argument("file", type=Path)
    _kube_args(s)
    s.set_defaults(func=_status)

    lg = ksub.add_parser("logs", help="logs of a RayJob (its submitter pod)")
    lg.add_argument("name")
    lg.add_argument("--namespace", "-n", default="labkit")
    lg.add_argument("--tail", type=int)
    _kube_args(lg)
    lg.set_defaults(func=_logs)

    d = ksub.add_parser("delete", help="delete the objects of a manifest file")
    d.add_argument("file", type=Path)
    _kube_args(d)
    d.set_defaults(func=_delete)
    k.set_defaults(func=lambda args: (k.print_help(), 2)[1])

    room = sub.add_parser("room", help="the workshop cluster on the day: is it ready for the doors to open?")
    rsub = room.add_subparsers(metavar="ACTION")
    rr = rsub.add_parser("ready", help="nodes, pre-pulled images, placeholders, model cache, Ray, hub; exit 0 when "
                                       "all are ready")
    _kube_args(rr)
    rr.add_argument("--attendees", type=int, help="expected head-count: the CPU nodes and placeholders it needs")
    rr.add_argument("--attendees-per-cpu-node", type=int, default=3, help="as in the Terraform env (default 3)")
    rr.add_argument("--hub-namespace", default="jhub")
    rr.add_argument("--ray-namespace", default="labkit")
    rr.add_argument("--hub-url", help="default: the proxy-public Service's load balancer address")
    rr.add_argument("--wait", type=float, default=0, metavar="MINUTES",
                    help="ask again every 20 s until everything is ready or MINUTES have passed")
    rr.add_argument("--json", action="store_true", help="machine-readable output")
    rr.add_argument("--lang", choices=["en", "zh"],
                    help="language of the report (default: LABKIT_LANG, else the locale)")
    rr.set_defaults(func=_room_ready)

    j = sub.add_parser("jobs", help="Ray jobs on a local head or a port-forwarded KubeRay head")
    jsub = j.add_subparsers(metavar="ACTION")
    js = jsub.add_parser("submit", help="submit a command: labkit jobs submit [--wait] -- python -m labkit batch ...")
    js.add_argument("entrypoint", nargs=argparse.REMAINDER, help="the command (after --)")
    js.add_argument("--wait", action="store_true", help="follow the job until it ends, then print its logs")
    js.add_argument("--timeout", type=float, default=3600)
    js.add_argument("--working-dir", type=Path, help="upload this folder and run the command in it")
    js.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the job")
    js.add_argument("--submission-id")
    _address_arg(js)
    js.set_defaults(func=_jobs_submit)
    for name, helptext, func in (("status", "status of a job", _jobs_status), ("logs", "logs of a job", _jobs_logs),
                                 ("stop", "stop a running job", _jobs_stop)):
        p = jsub.add_parser(name, help=helptext)
        p.add_argument("job_id")
        _address_arg(p)
        p.set_defaults(func=func)
    jl = jsub.add_parser("list", help="every job the cluster knows")
    _address_arg(jl)
    jl.set_defaults(func=_jobs_list)
    j.set_defaults(func=lambda args: (j.print_help(), 2)[1])


def _kube_args(p) -> None:
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _address_arg(p) -> None:
    p.add_argument("--address", help="jobs API, default $RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265")


def _read_manifests(path: Path) -> list[dict]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (render one with `labkit k8s render --preset cpu --output ...`)")
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _render(args) -> int:
    import yaml

    from labkit.k8s import preset, to_yaml
    from labkit.k8s.presets import manifests_from_spec

    if args.preset:
        manifests = preset(args.preset, image=args.image)
    else:
        data = yaml.safe_load(args.spec.read_text())
        if args.image and isinstance(data, dict):
            (data.setdefault("cluster", {}) if data.get("kind") != "RayCluster" else data)["image"] = args.image
        manifests = manifests_from_spec(data)
    text = to_yaml(manifests)
    if args.output:
        # Written whole or not at all: a half-written manifest applied later is worse than none.
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(text)
        tmp.replace(args.output)
        print(f"wrote {args.output} ({', '.join(m['kind'] for m in manifests)})")
    else:
        print(text, end="")
    return 0


def _validate(args) -> int:
    from labkit.k8s.schema import SchemaSourceError, load_crds, validate_manifests

    if args.crds:
        crds, source = load_crds(args.crds), str(args.crds)
    else:
        try:
            from labkit.k8s.cluster import ClusterError, connect

            crds, source = load_crds(api_client=connect(kubeconfig=args.kubeconfig, context=args.context)), "cluster"
        except (ClusterError, SchemaSourceError) as cluster_problem:
            try:
                crds = load_crds()
                source = "default CRD folder"
            except SchemaSourceError as exc:
                raise SchemaSourceError(f"no CRD schemas to validate against. From the cluster: {cluster_problem}. "
                                        f"From files: {exc}") from exc
    bad = 0
    for path in args.files:
        problems = validate_manifests(_read_manifests(path), crds, kubernetes_version=args.kubernetes_version)
        for problem in problems:
            print(f"{path}: {problem}")
        bad += len(problems)
        if not problems:
            print(f"{path}: valid (KubeRay CRDs from {source})")
    return 1 if bad else 0


def _apply(args) -> int:
    from labkit.k8s.cluster import apply, connect, wait_ready

    manifests = _read_manifests(args.file)
    api = connect(kubeconfig=args.kubeconfig, context=args.context)
    for line in apply(manifests, api_client=api, dry_run=args.dry_run, force_conflicts=args.force_conflicts):
        print(line)
    if args.wait and not args.dry_run:
        for m in manifests:
            if m["kind"].startswith("Ray"):
                print(f"{m['kind']} {m['metadata']['name']}: {wait_ready(m, api_client=api, timeout_s=args.timeout)}")
    return 0


def _status(args) -> int:
    from labkit.k8s.cluster import connect, get, summary

    api = connect(kubeconfig=args.kubeconfig, context=args.context)
    for m in _read_manifests(args.file):
        obj = get(m, api_client=api)
        print(f"{m['kind']} {m['metadata']['name']}: {summary(obj)[0] if obj else 'not found'}")
    return 0


def _room_ready(args) -> int:
    import dataclasses
    import json

    from labkit.i18n import set_language
    from labkit.k8s.cluster import connect
    from labkit.k8s.readiness import OK, report, room_readiness, wait_until_ready

    set_language(args.lang)
    if args.wait < 0:
        raise ValueError(f"--wait takes minutes, 0 or more; got {args.wait}")
    options = dict(api_client=connect(kubeconfig=args.kubeconfig, context=args.context), attendees=args.attendees,
                   attendees_per_cpu_node=args.attendees_per_cpu_node, hub_namespace=args.hub_namespace,
                   ray_namespace=args.ray_namespace, hub_url=args.hub_url)
    checks = (wait_until_ready(timeout_s=args.wait * 60, progress=not args.json, **options) if args.wait
              else room_readiness(**options))
    print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2, ensure_ascii=False) if args.json
          else report(checks))
    return 0 if all(c.state == OK for c in checks) else 1


def _logs(args) -> int:
    from labkit.k8s.cluster import connect, job_logs

    print(job_logs(args.name, namespace=args.namespace, tail_lines=args.tail,
                   api_client=connect(kubeconfig=args.kubeconfig, context=args.context)), end="")
    return 0


def _delete(args) -> int:
    from labkit.k8s.cluster import connect, delete

    api = connect(kubeconfig=args.kubeconfig, context=args.context)
    for line in delete(_read_manifests(args.file), api_client=api):
        print(line)
    return 0


def _jobs_submit(args) -> int:
    import shlex

    from labkit import jobs

    command = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not command:
        raise ValueError("no command given: labkit jobs submit -- python -m labkit batch prompts_500 --output ...")
    runtime_env: dict = {}
    if args.working_dir:
        runtime_env["working_dir"] = str(args.working_dir)
    if args.env:
        bad = [e for e in args.env if "=" not in e]
        if bad:
            raise ValueError(f"--env needs KEY=VALUE, got {bad[0]!r}")
        runtime_env["env_vars"] = dict(e.split("=", 1) for e in args.env)
    job_id = jobs.submit(shlex.join(command), address=args.address, runtime_env=runtime_env or None,
                         submission_id=args.submission_id)
    print(f"submitted {job_id}")
    if not args.wait:
        return 0
    state = jobs.wait(job_id, address=args.address, timeout_s=args.timeout)
    sys.stdout.write(jobs.logs(job_id, address=args.address))
    print(state)
    return 0 if state.status == "SUCCEEDED" else 1


def _jobs_status(args) -> int:
    from labkit import jobs

    state = jobs.status(args.job_id, address=args.address)
    print(state)
    return 0 if state.status != "FAILED" else 1


def _jobs_logs(args) -> int:
    from labkit import jobs

    sys.stdout.write(jobs.logs(args.job_id, address=args.address))
    return 0


def _jobs_stop(args) -> int:
    from labkit import jobs

    print("stopping" if jobs.stop(args.job_id, address=args.address) else "already finished")
    return 0


def _jobs_list(args) -> int:
    from labkit import jobs

    for state in jobs.list_jobs(address=args.address):
        print(state)
    return 0
