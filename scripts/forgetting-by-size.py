#!/usr/bin/env python3
"""Where a method's backward transfer comes from, by domain size.

Reads an experiment's results.json (or partial.json, either possibly gzipped) and, per method, groups the domains of every
run by their number of training utterances (the largest `--head` domains of the scenario, then
the rest in equal-count bins by size) and prints, in routed and oracle mode, the mean F1 of a
domain just after it was learned (R[j][j]), at the end (R[T-1][j]) and the change: a positive
change is backward transfer, a negative one forgetting. The last domain of a run is left out
(it has no "after"). Runs without an R matrix (the single reference) are skipped.

    python3 scripts/forgetting-by-size.py results/synthetic52/results.json --head 4 --bins 3
"""
import argparse
import statistics

from results_io import sequential_runs


def cells(run, mode):
    """(domain name, train utterances, F1 just after learning, final F1) per domain but the last."""
    m = run.get(mode) or {}
    f1, names = m.get("f1") or [], m.get("domains") or run.get("domains") or []
    sizes = run.get("trainExamples") or []
    if len(f1) < 2 or len(sizes) != len(names):
        return []
    last = f1[-1]
    out = []
    for j in range(len(f1) - 1):
        diag, final = f1[j][j], last[j]
        if diag is None or final is None:
            continue
        out.append((names[j], sizes[j], diag, final))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="results.json or partial.json of a run (.gz too)")
    ap.add_argument("--head", type=int, default=4, help="the largest domains counted as the head (default 4)")
    ap.add_argument("--bins", type=int, default=2, help="equal-count size bins for the other domains (default 2)")
    a = ap.parse_args()
    runs = sequential_runs(a.results)
    # the size classes come from the scenario (every run has the same domains, in another order)
    sizes = {}
    for r in runs:
        for n, s in zip(r.get("domains", []), r.get("trainExamples", [])):
            sizes[n] = s
    ranked = sorted(sizes, key=lambda n: (-sizes[n], n))
    cls = {n: "head" for n in ranked[: a.head]}
    rest = ranked[a.head:]
    for b in range(a.bins):
        part = rest[b * len(rest) // a.bins:(b + 1) * len(rest) // a.bins]
        if part:
            label = f"{sizes[part[-1]]}-{sizes[part[0]]} utterances"
            for n in part:
                cls[n] = label
    order = ["head"] + list(dict.fromkeys(cls[n] for n in rest))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    print(f"{a.results}: {len(sizes)} domains; head = the {a.head} largest ({', '.join(f'{sizes[n]}' for n in ranked[:a.head])} utterances)\n")
    print("| method | mode | domains | runs | F1 just after learning | final F1 | change (BWT share) |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        mr = [r for r in runs if r["method"] == m]
        for mode in ("routed", "oracle"):
            for c in order:
                rows = [x for r in mr for x in cells(r, mode) if cls.get(x[0]) == c]
                if not rows:
                    continue
                d = statistics.mean(x[2] for x in rows) * 100
                f = statistics.mean(x[3] for x in rows) * 100
                print(f"| {m} | {mode} | {c} | {len(mr)} | {d:.1f} | {f:.1f} | {f - d:+.1f} |")


if __name__ == "__main__":
    main()
