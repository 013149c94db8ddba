"""Checks the PyTorch snippet of docs/STATE.md against `dualreplay predict` on one export.

Not part of the test suite (it needs torch, transformers and safetensors, which the project does
not depend on). Usage, from the repository root:

    dualreplay export --state DIR --out /tmp/x/model.safetensors
    dualreplay predict --state DIR < texts.txt > predict.jsonl
    python bench/export_check.py /tmp/x/model.safetensors predict.jsonl [MODEL_DIR]

It runs the snippet exactly as the document shows it (only the file names and the model path are
substituted) and reports how many routed domains and intents agree with `dualreplay predict`.
"""
import json
import pathlib
import re
import sys


def snippet() -> str:
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "STATE.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    code = [b for b in blocks if "def predict(text)" in b]
    if len(code) != 1:
        sys.exit("docs/STATE.md: expected exactly one python block defining predict(text)")
    return code[0]


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    export, predictions = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    model_dir = sys.argv[3] if len(sys.argv) > 3 else "models/all-MiniLM-L6-v2"
    code = snippet()
    code = code.replace('"model.safetensors"', repr(str(export)))
    code = code.replace('"model.json"', repr(str(export.with_suffix(".json"))))
    code = code.replace('"sentence-transformers/all-MiniLM-L6-v2"', repr(model_dir))
    scope: dict = {}
    exec(compile(code, "docs/STATE.md", "exec"), scope)
    # predict answers every input line; lines it refused carry "error" and are not compared
    rows = [r for r in (json.loads(l) for l in predictions.read_text().splitlines() if l.strip()) if "error" not in r]
    same_domain = same_intent = 0
    for r in rows:
        domain, intent, _ = scope["predict"](r["text"])
        same_domain += domain == r["domain"]
        same_intent += domain == r["domain"] and intent == r["intent"]
    print(f"{len(rows)} utterances: domain agrees on {same_domain}, domain and intent on {same_intent}")
    if same_intent != len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
