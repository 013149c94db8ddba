"""all-MiniLM-L6-v2 in plain PyTorch, for the side-by-side reference (bench/reference/README.md).

No `transformers`: the BERT forward pass is written out here from `model.safetensors`,
`config.json` and `vocab.txt`, with the gated bottleneck adapter of DualReplay on the output of
each layer. Also: a BERT WordPiece tokenizer (HF BasicTokenizer + WordPiece, as
Sources/DualReplay/Text/BertTokenizer.swift) and the `sitting` record every reference figure
carries (which machine, which boot, when).
"""
import json
import os
import socket
import struct
import time
import unicodedata

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# safetensors (read with struct + numpy: no extra dependency)

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """{name: torch.Tensor} of a safetensors file (a JSON header, then raw little-endian data)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        arr = np.frombuffer(data, dtype=_DTYPES[meta["dtype"]], count=(hi - lo) // np.dtype(_DTYPES[meta["dtype"]]).itemsize,
                            offset=lo).reshape(meta["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


# ---------------------------------------------------------------------------------------------
# tokenizer: HF BertTokenizer (basic + WordPiece), lower-cased with accents stripped


def _is_whitespace(c):
    if c in " \t\n\r":
        return True
    return unicodedata.category(c) == "Zs"


def _is_control(c):
    if c in "\t\n\r":
        return False
    return unicodedata.category(c) in ("Cc", "Cf")


def _is_punctuation(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """[CLS] + the first maxLength − 2 word pieces + [SEP], as `BertTokenizer.encode(_:maxLength:)`."""

    def __init__(self, vocab_path, max_length=64):
        with open(vocab_path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.cls, self.sep, self.unk = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]
        self.max_length = max_length
        self.cache = {}

    def _words(self, text):
        out = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or _is_control(c):
                continue
            if _is_whitespace(c):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(" " + c + " ")
            else:
                out.append(c)
        words = []
        for w in "".join(out).strip().split():
            w = unicodedata.normalize("NFD", w)
            w = "".join(c for c in w if unicodedata.category(c) != "Mn").lower()
            cur = ""
            for c in w:
                if _is_punctuation(c):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def _pieces(self, word):
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, cur = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    cur = self.vocab[sub]
                    break
                end -= 1
            if cur is None:
                return [self.unk]
            ids.append(cur)
            start = end
        return ids

    def encode(self, text, cache=True):
        hit = self.cache.get(text) if cache else None
        if hit is not None:
            return hit
        ids = []
        for w in self._words(text):
            ids.extend(self._pieces(w))
            if len(ids) >= self.max_length - 2:
                break
        ids = [self.cls] + ids[: self.max_length - 2] + [self.sep]
        if cache:
            self.cache[text] = ids
        return ids


# ---------------------------------------------------------------------------------------------
# the encoder


class MiniLM(torch.nn.Module):
    """The frozen BERT encoder (every base weight has requires_grad False) with an optional gated
    output adapter per layer: hidden[l+1] = ln2 + b_up + (g_d ⊙ gelu(ln2·W_downᵀ + b_down))·W_upᵀ."""

    def __init__(self, model_dir):
        super().__init__()
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.C, self.H, self.L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
        self.eps = cfg.get("layer_norm_eps", 1e-12)
        w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        w = {k[5:] if k.startswith("bert.") else k: v for k, v in w.items()}

        def p(name):
            return torch.nn.Parameter(w[name].float(), requires_grad=False)

        self.word = p("embeddings.word_embeddings.weight")
        self.pos = p("embeddings.position_embeddings.weight")
        self.tok_type = p("embeddings.token_type_embeddings.weight")
        self.emb_ln_w, self.emb_ln_b = p("embeddings.LayerNorm.weight"), p("embeddings.LayerNorm.bias")
        self.layers = torch.nn.ModuleList()
        for l in range(self.L):
            pre = f"encoder.layer.{l}."
            m = torch.nn.Module()
            # q, k, v as one (3C, C) projection, the usual fused layout
            m.qkv_w = torch.nn.Parameter(torch.cat([w[pre + f"attention.self.{x}.weight"] for x in ("query", "key", "value")]),
                                         requires_grad=False)
            m.qkv_b = torch.nn.Parameter(torch.cat([w[pre + f"attention.self.{x}.bias"] for x in ("query", "key", "value")]),
                                         requires_grad=False)
            m.ao_w, m.ao_b = p(pre + "attention.output.dense.weight"), p(pre + "attention.output.dense.bias")
            m.ln1_w, m.ln1_b = p(pre + "attention.output.LayerNorm.weight"), p(pre + "attention.output.LayerNorm.bias")
            m.fc_w, m.fc_b = p(pre + "intermediate.dense.weight"), p(pre + "intermediate.dense.bias")
            m.pr_w, m.pr_b = p(pre + "output.dense.weight"), p(pre + "output.dense.bias")
            m.ln2_w, m.ln2_b = p(pre + "output.LayerNorm.weight"), p(pre + "output.LayerNorm.bias")
            self.layers.append(m)

    def use_bf16(self):
        """The frozen linear layers in bfloat16 (ours: training.frozenPrecision "bf16"): weights
        cast once, inputs cast per call, outputs back to fp32 (CPU bf16 matmul accumulates in
        fp32). What a PyTorch user would write; cheaper than autocast, which recasts frozen
        weights on every call."""
        for m in self.layers:
            for n in ("qkv", "ao", "fc", "pr"):
                setattr(m, n + "_w16", getattr(m, n + "_w").detach().bfloat16())
                setattr(m, n + "_b16", getattr(m, n + "_b").detach().bfloat16())
        self.bf16 = True

    def _lin(self, x, m, n):
        if getattr(self, "bf16", False):
            return F.linear(x.bfloat16(), getattr(m, n + "_w16"), getattr(m, n + "_b16")).float()
        return F.linear(x, getattr(m, n + "_w"), getattr(m, n + "_b"))

    def forward(self, ids, mask, adapter=None, gates=None):
        """ids, mask (B,T) -> last hidden state (B,T,C). `adapter`: a GatedAdapter; `gates`:
        per layer the (B,R) gate rows of each sequence's domain."""
        B, T = ids.shape
        C, H = self.C, self.H
        x = self.word[ids] + self.pos[:T].unsqueeze(0) + self.tok_type[0]
        x = F.layer_norm(x, (C,), self.emb_ln_w, self.emb_ln_b, self.eps)
        attn_mask = mask[:, None, None, :].bool()  # (B,1,1,T): keys that exist
        for l, m in enumerate(self.layers):
            qkv = self._lin(x, m, "qkv").view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
            a = a.transpose(1, 2).reshape(B, T, C)
            x = F.layer_norm(self._lin(a, m, "ao") + x, (C,), m.ln1_w, m.ln1_b, self.eps)
            f = self._lin(F.gelu(self._lin(x, m, "fc")), m, "pr")
            x = F.layer_norm(f + x, (C,), m.ln2_w, m.ln2_b, self.eps)
            if adapter is not None and l in adapter.slot:
                x = adapter(x, adapter.slot[l], gates[adapter.slot[l]])
        return x


