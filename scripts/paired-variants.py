#!/usr/bin/env python3
"""Per-ordering differences of every method against one base method, from a results.json or
partial.json of `dualreplay run` (plain or gzipped): the final average F1 (routed and oracle, last
row of R), the buffer bytes used and the train seconds, paired by ordering seed.

Usage: scripts/paired-variants.py RESULTS.json[.gz] [--base dual-replay]

The runner's own paired tests compare Dual-Replay against the other kinds; variants of one kind
(ablations) are compared here. With two or three orderings the differences are printed per
ordering: no test is run on so few pairs.
"""
import argparse
import sys

from results_io import sequential_runs


def final_f1(matrix):
    row = matrix["f1"][-1]
    vals = [v for v in row if v is not None]
    if not vals:
        raise ValueError("a run has no final row")
    return 100 * sum(vals) / len(vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--base", default="dual-replay")
    a = ap.parse_args()
    runs = sequential_runs(a.results)
    by = {(r["method"], r["orderingSeed"]): r for r in runs}
    base = {s: r for (m, s), r in by.items() if m == a.base}
    if not base:
        sys.exit(f"{a.results}: no run of the base method {a.base!r}")
    methods = list(dict.fromkeys(r["method"] for r in runs))
    seeds = sorted(base)
    print(f"{a.results.split('/')[-1]}: against {a.base}, orderings {', '.join(map(str, seeds))}\n")
    print("| method | routed F1 | Δ routed per ordering | oracle F1 | Δ oracle per ordering | buffer bytes used | train s |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        pairs = [(by[(m, s)], base[s]) for s in seeds if (m, s) in by]
        if not pairs:
            continue
        routed, oracle = ([final_f1(r[mode]) for r, _ in pairs] for mode in ("routed", "oracle"))
        dr, do = ([x - final_f1(b[mode]) for x, (_, b) in zip(xs, pairs)] for xs, mode in ((routed, "routed"), (oracle, "oracle")))
        used = [r.get("bufferBytesUsed") for r, _ in pairs]
        train = [r["trainSeconds"] for r, _ in pairs]
        fmt = lambda xs: " / ".join(f"{x:+.1f}" for x in xs)
        mean = lambda xs: sum(xs) / len(xs)
        used_s = "-" if None in used else f"{min(used):,}–{max(used):,}"
        print(f"| {m} | {mean(routed):.1f} | {fmt(dr) if m != a.base else '-'} | {mean(oracle):.1f} | "
              f"{fmt(do) if m != a.base else '-'} | {used_s} | {' / '.join(f'{t:.0f}' for t in train)} |")


if __name__ == "__main__":
    main()
