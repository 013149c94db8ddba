#!/usr/bin/env python3
"""The whole-job bench (`make bench-job`): the CLINC150 Dual-Replay protocol with the current
defaults, ours and the plain-PyTorch reference, one after the other, at each thread count.

    python3 bench/job.py --variant full|reduced --bin .build/release/dualreplay --python REF_VENV/bin/python
                         [--threads 1,2] [--out build/bench-job] [--data DIR] [--model DIR] [--only ours,reference]
                         [--ours-variant NAME=CONFIG ...]

Standard library only (the reference runs in its own venv, as a child process). Per run: wall
time split by phase (SGD, router, quota validation, prototypes, evaluation, latency, I/O; ours
from `runs[0].timing` of its results.json when present, else "-"), train / eval seconds,
routed and oracle average F1, routed BWT, router accuracy and peak RSS (the child's ru_maxrss
from os.wait4). Prints a table with the ratio reference ÷ ours and writes <out>/job.json.
A ratio is only meaningful because both sides run here, now, back to back: the job records
the sitting (CPU model, boot id, host, load) with the figures.
"""
import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PHASES = ["sgd", "router", "quotaValidation", "prototypes", "evaluation", "latency", "io"]
PHASE_NAMES = {"sgd": "SGD", "router": "router", "quotaValidation": "quota validation", "prototypes": "prototypes",
               "evaluation": "evaluation", "latency": "latency samples", "io": "I/O"}


