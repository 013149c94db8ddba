#!/usr/bin/env python3
"""PyTorch and onnxruntime figures for `dr-bench --reference` (bench/reference/README.md).

    python step_reference.py [--threads 1,2] [--seconds 2] [--latency-runs 1000] [--data DIR] [--model DIR] [--out FILE]

JSON lines, the first one the `sitting` (CPU model, boot id, hostname, time), then:
- `train_step`: the Dual-Replay adapter training step (frozen MiniLM, gated bottleneck-64 adapter
  on every layer's output, two domains' heads, CE over the example's domain, backward, clip,
  AdamW) on the same 16 batches of 32 CLINC150 utterances dr-bench's train bench draws
  (travel + banking, the same SplitMix64 shuffle): `adapter-t16` with every sequence cut or
  refilled to exactly 16 tokens (the same 32 × 16 work as ours), `adapter` padded to each batch's
  longest sequence with an attention mask (what a plain PyTorch loop does). Median step over at
  least --seconds and 8 rounds, after warm-up.
- `encoder_latency`: one utterance at 1 thread (tokenize, forward, mean-pool, normalise) over the
  utterances dr-bench's encoder bench uses (CLINC150 without out-of-scope, file order, utterance
  (i · 7919) mod n, 50 warm-up), with torch eager and with onnxruntime on the same encoder
  exported to ONNX in a temporary directory; the two alternate per utterance (same load).
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm import GatedAdapter, MiniLM, WordPieceTokenizer, mean_pool, pad, sitting  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
M64 = (1 << 64) - 1


def splitmix(seed):
    state = seed

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
    return nxt


def clinc_rows(data_dir):
    with open(os.path.join(data_dir, "clinc150/clinc150.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_batches(rows, tok, batch, n_batches=16):
    """The train bench's batches (TrainBench.swift `loadTrainData` and its shuffle)."""
    domains, intents, examples = [], [], []
    for r in rows:
        if r["domain"] == "oos" or r["split"] != "train":
            continue
        if r["domain"] not in domains:
            if len(domains) == 2:
                continue
            domains.append(r["domain"])
            intents.append([])
        k = domains.index(r["domain"])
        if r["intent"] not in intents[k]:
            intents[k].append(r["intent"])
        examples.append((tok.encode(r["text"]), k, intents[k].index(r["intent"])))
    nxt = splitmix(2024)
    order = list(range(len(examples)))
    for i in range(len(order) - 1, 0, -1):
        j = nxt() % (i + 1)
        order[i], order[j] = order[j], order[i]
    picks = [examples[order[i % len(order)]] for i in range(n_batches * batch)]
    return [picks[b * batch:(b + 1) * batch] for b in range(n_batches)], [len(x) for x in intents], domains


def fixed_length(ids, n):
    body = ids[1:-1]
    return ids if not body else [ids[0]] + [body[i % len(body)] for i in range(n - 2)] + [ids[-1]]


