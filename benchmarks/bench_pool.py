"""A static split against a shared elastic pool, on the same load curves, measured in one run.

Run with ``.venv/bin/python benchmarks/bench_pool.py`` (2 modes x 2 rounds per curve; see the
end of this docstring for how long). ``labkit.pool_experiment.run_pool`` runs each:
a pool of 4 logical GPUs (one Ray node each, on Ray's autoscaling cluster), an inference service
whose replica holds one GPU for ``service_s`` = 0.25 s per request (capacity 4 req/s each), a
data-parallel training job stepping every ``step_s`` = 0.2 s; see its docstring for what is real
and what stands in for hardware.

- **static**: 2 replicas and 2 training workers, fixed.
- **shared**: inference 1 to 3 replicas (Serve's autoscaler, target 1 ongoing request), training 1
  to 3 workers (Ray Train's elastic mode), inference reserved first (``InferenceFirst``).

Three curves: quiet 20 s at 1 req/s, a 40 s peak, quiet 50 s at 1 req/s, with a peak of 6 req/s
(``fits`` in the static half: 2 replicas serve 8 req/s) or of 10 req/s (``exceeds`` it); and a
``day`` more like a real one, mostly quiet: 120 s at 1 req/s, 60 s at 8 req/s (exactly the static
half's capacity), 120 s at 1 req/s. Each round draws its own
Poisson arrivals (seed = round), the same for both modes. Printed per run: utilisation, SLO
attainment (1 s), training samples, and for the shared pool the reaction times; then, per curve,
the medians [ranges] of shared / static. Raw runs go to ``runs/bench/pool_<curves>.json`` and the last
round's timelines to ``docs/img/pool_<curve>.png``. The default, all three curves, takes about
45 minutes; ``--curves day`` about 20.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit.pool_experiment import plot_pool, run_pool, summarize  # noqa: E402

CURVES = {"fits": [(20, 1.0), (40, 6.0), (50, 1.0)], "exceeds": [(20, 1.0), (40, 10.0), (50, 1.0)],
          "day": [(120, 1.0), (60, 8.0), (120, 1.0)]}
KEYS = ("utilisation", "slo_attainment", "peak_slo_attainment", "training_samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--curves", nargs="+", choices=sorted(CURVES), default=["fits", "exceeds", "day"])
    parser.add_argument("--gpus", type=int, default=4)
    args = parser.parse_args()
    out_dir = REPO / "runs" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for curve_name in args.curves:
        curve, rows = CURVES[curve_name], []
        for r in range(args.rounds):
            runs = {}
            for mode in ("static", "shared"):  # alternate, so drift hits both
                runs[mode] = run_pool(mode, gpus=args.gpus, curve=curve, seed=r, progress=False)
                s = summarize(runs[mode])
                print(f"{curve_name} round {r} {mode:6s}: utilisation {s['utilisation']:.2f}, SLO met "
                      f"{s['slo_attainment']:.2f} (peak {s['peak_slo_attainment']:.2f}), "
                      f"p50 {s['p50_latency_s']:.2f} s, "
                      f"{s['training_samples']} samples, {s['restarts']} restarts, {s['errors']} errors"
                      + (f", replica up {s['scale_up_s']:.1f} s after the step, training whole again "
                         f"{s['training_back_s']:.1f} s after the drop"
                         if mode == "shared" and s["scale_up_s"] is not None and s["training_back_s"] is not None
                         else ""), flush=True)
            rows.append({mode: summarize(run) for mode, run in runs.items()})
            results.setdefault(curve_name, {"curve": curve, "rounds": []})["rounds"].append(
                {"summaries": rows[-1], "runs": runs})
        fig = plot_pool([runs["static"], runs["shared"]], title=f"peak of {max(r for _, r in curve):g} req/s")
        fig.savefig(REPO / "docs" / "img" / f"pool_{curve_name}.png", dpi=110)
        print(f"\n{curve_name}: shared / static, median [range] of {args.rounds} rounds")
        for key in KEYS:
            ratios = [row["shared"][key] / row["static"][key] for row in rows if row["static"][key]]
            if ratios:
                print(f"  {key:20s} {statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]")
        for key in ("scale_up_s", "training_back_s"):
            values = [row["shared"][key] for row in rows if row["shared"].get(key) is not None]
            if values:
                print(f"  {key:20s} {statistics.median(values):.1f} s [{min(values):.1f}, {max(values):.1f}]")
    (out_dir / f"pool_{'_'.join(args.curves)}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
