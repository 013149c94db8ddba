#!/usr/bin/env python3
"""The side-by-side PyTorch reference of DualReplay's `dual-replay` method with its current defaults.

Plain PyTorch (bench/reference/README.md says what it implements and where it differs from ours):
the frozen all-MiniLM-L6-v2 (minilm.py), ONE shared bottleneck adapter per layer (384->64->384 on
each layer's output, residual) whose bottleneck is scaled by a learned per-domain gate, one head
per domain, the dual-stream replay buffer under the same byte budget, and the domain router (MLP
+ fused intent prototypes) that picks the gate at inference. Same data, rows and caps as
`dualreplay run --config FILE` (the config is read from the same file), same epochs, batch and
learning-rate schedule.

    python dual_replay_reference.py [--config bench/experiments/bench-job-full.json | --reduced]
        [--threads T] [--data DIR] [--model DIR] [--max-domains K] [--out FILE] [--token-ids FILE]

Prints one JSON object (phase seconds, routed/oracle R matrices, average F1, BWT, peak RSS) and
writes it to --out.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minilm import MiniLM, WordPieceTokenizer, mean_pool, pad, peak_rss_mib, sitting, GatedAdapter  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CHUNK = 64  # rows per inference pass (ours: `inferenceChunk`)

# ---------------------------------------------------------------------------------------------
# The project's generator and the draws that choose rows, written out so that the reference
# trains and scores exactly the same utterances (Support/Random.swift, Support/Hashing.swift).

M64 = (1 << 64) - 1


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class SplitMix64:
    def __init__(self, seed, stream=None):
        self.state = seed & M64 if stream is None else mix64((seed ^ mix64((stream + 0x632BE59BD9B4E019) & M64)) & M64)

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        return mix64(self.state)

    def below(self, n):
        """Lemire's multiply-shift with rejection (`stableIndex(below:)`, and Swift's `next(upperBound:)`)."""
        p = self.next() * n
        if (p & M64) < n:
            t = ((1 << 64) - n) % n
            while (p & M64) < t:
                p = self.next() * n
        return p >> 64

    def unit(self):
        return (self.next() >> 11) * 2.0 ** -53


def swift_shuffled(xs, rng):
    """Swift's `shuffled(using:)` (the standard library's Fisher-Yates, front to back)."""
    xs = list(xs)
    amount, i = len(xs), 0
    while amount > 1:
        j = i + rng.below(amount)
        amount -= 1
        xs[i], xs[j] = xs[j], xs[i]
        i += 1
    return xs


def stable_shuffle(xs, rng):
    """`stableShuffle(using:)` (back to front), in place."""
    i = len(xs) - 1
    while i > 0:
        j = rng.below(i + 1)
        xs[i], xs[j] = xs[j], xs[i]
        i -= 1


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def fixed_subset(rows, cap, seed):
    if cap is None or len(rows) <= cap:
        return rows
    return swift_shuffled(rows, SplitMix64(seed))[:cap]


def swift_round(x):
    """Swift's `.rounded()`: to nearest, halves away from zero."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


# ---------------------------------------------------------------------------------------------
# data: the scenario exactly as ExperimentSetup builds it for one JSONL file


class Domain:
    def __init__(self, name):
        self.name, self.train, self.val, self.test = name, [], [], []
        self.intents, self.offset = [], 0