def sitting():
    cpu, boot = "unknown", "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        pass
    return {"cpuModel": cpu, "bootId": boot, "hostname": socket.gethostname(), "cores": os.cpu_count(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def run_child(cmd, log_path, env=None):
    """Runs cmd to completion with its output in log_path; returns wall seconds, peak RSS MiB, exit code."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except KeyboardInterrupt:
            p.kill()
            raise
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_maxrss / 1024, p.returncode


def matrix_metrics(f1):
    """Average F1 (mean of the last row) and BWT of an R matrix (rows of floats or None)."""
    T = len(f1)
    last = [x for x in f1[T - 1] if x is not None and not (isinstance(x, float) and math.isnan(x))]
    avg = sum(last) / len(last) if last else None
    bwt = sum(f1[T - 1][j] - f1[j][j] for j in range(T - 1)) / (T - 1) if T > 1 else 0.0
    return avg, bwt


def run_ours(args, cfg, threads, name, launcher=()):
    """`dualreplay run` of cfg into <out>/<name> (log <out>/<name>.log), started through launcher
    (e.g. mpirun and its flags) if given. Returns the record (command, exit code, wall time, peak
    RSS, load, F1 and BWT of the dual-replay run) and that run of results.json (None on failure)."""
    out_dir = os.path.join(args.out, name)
    cmd = list(launcher) + [args.bin, "run", "--config", cfg, "--threads", str(threads), "--out", out_dir]
    if args.model:
        cmd += ["--model", args.model]
    env = dict(os.environ)
    if args.data:
        env["DR_DATA"] = args.data
    if launcher:
        env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    os.makedirs(out_dir, exist_ok=True)
    load0 = load_average()
    wall, rss, rc = run_child(cmd, os.path.join(args.out, f"{name}.log"), env)
    rec = {"threads": threads, "command": cmd, "exitCode": rc, "wallSeconds": wall, "peakRssMiB": rss,
           "loadBefore": load0, "loadAfter": load_average()}
    if rc != 0:
        return rec, None
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    run = next(r for r in res["runs"] if r.get("kind") == "dual-replay")
    rec["routedF1"], rec["routedBWT"] = matrix_metrics(run["routed"]["f1"])
    rec["oracleF1"], rec["oracleBWT"] = matrix_metrics(run["oracle"]["f1"])
    rec["timing"] = run.get("timing")  # phases, when this build records them
    return rec, run


def ours(args, cfg, threads, side="ours"):
    rec, run = run_ours(args, cfg, threads, f"{side}-t{threads}")
    rec["side"] = side
    rec["config"] = os.path.relpath(cfg, REPO)
    if run is None:
        return rec
    rec["routerAccuracy"] = (run.get("routerAccuracy") or [None])[-1]
    rec["trainSeconds"], rec["evalSeconds"] = run.get("trainSeconds"), run.get("evalSeconds")
    rec["latencyP50ms"], rec["latencyP99ms"] = run.get("latencyP50ms"), run.get("latencyP99ms")
    return rec


def reference(args, cfg, threads):
    out_json = os.path.join(args.out, f"reference-t{threads}.json")
    cmd = [args.python, os.path.join(HERE, "reference", "dual_replay_reference.py"), "--config", cfg,
           "--threads", str(threads), "--out", out_json]
    if args.data:
        cmd += ["--data", args.data]
    if args.model:
        cmd += ["--model", args.model]
    if args.max_domains:
        cmd += ["--max-domains", str(args.max_domains)]
    load0 = load_average()
    wall, rss, rc = run_child(cmd, os.path.join(args.out, f"reference-t{threads}.log"))
    rec = {"side": "reference", "threads": threads, "command": cmd, "exitCode": rc, "wallSeconds": wall, "peakRssMiB": rss,
           "loadBefore": load0, "loadAfter": load_average()}
    if rc != 0:
        return rec
    with open(out_json) as f:
        res = json.load(f)
    rec["routedF1"], rec["routedBWT"] = res["routed"]["averageF1"], res["routed"]["backwardTransfer"]
    rec["oracleF1"], rec["oracleBWT"] = res["oracle"]["averageF1"], res["oracle"]["backwardTransfer"]
    rec["routerAccuracy"] = res["routerAccuracy"][-1]
    t = res["timing"]
    rec["timing"] = t
    # what ours calls train (DomainTrainer.learn) and eval (the R-matrix rows)
    rec["trainSeconds"] = t["sgd"] + t["quotaValidation"] + t["prototypes"] + t["router"]
    rec["evalSeconds"] = t["evaluation"]
    rec["latencyP50ms"] = (res.get("latency") or {}).get("p50ms")
    rec["latencyP99ms"] = (res.get("latency") or {}).get("p99ms")
    rec["sitting"] = res.get("sitting")
    return rec


def fmt(x, d=1):
    return "-" if x is None else f"{x:.{d}f}"


def table(records, threads_list):
    def get(side, t):
        return next((r for r in records if r["side"] == side and r["threads"] == t), None)

    # "ours" and every --ours-variant side, each with its ratio to the reference
    osides = [x for x in dict.fromkeys(r["side"] for r in records) if x != "reference"] or ["ours"]
    head = "| | " + " | ".join(" | ".join(f"{o} {t}T" for o in osides) + f" | reference {t}T | " +
                               " | ".join(f"ref ÷ {o} {t}T" for o in osides) for t in threads_list) + " |"
    lines = [head, "|---|" + "---|" * ((2 * len(osides) + 1) * len(threads_list))]

    def row(name, value, digits=1, ratio=True):
        cells = []
        for t in threads_list:
            r = get("reference", t)
            vr = value(r) if r and r["exitCode"] == 0 else None
            vos = []
            for o in osides:
                rec = get(o, t)
                vos.append(value(rec) if rec and rec["exitCode"] == 0 else None)
            cells += [fmt(v, digits) for v in vos] + [fmt(vr, digits)]
            cells += [fmt(vr / v if ratio and v and vr is not None else None, 2) for v in vos]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    extra = sorted({k for r in records for k in (r.get("timing") or {}) if k not in PHASES and k != "total"})
    for p in PHASES + extra:
        row(f"{PHASE_NAMES.get(p, p)} s", lambda r, p=p: (r.get("timing") or {}).get(p))
    row("phases total s", lambda r: (r.get("timing") or {}).get("total"))
    row("total wall s (child process)", lambda r: r["wallSeconds"])
    row("train s", lambda r: r.get("trainSeconds"))
    row("eval s", lambda r: r.get("evalSeconds"))
    pts = lambda k: (lambda r: None if r.get(k) is None else 100 * r[k])  # noqa: E731
    row("routed F1", pts("routedF1"), ratio=False)
    row("oracle F1", pts("oracleF1"), ratio=False)
    row("routed BWT", pts("routedBWT"), ratio=False)
    row("router acc %", pts("routerAccuracy"), ratio=False)
    row("latency p50 ms (1 thread)", lambda r: r.get("latencyP50ms"), 2)
    row("peak RSS MiB", lambda r: r["peakRssMiB"], 0)
    row("load avg before", lambda r: r.get("loadBefore"), 1, ratio=False)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=["full", "reduced"], default=os.environ.get("BENCH_JOB", "full"))
    ap.add_argument("--bin", default=os.path.join(REPO, ".build/release/dualreplay"))
    ap.add_argument("--python", required=True, help="the reference venv's python")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=os.path.join(REPO, "build/bench-job"))
    ap.add_argument("--data", default=os.environ.get("DR_DATA"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--only", default="ours,reference", help="which sides to run")
    ap.add_argument("--config", help="another config than bench/experiments/bench-job-<variant>.json (quick checks)")
    ap.add_argument("--max-domains", type=int, default=0, help="reference only: first K domains (a wiring check, not a comparison)")
    ap.add_argument("--ours-variant", action="append", default=[], metavar="NAME=CONFIG",
                    help="also run ours on CONFIG as side NAME, after ours at each thread count (e.g. bf16=bench/experiments/bench-job-full-bf16.json)")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)
    if args.data:
        args.data = os.path.abspath(args.data)
    if args.model:
        args.model = os.path.abspath(args.model)
    os.makedirs(args.out, exist_ok=True)
    cfg = os.path.abspath(args.config) if args.config else os.path.join(HERE, "experiments", f"bench-job-{args.variant}.json")
    threads_list = [int(t) for t in args.threads.split(",")]
    sides = args.only.split(",")
    job = {"variant": args.variant, "config": os.path.relpath(cfg, REPO), "sitting": sitting(), "runs": []}
    try:
        for t in threads_list:
            if "ours" in sides:
                job["runs"].append(ours(args, cfg, t))
            for v in args.ours_variant:
                name, _, vcfg = v.partition("=")
                job["runs"].append(ours(args, os.path.abspath(vcfg), t, side=f"ours-{name}"))
                with open(os.path.join(args.out, "job.json"), "w") as f:
                    json.dump(job, f, indent=1)
            if "reference" in sides:
                job["runs"].append(reference(args, cfg, t))
            with open(os.path.join(args.out, "job.json"), "w") as f:
                json.dump(job, f, indent=1)
    finally:
        job["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(os.path.join(args.out, "job.json"), "w") as f:
            json.dump(job, f, indent=1)
        s = job["sitting"]
        print(f"\nbench-job ({args.variant}, {job['config']}) on {s['hostname']}, {s['cpuModel']}, {s['cores']} cores, "
              f"boot {s['bootId']}, started {s['timestamp']}")
        for r in job["runs"]:
            if r["exitCode"] != 0:
                print(f"  {r['side']} at {r['threads']} threads FAILED (exit {r['exitCode']}): see {args.out}/{r['side']}-t{r['threads']}.log")
        print()
        print(table(job["runs"], threads_list))
        print(f"\nJSON: {os.path.join(args.out, 'job.json')}")


if __name__ == "__main__":
    main()