def mean_pool(h, mask):
    """Mean over each sequence's tokens (B,C), as sentence-transformers (not normalised)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def pad(seqs):
    """Token id lists -> ids, mask (B,T) padded to the longest."""
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class GatedAdapter(torch.nn.Module):
    """ONE shared bottleneck per adapter layer (R×C down, C×R up, zero-initialised up so a fresh
    adapter is the identity) and a per-domain gate vector per layer (`gates[slot][d]`, (R,))."""

    def __init__(self, C, R, layers, generator):
        super().__init__()
        self.slot = {l: s for s, l in enumerate(layers)}
        self.R = R
        sd = 1 / C ** 0.5
        self.down_w = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(R, C, generator=generator) * sd) for _ in layers])
        self.down_b = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(R)) for _ in layers])
        self.up_w = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(C, R)) for _ in layers])
        self.up_b = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(C)) for _ in layers])
        self.gates = torch.nn.ModuleList([torch.nn.ParameterList() for _ in layers])

    def add_domain(self, freeze_old=True):
        """A new gate row (ones) per layer; earlier rows stop training. Returns the new parameters."""
        new = []
        for g in self.gates:
            if freeze_old:
                for old in g:
                    old.requires_grad_(False)
            row = torch.nn.Parameter(torch.ones(self.R))
            g.append(row)
            new.append(row)
        return new

    def gate_rows(self, gate_ids):
        """Per layer, the (B,R) gate of each sequence."""
        return [torch.stack(list(g))[gate_ids] for g in self.gates]

    def forward(self, x, s, g):
        z = F.gelu(F.linear(x, self.down_w[s], self.down_b[s])) * g[:, None, :]
        return x + F.linear(z, self.up_w[s], self.up_b[s])


# ---------------------------------------------------------------------------------------------
# the sitting: where and when figures were measured


def sitting():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown"
    cfg = torch.__config__.show()
    blas = next((x.split("=", 1)[1] for x in cfg.replace(",", "\n").split() if x.startswith("BLAS_INFO=")), "?")
    isa = next((l.split(":", 1)[1].strip() for l in cfg.splitlines() if "CPU capability usage" in l), "?")
    return {"record": "sitting", "cpuModel": cpu, "bootId": boot, "hostname": socket.gethostname(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "unixTime": time.time(),
            "cores": os.cpu_count(), "torch": torch.__version__, "torchBlas": blas, "torchCpuCapability": isa}


def peak_rss_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