def load_scenario(cfg, data_dir):
    files = cfg["data"].get("files") or []
    if len(files) != 1 or any(k not in ("path", "excludeDomains", "domains") for k in files[0]):
        sys.exit("dual_replay_reference: only one data file with at most `excludeDomains` and `domains` is supported")
    exclude = set(files[0].get("excludeDomains", ["oos"]))
    path = files[0]["path"] if files[0]["path"].startswith("/") else os.path.join(data_dir, files[0]["path"])
    domains = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            intents = [r["intent"]] if "intents" not in r else r["intents"]
            intents = [i for x in intents for i in x.split("#") if i]
            if r["domain"] in exclude or not intents or len(intents) > 1:
                continue
            d = domains.setdefault(r["domain"], Domain(r["domain"]))
            getattr(d, r["split"]).append((r["text"], intents[0]))
    out = list(domains.values())
    if "domains" in files[0]:
        out = [domains[name] for name in files[0]["domains"]]
    cap = cfg["data"].get("maxTrainPerDomain")
    for d in out:
        d.intents = sorted({i for _, i in d.train})
        if cap is not None and len(d.train) > cap:  # stratified round-robin (`subsampleTrain`)
            by = {}
            for row in d.train:
                by.setdefault(row[1], []).append(row)
            kept, i = [], 0
            while len(kept) < cap:
                added = False
                for intent in d.intents:
                    rows = by.get(intent, [])
                    if i < len(rows) and len(kept) < cap:
                        kept.append(rows[i])
                        added = True
                if not added:
                    break
                i += 1
            d.train = kept  # the intents stay those of the whole training split, as ours
    seed = cfg.get("orderingSeeds", [0])[0]
    if seed != 0:
        stable_shuffle(out, SplitMix64(seed))
    off = 0
    for d in out:
        d.offset = off
        off += len(d.intents)
    ecap = cfg["data"].get("maxEvalPerDomain")
    split = cfg.get("evalSplit", "test")
    for d in out:
        d.val_rows = fixed_subset(d.val, ecap, fnv1a(d.name))
        d.eval_rows = fixed_subset(d.test if split == "test" else d.val, ecap, fnv1a(d.name))
    general_path = os.path.join(data_dir, cfg["data"].get("general", "general/general.jsonl"))
    general = []
    if os.path.exists(general_path):
        with open(general_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if r.get("split", "train") == "train":
                        general.append(r["text"])
    return out, general, seed


# ---------------------------------------------------------------------------------------------
# replay: the byte-accounted reservoir and the dual-stream buffer (Replay/*.swift)


def item_bytes(ids, logits=None):
    return 4 * len(ids) + 8 + (4 * len(logits) if logits is not None else 0) + 16


class Reservoir:
    """Reservoir sampling under a byte budget (the general stream)."""

    def __init__(self, budget, seed):
        self.budget, self.rng, self.items, self.used, self.seen = budget, SplitMix64(seed), [], 0, 0

    def add(self, ids):
        self.seen += 1
        size = item_bytes(ids)
        if size > self.budget:
            return
        if self.used + size <= self.budget:
            self.items.append(ids)
            self.used += size
            return
        if self.rng.below(self.seen) >= len(self.items):
            return
        while self.used + size > self.budget:
            v = self.rng.below(len(self.items))
            self.used -= item_bytes(self.items[v])
            self.items[v], self.items[-1] = self.items[-1], self.items[v]
            self.items.pop()
        self.items.append(ids)
        self.used += size

    def sample(self, n, gen):
        k = min(n, len(self.items))
        return [self.items[i] for i in torch.randperm(len(self.items), generator=gen)[:k].tolist()]


class DualStream:
    """The domain stream (labelled items with their logits, per-domain quotas from forgetting,
    class-balanced eviction) and the general stream, under one byte budget."""

    def __init__(self, budget, domain_fraction=0.7, floor_weight=0.2, sampling_floor=0.2, ema=0.5, seed=0):
        self.domain_budget = min(budget, max(0, int(math.floor(budget * domain_fraction + 1e-6))))
        self.general = Reservoir(budget - self.domain_budget, mix64(seed ^ 0x67656E6572616C21))
        self.phi, self.psi, self.alpha = floor_weight, sampling_floor, ema
        self.rng = SplitMix64(seed, stream=0)
        self.slots = []  # dicts: domain, items [(ids, label, logits)], largest, ema, weight, sampling, quota

    def _forgetting(self, idx):
        measured = [max(0.0, s["ema"]) for s in self.slots if s["ema"] is not None]
        prior = sum(measured) / len(measured) if measured else 0.0
        return [max(0.0, self.slots[i]["ema"] if self.slots[i]["ema"] is not None else prior) for i in idx]

    @staticmethod
    def _floored(f, floor):
        n, s = len(f), sum(f)
        return [floor / n + (1 - floor) * (x / s if s > 0 else 1 / n) for x in f]

    @staticmethod
    def _water_fill(w, floors, budget):
        n = len(w)
        fixed, shares = [False] * n, [0.0] * n
        while True:
            remaining = budget - sum(floors[i] for i in range(n) if fixed[i])
            free = [i for i in range(n) if not fixed[i]]
            if not free:
                break
            fw = sum(w[i] for i in free)
            moved = False
            for i in free:
                shares[i] = w[i] / fw * remaining if fw > 0 else remaining / len(free)
                if shares[i] < floors[i]:
                    fixed[i], moved = True, True
            if not moved:
                break
        return [floors[i] if fixed[i] else max(floors[i], int(math.floor(shares[i]))) for i in range(n)]

    def _recompute(self):
        if not self.slots:
            return
        w = self._floored(self._forgetting(range(len(self.slots))), self.phi)
        q = self._water_fill(w, [s["largest"] for s in self.slots], self.domain_budget)
        for s, wi, qi in zip(self.slots, w, q):
            s["weight"], s["quota"] = wi, qi
        active = [i for i, s in enumerate(self.slots) if s["items"]]
        for s in self.slots:
            s["sampling"] = 0.0
        if active:
            for i, sw in zip(active, self._floored(self._forgetting(active), self.psi)):
                self.slots[i]["sampling"] = sw

    def update_forgetting(self, forgetting):
        for s in self.slots:
            v = forgetting.get(s["domain"])
            if v is not None and math.isfinite(v):
                s["ema"] = v if s["ema"] is None else self.alpha * v + (1 - self.alpha) * s["ema"]
        self._recompute()

    def _evict(self, items, cap):
        size = sum(item_bytes(i[0], i[2]) for i in items)
        if size <= cap:
            return items
        labels = sorted({i[1] for i in items})
        pos = {l: p for p, l in enumerate(labels)}
        pools, pool_bytes = [[] for _ in labels], [0] * len(labels)
        for k, it in enumerate(items):
            pools[pos[it[1]]].append(k)
            pool_bytes[pos[it[1]]] += item_bytes(it[0], it[2])
        for p in pools:
            stable_shuffle(p, self.rng)
        removed = set()
        while size > cap:
            best = -1
            for p in range(len(pools)):
                if pools[p] and (best < 0 or len(pools[p]) > len(pools[best])
                                 or (len(pools[p]) == len(pools[best]) and pool_bytes[p] > pool_bytes[best])):
                    best = p
            if best < 0:
                break
            v = pools[best].pop()
            removed.add(v)
            b = item_bytes(items[v][0], items[v][2])
            size -= b
            pool_bytes[best] -= b
        return [it for k, it in enumerate(items) if k not in removed]

    def add_domain(self, domain, items, forgetting):
        largest = max((item_bytes(i[0], i[2]) for i in items), default=0)
        self.update_forgetting(forgetting)
        self.slots.append({"domain": domain, "items": [], "largest": largest, "ema": None, "weight": 0.0,
                           "sampling": 0.0, "quota": 0})
        self._recompute()
        for s in self.slots[:-1]:
            s["items"] = self._evict(s["items"], s["quota"])
        others = sum(item_bytes(i[0], i[2]) for s in self.slots[:-1] for i in s["items"])
        self.slots[-1]["items"] = self._evict(items, self.domain_budget - others)  # the newest borrows slack
        self._recompute()

    def sample(self, n, gen):
        """n domain-stream items: a domain by its sampling weight, then items of it uniformly."""
        active = [s for s in self.slots if s["items"] and s["sampling"] > 0]
        if n <= 0 or not active:
            return []
        w = torch.tensor([s["sampling"] for s in active], dtype=torch.float64)
        draws = torch.bincount(torch.multinomial(w, n, replacement=True, generator=gen), minlength=len(active)).tolist()
        out = []
        for s, k in zip(active, draws):
            while k > 0:
                take = min(k, len(s["items"]))
                out += [s["items"][i] for i in torch.randperm(len(s["items"]), generator=gen)[:take].tolist()]
                k -= take
        return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]

    def items_before(self, k):
        return [it for s in self.slots if s["domain"] < k for it in s["items"]]

    def ledger(self):
        return [{"domain": s["domain"], "items": len(s["items"]), "quota": s["quota"], "forgetting": s["ema"]}
                for s in self.slots]


