"""Reading a `dualreplay run` results.json or partial.json (plain or gzipped) for the analysis
scripts beside this file."""
import gzip
import json
import sys

REFERENCE_KINDS = ("joint", "single")


def sequential_runs(path):
    """The runs of the sequential methods (the references left out); exits naming the file when it
    cannot be read or holds none."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            doc = json.load(f)
    except (OSError, EOFError, ValueError) as e:
        sys.exit(f"{path}: {e}")
    runs = [r for r in doc.get("runs", []) if r.get("kind") not in REFERENCE_KINDS]
    if not runs:
        sys.exit(f"{path}: no sequential run with an R matrix")
    return runs
