#!/usr/bin/env python3
"""Ranks against threads on the reduced CLINC150 job (`make bench-mpi`): the same data-parallel
config (bench/experiments/bench-mpi-reduced.json: the reduced bench-job with gradientChunk 8) as
1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x 1 thread (mpirun), one after the other.

    python3 bench/mpi_job.py --bin .build/release/dualreplay [--layouts 1x1,1x2,2x1] [--out build/bench-mpi]
                             [--model DIR] [--data DIR] [--mpirun mpirun]

Per layout: wall time, phases (runs[0].timing, with `communication`: the seconds the ranks spent
gathering chunk gradients and sharded inference outputs, part of the phases it happens in), F1,
peak RSS of the launcher's children (for mpirun: the largest rank); then per training step (from
runs[0].communication): the step's wall time, its communication and the bytes each rank received.
The R matrices of every layout must be identical (the reduction is in chunk order whatever the layout): the script says whether
they are. Writes <out>/mpi.json with the sitting (CPU, boot id, load).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import job  # noqa: E402  (sitting, run_ours)

CONFIG = os.path.join(job.REPO, "bench", "experiments", "bench-mpi-reduced.json")


def run_layout(args, ranks, threads):
    launcher = []
    if ranks > 1:
        launcher = [args.mpirun, "-np", str(ranks), "--bind-to", "core", "--oversubscribe"]
        if os.geteuid() == 0:
            launcher.append("--allow-run-as-root")
    rec, run = job.run_ours(args, CONFIG, threads, f"{ranks}x{threads}", launcher)
    rec.update(layout=f"{ranks}x{threads}", ranks=ranks)
    if run is None:
        return rec, None
    rec["communication"] = run.get("communication")
    return rec, {k: run[k]["f1"] for k in ("routed", "oracle", "routedAccuracy", "oracleAccuracy")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--layouts", default="1x1,1x2,2x1")
    ap.add_argument("--out", default="build/bench-mpi")
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--mpirun", default="mpirun")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    records, first, same = [], None, True
    for layout in args.layouts.split(","):
        ranks, threads = (int(x) for x in layout.split("x"))
        rec, matrices = run_layout(args, ranks, threads)
        records.append(rec)
        if matrices is not None:
            if first is None:
                first = matrices
            elif matrices != first:
                same = False
    phases = ["sgd", "communication", "router", "quotaValidation", "prototypes", "evaluation", "total"]
    print("\n| layout | wall s | " + " | ".join(phases) + " | routed / oracle F1 | peak RSS MiB |")
    print("|---|---|" + "---|" * len(phases) + "---|---|")
    for r in records:
        t = r.get("timing") or {}
        cells = [f"{t[p]:.1f}" if isinstance(t.get(p), (int, float)) else "-" for p in phases]
        f1 = f"{100 * r['routedF1']:.1f} / {100 * r['oracleF1']:.1f}" if r.get("routedF1") is not None else f"exit {r['exitCode']}"
        print(f"| {r['layout']} | {r['wallSeconds']:.1f} | " + " | ".join(cells) + f" | {f1} | {r['peakRssMiB']:.0f} |")
    print("\nPer training step (SGD phase / gathered steps; communication: the failure agreement, the gradients'")
    print("all-gather and the parameter-hash check, waiting for the slowest rank included):\n")
    print("| layout | steps | step ms | communication ms per step | share of the step | received per step KiB |"
          " inference gathers | their s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        c, t = r.get("communication") or {}, r.get("timing") or {}
        steps = c.get("gradientSteps") or 0
        if not steps or not t.get("sgd"):
            print(f"| {r['layout']} | - | - | - | - | - | - | - |")
            continue
        step_ms, comm_ms = 1000 * t["sgd"] / steps, 1000 * c["gradientSeconds"] / steps
        print(f"| {r['layout']} | {steps} | {step_ms:.1f} | {comm_ms:.2f} | {100 * comm_ms / step_ms:.1f}% |"
              f" {c['gradientBytes'] / steps / 1024:.0f} | {c.get('inferencePasses', 0)} | {c.get('inferenceSeconds', 0):.1f} |")
    print(f"\nR matrices identical across layouts: {'yes' if same and first is not None else 'NO'}")
    with open(os.path.join(args.out, "mpi.json"), "w") as f:
        json.dump({"sitting": job.sitting(), "config": os.path.relpath(CONFIG, job.REPO), "identical": same and first is not None,
                   "records": records}, f, indent=2)
    return 0 if same and all(r["exitCode"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