# ---------------------------------------------------------------------------------------------
# the learner


def lr_at(step, total, peak, warmup=0.06):
    """Linear warm-up over ceil(6%) of the phase, then linear decay (`OptimizerConfig.learningRate`)."""
    total = max(total, 1)
    warm = math.ceil(warmup * total)
    if warm > 0 and step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, 1 - (step - warm) / max(total - warm, 1))


def macro_f1(pred, gold, classes):
    idx = {c: i for i, c in enumerate(classes)}
    tp, fp, fn = [0] * len(classes), [0] * len(classes), [0] * len(classes)
    for p, y in zip(pred, gold):
        if p == y:
            if y in idx:
                tp[idx[y]] += 1
        else:
            if p in idx:
                fp[idx[p]] += 1
            if y in idx:
                fn[idx[y]] += 1
    scores = [2 * tp[i] / (2 * tp[i] + fp[i] + fn[i]) for i in range(len(classes)) if 2 * tp[i] + fp[i] + fn[i] > 0]
    return sum(scores) / len(scores) if scores else 0.0


class Learner:
    def __init__(self, enc, gen, bottleneck=64, router_hidden=256):
        self.enc, self.gen = enc, gen
        C = enc.C
        self.adapter = GatedAdapter(C, bottleneck, list(range(enc.L)), gen)
        self.heads_w, self.heads_b = torch.nn.ParameterList(), torch.nn.ParameterList()
        self.domains = []  # (offset, n)
        # router: Linear(C,Hd) -> GELU -> dropout 0.1 -> Linear(Hd,K); one output row per domain
        self.r_w1 = torch.nn.Parameter(torch.randn(router_hidden, C, generator=gen) / C ** 0.5)
        self.r_b1 = torch.nn.Parameter(torch.zeros(router_hidden))
        self.r_w2, self.r_b2 = torch.nn.ParameterList(), torch.nn.ParameterList()
        self.protos = torch.zeros(0, C)
        decay = [*self.adapter.down_w, *self.adapter.up_w]
        no_decay = [*self.adapter.down_b, *self.adapter.up_b]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                     lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
        self.r_opt = torch.optim.AdamW([{"params": [self.r_w1], "weight_decay": 0.01}, {"params": [self.r_b1], "weight_decay": 0.0}],
                                       lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
        self.frozen_cache = {}

    @property
    def V(self):
        return sum(n for _, n in self.domains)

    def add_domain(self, n):
        k = len(self.domains)
        self.domains.append((self.V, n))
        gates = self.adapter.add_domain(freeze_old=True)
        w = torch.nn.Parameter(torch.randn(n, self.enc.C, generator=self.gen) * 0.02)
        b = torch.nn.Parameter(torch.zeros(n))
        self.heads_w.append(w)
        self.heads_b.append(b)
        self.opt.add_param_group({"params": [w], "weight_decay": 0.01})
        self.opt.add_param_group({"params": [*gates, b], "weight_decay": 0.0})
        rw = torch.nn.Parameter(torch.randn(1, self.r_w1.shape[0], generator=self.gen) / self.r_w1.shape[0] ** 0.5)
        rb = torch.nn.Parameter(torch.zeros(1))
        self.r_w2.append(rw)
        self.r_b2.append(rb)
        self.r_opt.add_param_group({"params": [rw], "weight_decay": 0.01})
        self.r_opt.add_param_group({"params": [rb], "weight_decay": 0.0})
        self.protos = torch.cat([self.protos, torch.zeros(n, self.enc.C)])
        return k

    def domain_of(self, label):
        """The domain index of a global class."""
        for k, (o, n) in enumerate(self.domains):
            if o <= label < o + n:
                return k
        raise ValueError(label)

    def trainable(self):
        return [p for g in self.opt.param_groups for p in g["params"] if p.requires_grad]

    # -- passes
    def logits(self, seqs, gate_ids):
        """(B,V) logits of every seen class under each sequence's gate."""
        ids, mask = pad(seqs)
        g = torch.tensor(gate_ids, dtype=torch.long)
        pooled = mean_pool(self.enc(ids, mask, self.adapter, self.adapter.gate_rows(g)), mask)
        return pooled @ torch.cat(list(self.heads_w)).T + torch.cat(list(self.heads_b)), pooled

    @torch.no_grad()
    def logits_nograd(self, seqs, gate_ids):
        out = [self.logits(seqs[i:i + CHUNK], gate_ids[i:i + CHUNK])[0] for i in range(0, len(seqs), CHUNK)]
        return torch.cat(out) if out else torch.zeros(0, self.V)

    @torch.no_grad()
    def frozen(self, seqs):
        """Frozen encoder's mean-pooled last layer (B,C): router features, prototypes and anchoring
        targets. Cached: frozen features never change."""
        miss = [s for s in dict.fromkeys(map(tuple, seqs)) if s not in self.frozen_cache]
        for i in range(0, len(miss), CHUNK):
            part = [list(s) for s in miss[i:i + CHUNK]]
            ids, mask = pad(part)
            for s, f in zip(miss[i:i + CHUNK], mean_pool(self.enc(ids, mask), mask)):
                self.frozen_cache[s] = f
        return torch.stack([self.frozen_cache[tuple(s)] for s in seqs])

    def router_logits(self, x, dropout=False):
        h = F.dropout(F.gelu(F.linear(x, self.r_w1, self.r_b1)), 0.1, training=dropout)
        return F.linear(h, torch.cat(list(self.r_w2)), torch.cat(list(self.r_b2)))

    @torch.no_grad()
    def route(self, feats):
        """Domain of each feature row: MLP logits + 2·log p_proto (fused prototypes, τ = 0.02)."""
        K = len(self.domains)
        if K == 1:
            return torch.zeros(len(feats), dtype=torch.long)
        s = F.normalize(feats, dim=-1) @ F.normalize(self.protos, dim=-1).T / 0.02  # (B,V); a zero prototype scores 0
        lz = torch.logsumexp(s, dim=-1, keepdim=True)
        lp = torch.stack([torch.logsumexp(s[:, o:o + n], dim=-1) for o, n in self.domains], dim=-1) - lz
        return (self.router_logits(feats) + 2 * lp.clamp_min(-1e4)).argmax(-1)


def predict_in(logits, offset, n):
    return (logits[:, offset:offset + n].argmax(-1) + offset).tolist()


def run(args):
    phases = dict.fromkeys(["sgd", "router", "quotaValidation", "prototypes", "evaluation", "latency", "io"], 0.0)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        cfg = json.load(f)
    methods = cfg.get("methods", [])
    if len(methods) != 1 or methods[0] != {"kind": "dual-replay"}:
        sys.exit("dual_replay_reference: the config must hold exactly one method, {\"kind\": \"dual-replay\"} (the defaults)")
    tr = cfg.get("training", {})
    epochs, batch, lr = tr.get("epochs", 3), tr.get("batchSize", 32), tr.get("learningRate", 1e-3)
    domains, general_texts, seed = load_scenario(cfg, args.data)
    tok = WordPieceTokenizer(os.path.join(args.model, "vocab.txt"), max_length=tr.get("maxLength", 64))
    if args.token_ids:  # ids our binary wrote (`dualreplay embed`): both sides then read the same ids
        with open(args.token_ids) as f:
            for line in f:
                o = json.loads(line)
                ids = o["input_ids"]
                tok.cache[o["text"]] = ids if len(ids) <= tok.max_length else ids[: tok.max_length - 1] + [tok.sep]
    enc = MiniLM(args.model)
    if tr.get("frozenPrecision", "fp32") == "bf16":
        enc.use_bf16()
    enc.eval()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the router's dropout draws from the global generator
    for d in domains:
        d.train_ids = [tok.encode(t) for t, _ in d.train]
        d.train_labels = [d.offset + d.intents.index(i) for _, i in d.train]
    # the byte budget: bufferExamples (1000) stored examples of the whole scenario's mean size
    all_train = [s for d in domains for s in d.train_ids]
    budget = swift_round(1000 * (4 * sum(map(len, all_train)) / max(len(all_train), 1) + 8 + 16))
    if args.max_domains:  # after the budget: a quick check keeps the full protocol's budget
        domains = domains[: args.max_domains]
    dual = DualStream(budget, seed=seed)
    # the general stream: general text, shuffled by the learner's generator, 4000 offered to its reservoir
    for t in swift_shuffled(general_texts, SplitMix64((seed + 0x5EED) & M64))[:4000]:
        dual.general.add(tok.encode(t))
    phases["io"] += time.perf_counter() - t_start

    L = Learner(enc, gen)
    K = len(domains)
    routed = [[None] * K for _ in range(K)]
    oracle = [[None] * K for _ in range(K)]
    router_acc, best_val, val_f1 = [], [], []
    trained = 0
    for k, d in enumerate(domains):
        # -- SGD: epochs over the new domain, every batch topped up with replay
        t0 = time.perf_counter()
        L.add_domain(len(d.intents))
        n_new = max(1, swift_round(batch * (1 - 0.2)))
        n_replay = batch - n_new
        steps = math.ceil(len(d.train_ids) / n_new) * epochs
        step = 0
        for _ in range(epochs):
            order = torch.randperm(len(d.train_ids), generator=gen).tolist()
            for s in range(0, len(order), n_new):
                seqs = [d.train_ids[i] for i in order[s:s + n_new]]
                gates = [k] * len(seqs)
                labels = [d.train_labels[i] for i in order[s:s + n_new]]
                replay, general = [], []
                if k > 0 and n_replay > 0:
                    n_general = swift_round(n_replay * 0.3) if dual.general.items else 0
                    replay = dual.sample(n_replay - n_general, gen)
                    general = dual.general.sample(n_general, gen)
                seqs += [it[0] for it in replay] + general
                gates += [L.domain_of(it[1]) for it in replay] + [k] * len(general)
                n_ce = len(labels) + len(replay)
                labels += [it[1] for it in replay]
                logits, pooled = L.logits(seqs, gates)
                # CE over each row's own domain's intents
                lo = torch.tensor([L.domains[g][0] for g in gates[:n_ce]])
                hi = lo + torch.tensor([L.domains[g][1] for g in gates[:n_ce]])
                cols = torch.arange(L.V)
                in_range = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
                loss = F.cross_entropy(logits[:n_ce].masked_fill(~in_range, float("-inf")), torch.tensor(labels))
                if replay:  # logit distillation on domain replays: MSE to the stored logits (weight 0.5)
                    mse = [((logits[len(seqs) - len(general) - len(replay) + i, L.domains[g][0]:L.domains[g][0] + L.domains[g][1]]
                             - torch.tensor(it[2])) ** 2).mean()
                           for i, (it, g) in enumerate(zip(replay, gates[n_ce - len(replay):n_ce]))]
                    loss = loss + 0.5 * torch.stack(mse).mean()
                if general:  # anchoring: the adapted pooled output stays near the frozen one (weight 0.1)
                    target = L.frozen(general)
                    loss = loss + 0.1 * ((pooled[len(seqs) - len(general):] - target) ** 2).mean()
                for g in L.opt.param_groups:
                    g["lr"] = lr_at(step, steps, lr)
                L.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(L.trainable(), 1.0)
                L.opt.step()
                step += 1
                trained += len(seqs)
        t1 = time.perf_counter()
        phases["sgd"] += t1 - t0
        # -- quota validation: every seen domain's validation F1 (the forgetting signal), then the buffer
        vrow = []
        for j in range(k + 1):
            dj = domains[j]
            ids = [tok.encode(t) for t, _ in dj.val_rows]
            lg = L.logits_nograd(ids, [j] * len(ids))
            gold = [dj.offset + dj.intents.index(i) for _, i in dj.val_rows]
            vrow.append(macro_f1(predict_in(lg, dj.offset, len(dj.intents)), gold, list(range(dj.offset, dj.offset + len(dj.intents)))))
        best_val.append(0.0)
        forgetting = {j: max(0.0, best_val[j] - vrow[j]) for j in range(k)}
        best_val = [max(b, v) for b, v in zip(best_val, vrow)]
        val_f1.append(vrow)
        stored = L.logits_nograd(d.train_ids, [k] * len(d.train_ids))[:, d.offset:d.offset + len(d.intents)]
        dual.add_domain(k, [(s, y, lgt) for s, y, lgt in zip(d.train_ids, d.train_labels, stored.tolist())], forgetting)
        t2 = time.perf_counter()
        phases["quotaValidation"] += t2 - t1
        # -- prototypes: each intent's mean frozen feature over the domain's training utterances
        feats = L.frozen(d.train_ids)
        labels = torch.tensor(d.train_labels)
        for c in range(d.offset, d.offset + len(d.intents)):
            sel = labels == c
            L.protos[c] = feats[sel].mean(0) if sel.any() else 0
        t3 = time.perf_counter()
        phases["prototypes"] += t3 - t2
        # -- router: 300 new-domain utterances + every buffered one of the earlier domains, balanced
        if k > 0:
            pick = torch.randperm(len(d.train_ids), generator=gen)[:300].tolist()
            ex = [(d.train_ids[i], k) for i in pick] + [(it[0], L.domain_of(it[1])) for it in dual.items_before(k)]
            x = L.frozen([e[0] for e in ex])
            y = torch.tensor([e[1] for e in ex])
            w_dom = 1.0 / torch.bincount(y, minlength=k + 1).clamp_min(1).float()
            B = min(64, len(ex))
            total = math.ceil(len(ex) / B) * 40
            t = 0
            for _ in range(40):
                order = torch.randperm(len(ex), generator=gen)
                for s in range(0, len(ex) - B + 1, B):
                    idx = order[s:s + B]
                    w = w_dom[y[idx]]
                    loss = (F.cross_entropy(L.router_logits(x[idx], dropout=True), y[idx], reduction="none") * w / w.sum()).sum()
                    for g in L.r_opt.param_groups:
                        g["lr"] = lr_at(t, total, 2e-3)
                    L.r_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([p for g in L.r_opt.param_groups for p in g["params"]], 5.0)
                    L.r_opt.step()
                    t += 1
        t4 = time.perf_counter()
        phases["router"] += t4 - t3
        # -- evaluation: the R-matrix rows (oracle: own gate and head; routed: router -> gate -> head)
        correct = count = 0
        for j in range(k + 1):
            dj = domains[j]
            ids = [tok.encode(t) for t, _ in dj.eval_rows]
            gold = [dj.offset + dj.intents.index(i) for _, i in dj.eval_rows]
            classes = list(range(dj.offset, dj.offset + len(dj.intents)))
            lg = L.logits_nograd(ids, [j] * len(ids))
            oracle_pred = predict_in(lg, dj.offset, len(dj.intents))
            gates = L.route(L.frozen(ids)).tolist()
            routed_pred = list(oracle_pred)
            other = [i for i, g in enumerate(gates) if g != j]
            if other:
                lo = L.logits_nograd([ids[i] for i in other], [gates[i] for i in other])
                for r, i in enumerate(other):
                    o, n = L.domains[gates[i]]
                    routed_pred[i] = int(lo[r, o:o + n].argmax()) + o
            oracle[k][j] = macro_f1(oracle_pred, gold, classes)
            routed[k][j] = macro_f1(routed_pred, gold, classes)
            correct += len(ids) - len(other)
            count += len(ids)
        router_acc.append(correct / max(count, 1))
        phases["evaluation"] += time.perf_counter() - t4
        print(f"# reference: after {k + 1}/{K} '{d.name}': routed F1 [{' '.join(f'{100 * x:.1f}' for x in routed[k][:k + 1])}] "
              f"router acc {100 * router_acc[-1]:.1f}%", file=sys.stderr, flush=True)

    # -- single-utterance routed prediction latency at 1 thread (tokenize, router, gated pass, head)
    t5 = time.perf_counter()
    latency = None
    n_lat = cfg.get("latencySamples", 200)
    texts = [t for d in domains for t, _ in d.test]
    if n_lat > 0 and texts:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        times = []
        with torch.no_grad():
            for i in range(n_lat + 10):
                text = texts[(i * 7919) % len(texts)]
                a = time.perf_counter()
                s = tok.encode(text, cache=False)
                if K > 1:
                    ids, mask = pad([s])
                    g = L.route(mean_pool(enc(ids, mask), mask))
                else:
                    g = torch.zeros(1, dtype=torch.long)
                lg, _ = L.logits([s], g.tolist())
                o, n = L.domains[int(g[0])]
                int(lg[0, o:o + n].argmax())
                if i >= 10:
                    times.append((time.perf_counter() - a) * 1e3)
        torch.set_num_threads(threads)
        times.sort()
        latency = {"p50ms": times[len(times) // 2], "p99ms": times[min(len(times) - 1, int((len(times) - 1) * 0.99 + 0.5))]}
    phases["latency"] += time.perf_counter() - t5

    t6 = time.perf_counter()
    T = K

    def avg(m):
        return sum(m[T - 1]) / T

    def bwt(m):
        return sum(m[T - 1][j] - m[j][j] for j in range(T - 1)) / (T - 1) if T > 1 else 0.0

    out = {
        "record": "dual_replay_reference", "sitting": sitting(), "threads": args.threads, "torchThreads": torch.get_num_threads(),
        "config": os.path.relpath(args.config, REPO) if args.config.startswith(REPO) else args.config,
        "domains": [d.name for d in domains], "orderingSeed": seed, "byteBudget": budget,
        "trainRows": [len(d.train) for d in domains], "evalRows": [len(d.eval_rows) for d in domains],
        "epochs": epochs, "batchSize": batch, "learningRate": lr, "examplesTrained": trained,
        "routed": {"f1": routed, "averageF1": avg(routed), "backwardTransfer": bwt(routed)},
        "oracle": {"f1": oracle, "averageF1": avg(oracle), "backwardTransfer": bwt(oracle)},
        "routerAccuracy": router_acc, "validationF1": val_f1, "ledger": dual.ledger(),
        "generalItems": len(dual.general.items), "latency": latency, "peakRssMiB": peak_rss_mib(),
    }
    phases["io"] += time.perf_counter() - t6
    out["timing"] = {**phases, "total": time.perf_counter() - t_start}
    line = json.dumps(out)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(REPO, "bench/experiments/bench-job-full.json"))
    ap.add_argument("--reduced", action="store_true", help="the reduced variant (bench/experiments/bench-job-reduced.json)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("DR_DATA") or os.path.join(REPO, "../shared/data"))
    ap.add_argument("--model", default=os.environ.get("DR_MODEL") or os.path.join(REPO, "models/all-MiniLM-L6-v2"))
    ap.add_argument("--max-domains", type=int, default=0, help="only the first K domains (quick checks)")
    ap.add_argument("--token-ids", help="JSONL of {text, input_ids} from `dualreplay embed`: use these ids")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.reduced:
        args.config = os.path.join(REPO, "bench/experiments/bench-job-reduced.json")
    run(args)


if __name__ == "__main__":
    main()