def bench_train(enc, batches, n_intents, threads, seconds, fixed):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(7)
    adapter = GatedAdapter(enc.C, 64, list(range(enc.L)), gen)
    for _ in n_intents:
        adapter.add_domain(freeze_old=False)  # the bench trains both domains' gates, as ours
    heads_w = [torch.nn.Parameter(torch.randn(n, enc.C, generator=gen) * 0.02) for n in n_intents]
    heads_b = [torch.nn.Parameter(torch.zeros(n)) for n in n_intents]
    decay = [*adapter.down_w, *adapter.up_w, *heads_w]
    rest = [*adapter.down_b, *adapter.up_b, *heads_b, *[g for gs in adapter.gates for g in gs]]
    params = decay + rest
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-4)
    offsets = [sum(n_intents[:k]) for k in range(len(n_intents))]
    V = sum(n_intents)
    prepared = []
    for b in batches:
        seqs = [fixed_length(s, fixed) if fixed else s for s, _, _ in b]
        ids, mask = pad(seqs)
        dom = torch.tensor([k for _, k, _ in b])
        labels = torch.tensor([offsets[k] + c for _, k, c in b])
        lo = torch.tensor(offsets)[dom]
        hi = lo + torch.tensor(n_intents)[dom]
        cols = torch.arange(V)
        in_range = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
        prepared.append((ids, mask, dom, labels, in_range, int(mask.sum())))

    def step(p):
        ids, mask, dom, labels, in_range, _ = p
        pooled = mean_pool(enc(ids, mask, adapter, adapter.gate_rows(dom)), mask)
        logits = pooled @ torch.cat(heads_w).T + torch.cat(heads_b)
        loss = F.cross_entropy(logits.masked_fill(~in_range, float("-inf")), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for p in prepared[:4]:
        step(p)
    times, cpu = [], []
    start, i = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or i < 8:
        p = prepared[i % len(prepared)]
        c0, t0 = time.process_time(), time.perf_counter()
        step(p)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        i += 1
    med = sorted(times)[len(times) // 2]
    B = len(batches[0])
    return {"record": "train_step", "engine": "torch", "method": "adapter-t16" if fixed else "adapter", "threads": threads,
            "batch": B, "tokens": sum(p[5] for p in prepared) / len(prepared),
            "paddedTokens": sum(p[0].numel() for p in prepared) / len(prepared),
            "examplesPerSec": B / med, "stepMs": med * 1e3, "stepCpuMs": sorted(cpu)[len(cpu) // 2] * 1e3, "rounds": len(times),
            "note": "frozen MiniLM + gated adapter (R 64, 6 layers, output), CE over the domain, clip 1.0, AdamW"
                    + (f", every sequence {fixed} tokens" if fixed else ", padded to the batch's longest")}


class Embedder(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, ids, mask):
        return F.normalize(mean_pool(self.enc(ids, mask), mask), dim=-1)


def bench_latency(enc, tok, rows, runs):
    import numpy as np
    import onnxruntime as ort
    torch.set_num_threads(1)
    texts = [r["text"] for r in rows if r["domain"] != "oos"]
    model = Embedder(enc).eval()
    with tempfile.TemporaryDirectory(prefix="dr-ref-onnx-") as tmp:
        path = os.path.join(tmp, "minilm.onnx")
        ids, mask = pad([tok.encode(texts[0], cache=False)])
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter, on purpose
        with torch.no_grad():
            kw = dict(input_names=["ids", "mask"], output_names=["embedding"], opset_version=17,
                      dynamic_axes={"ids": {0: "B", 1: "T"}, "mask": {0: "B", 1: "T"}, "embedding": {0: "B"}})
            try:
                torch.onnx.export(model, (ids, mask), path, dynamo=False, **kw)
            except TypeError:
                torch.onnx.export(model, (ids, mask), path, **kw)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        t_torch, t_ort, tokens, diff = [], [], [], 0.0
        for i in range(runs + 50):
            text = texts[(i * 7919) % len(texts)]
            order = ("torch", "ort") if i % 2 == 0 else ("ort", "torch")
            out = {}
            for engine in order:
                t0 = time.perf_counter()
                s = tok.encode(text, cache=False)
                if engine == "torch":
                    with torch.no_grad():
                        a, m = pad([s])
                        out[engine] = model(a, m)[0].numpy()
                else:
                    a = np.array([s], dtype=np.int64)
                    out[engine] = sess.run(None, {"ids": a, "mask": np.ones_like(a)})[0][0]
                dt = time.perf_counter() - t0
                if i >= 50:
                    (t_torch if engine == "torch" else t_ort).append(dt * 1e3)
            if i >= 50:
                tokens.append(len(s))
                diff = max(diff, float(np.abs(out["torch"] - out["ort"]).max()))
    recs = []
    for engine, ts in (("torch", t_torch), ("onnxruntime", t_ort)):
        ts = sorted(ts)
        pct = lambda p: ts[min(len(ts) - 1, int(round((len(ts) - 1) * p)))]  # noqa: E731
        recs.append({"record": "encoder_latency", "engine": engine, "threads": 1, "runs": len(ts),
                     "tokens": sum(tokens) / len(tokens), "p50Ms": pct(0.5), "p99Ms": pct(0.99),
                     "note": f"tokenize+forward+pool+normalise, {len(ts)} runs after 50 warm-up, torch and onnxruntime "
                             f"alternating per utterance; largest |torch - onnxruntime| {diff:.1e}"
                             + (f"; onnxruntime {ort.__version__}" if engine == "onnxruntime" else f"; torch {torch.__version__}")})
    return recs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--latency-runs", type=int, default=1000)
    ap.add_argument("--only", default="train,latency")
    ap.add_argument("--data", default=os.environ.get("DR_DATA") or os.path.join(REPO, "../shared/data"))
    ap.add_argument("--model", default=os.environ.get("DR_MODEL") or os.path.join(REPO, "models/all-MiniLM-L6-v2"))
    ap.add_argument("--out")
    args = ap.parse_args()
    out = open(args.out, "w") if args.out else None

    def emit(rec):
        line = json.dumps(rec)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    emit(sitting())
    enc = MiniLM(args.model).eval()
    tok = WordPieceTokenizer(os.path.join(args.model, "vocab.txt"), max_length=256)
    rows = clinc_rows(args.data)
    only = set(args.only.split(","))
    if "train" in only:
        batches, n_intents, domains = train_batches(rows, tok, args.batch)
        for fixed in (16, None):
            for t in [int(x) for x in args.threads.split(",")]:
                rec = bench_train(enc, batches, n_intents, t, args.seconds, fixed)
                rec["note"] += f"; clinc150 train split, domains {'+'.join(domains)}"
                emit(rec)
    if "latency" in only:
        for rec in bench_latency(enc, tok, rows, args.latency_runs):
            emit(rec)
    emit({"record": "end", "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


if __name__ == "__main__":
    main()
