"""Each lab's stated minutes against a full run of its code on this machine.

Run with ``python benchmarks/bench_lab_minutes.py [LAB ...]`` (default: every English lab). Each
lab runs headless in full (not smoke) mode through ``labkit run-notebooks``, as an instructor's
rehearsal would, with the exercises' solutions revealed. The time a person needs is that run's
compute plus reading and typing, so a lab whose compute alone takes more than about half its
stated minutes is marked: its minutes are too few, or its work too long, for a 2-core laptop.
Raw results go to ``runs/bench/lab_minutes.json``; a Markdown table is printed for
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
READING_SHARE = 0.5  # compute may take at most this share of the stated minutes


def stated_minutes(path: Path) -> int:
    first = nbformat.read(path, as_version=4).cells[0].source
    match = re.search(r"\*\*Expected time:\*\*\s*(\d+)\s*minutes", first)
    if not match:
        raise ValueError(f"{path.name}: no '**Expected time:** N minutes' in its first cell")
    return int(match.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labs", nargs="*", type=Path, help="notebooks (default: notebooks/en/*)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/bench/lab_minutes.json"))
    args = p.parse_args()

    from labkit.notebooks import find_notebooks, run_notebooks

    labs = args.labs or find_notebooks(REPO / "notebooks" / "en")
    rows = []
    for lab in labs:
        summary = run_notebooks([lab], profile=args.profile, smoke=False,
                                output_dir=args.out.parent / "lab_minutes" / lab.stem, timeout=3600)
        result = summary.results[0]
        minutes = stated_minutes(lab)
        rows.append({"lab": lab.stem, "status": result.status, "stated_min": minutes,
                     "compute_min": result.seconds / 60, "share": result.seconds / 60 / minutes})
        print(f"{lab.stem}: {result.status}, {result.seconds / 60:.1f} of {minutes} min", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                    "profile": args.profile, "rows": rows}, indent=1))
    print("\n| lab | stated minutes | full run's compute (min) | share of the stated time | |")
    print("|---|---|---|---|---|")
    for r in rows:
        flag = "ok" if r["status"] == "ok" and r["share"] <= READING_SHARE else (
            r["status"] if r["status"] != "ok" else "too long")
        print(f"| {r['lab']} | {r['stated_min']} | {r['compute_min']:.1f} | {r['share']:.0%} | {flag} |")


if __name__ == "__main__":
    main()
