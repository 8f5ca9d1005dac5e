#!/usr/bin/env python3
"""Independent NumPy reference of the LLaDA and Dream forwards and of every Fast-dLLM decoding mode.

Written from ../shared/spec/fast-dllm.md (cited as "spec §N"), not from the Rust code, and
deliberately structured differently from it: the Rust engine writes fresh K/V into one canvas-sized
cache and always attends over the whole canvas, while this file keeps the reference's own shape:
a block-start forward that returns per-layer K/V, PrefixCache that concatenates [cached prefix |
fresh window] keys, and DualCache that splices fresh block keys between the stale prefix and suffix.
Dream (spec §3) is DreamModel (same ops, Qwen2.5 names, q/k/v biases) plus generate_dream (its
own loops: logit shift, block-start commit of the first position, entropy timestep rule, uncached
"+parallel" budget).

Everything runs in float32 (golden parity is defined on f32 checkpoints, spec §8); confidences are
float64 (spec §4.2). Batch size is 1: batching is an engine property, checked in Rust against these
batch-1 goldens.

Usage:
    python3 tools/reference.py verify-official ../shared/reference/llada-tiny
"""

import json
import math
import os
import struct
import sys
from pathlib import Path

# One BLAS thread, set before NumPy loads: multi-threaded OpenBLAS changes the f32 summation order
# with the thread count, which moves the goldens' recorded margins (and could move a near-tie); the
# committed goldens were written single-threaded. (Also far faster beside other CPU jobs.)
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

F32 = np.float32


# ----------------------------------------------------------------------------- checkpoint I/O

def read_safetensors(path):
    """Minimal safetensors reader (F32/BF16/F16) -> dict name -> float32 array."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        buf = raw[base + s : base + e]
        if info["dtype"] == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        elif info["dtype"] == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(F32)
        elif info["dtype"] == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(F32)
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        out[name] = a.reshape(info["shape"]).astype(F32)
    return out


def write_safetensors(path, tensors):
    """Minimal safetensors writer for float32 arrays (sorted names, 8-byte aligned header)."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class Model:
    """The LLaDA forward of spec §2 in float32."""

    def __init__(self, ckpt_dir):
        ckpt_dir = Path(ckpt_dir)
        cfg = json.loads((ckpt_dir / "config.json").read_text())
        self.cfg = cfg
        self.d = cfg["d_model"]
        self.n_layers = cfg["n_layers"]
        self.n_heads = cfg["n_heads"]
        self.n_kv = cfg.get("n_kv_heads") or self.n_heads
        self.hd = self.d // self.n_heads
        self.eps = cfg["rms_norm_eps"]
        self.mask_id = cfg["mask_token_id"]
        w = read_safetensors(ckpt_dir / "model.safetensors")
        p = "model.transformer."
        self.wte = w[p + "wte.weight"]
        self.ln_f = w[p + "ln_f.weight"]
        self.lm_head = w[p + "ff_out.weight"]
        self.layers = []
        for i in range(self.n_layers):
            b = f"{p}blocks.{i}."
            self.layers.append({k: w[b + k + ".weight"] for k in (
                "attn_norm", "q_proj", "k_proj", "v_proj", "attn_out",
                "ff_norm", "ff_proj", "up_proj", "ff_out")})
        self.rope_table(cfg["rope_theta"], cfg["max_sequence_length"])

    def rope_table(self, rope_theta, n_positions):
        # spec §2 rope table: inv_freq = 1 / theta^(arange(0, hd, 2)/hd), all fp32, this order.
        theta = F32(rope_theta)
        expo = np.arange(0, self.hd, 2, dtype=F32) / F32(self.hd)
        inv_freq = F32(1.0) / np.power(theta, expo, dtype=F32)
        pos = np.arange(n_positions, dtype=F32)
        ang = np.outer(pos, inv_freq).astype(F32)
        ang = np.concatenate([ang, ang], axis=1)
        self.cos = np.cos(ang).astype(F32)
        self.sin = np.sin(ang).astype(F32)

    # -- ops (spec §2)
    def rmsnorm(self, x, w):
        var = np.mean(x * x, axis=-1, keepdims=True, dtype=F32)
        y = (x * (F32(1.0) / np.sqrt(var + F32(self.eps)))).astype(F32)
        return (y * w).astype(F32)

    def rope(self, x, positions):
        # x: [T, heads, hd]; rotate_half layout: [x1 | x2] -> [x1 cos - x2 sin | x2 cos + x1 sin]
        c = self.cos[positions][:, None, :]
        s = self.sin[positions][:, None, :]
        h = self.hd // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
        return (x * c + rot * s).astype(F32)

    def attend(self, q, k, v):
        # q: [T, H, hd]; k, v: [S, KV, hd]; bidirectional, no mask (spec §2)
        group = self.n_heads // self.n_kv
        out = np.empty_like(q)
        scale = F32(1.0 / math.sqrt(self.hd))
        for h in range(self.n_heads):
            kh = k[:, h // group, :]
            vh = v[:, h // group, :]
            s = (q[:, h, :] @ kh.T).astype(F32) * scale
            s = s - s.max(axis=1, keepdims=True)
            p = np.exp(s).astype(F32)
            p = p / p.sum(axis=1, keepdims=True, dtype=F32)
            out[:, h, :] = (p @ vh).astype(F32)
        return out

    def forward(self, ids, positions, past=None, splice=None):
        """Forward `ids` (token ids at canvas `positions`).

        past=None: keys are exactly the given tokens (full canvas).
        splice=(past, mode, s, e):
          mode "prefix": keys = [past K/V rows < s | fresh rows]          (spec §5 PrefixCache)
          mode "dual":   keys = [past rows < s | fresh rows | past rows >= e] (spec §5 DualCache)
        Returns (hidden after the last layer, per-layer (K, V) of the keys used).
        """
        T = len(ids)
        h = self.wte[np.asarray(ids)].astype(F32)
        kv = []
        for li, L in enumerate(self.layers):
            a = self.rmsnorm(h, L["attn_norm"])
            q = (a @ L["q_proj"].T).astype(F32)
            k = (a @ L["k_proj"].T).astype(F32)
            v = (a @ L["v_proj"].T).astype(F32)
            if "q_bias" in L:   # Dream only (spec §3): biases on q/k/v, none on o_proj
                q = (q + L["q_bias"]).astype(F32)
                k = (k + L["k_bias"]).astype(F32)
                v = (v + L["v_bias"]).astype(F32)
            q = q.reshape(T, self.n_heads, self.hd)
            k = k.reshape(T, self.n_kv, self.hd)
            v = v.reshape(T, self.n_kv, self.hd)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            if splice is not None:
                past_kv, mode, s, e = splice
                pk, pv = past_kv[li]
                if mode == "prefix":
                    k = np.concatenate([pk[:s], k], axis=0)
                    v = np.concatenate([pv[:s], v], axis=0)
                else:
                    k = np.concatenate([pk[:s], k, pk[e:]], axis=0)
                    v = np.concatenate([pv[:s], v, pv[e:]], axis=0)
            kv.append((k, v))
            o = self.attend(q, k, v).reshape(T, self.d)
            h = (h + (o @ L["attn_out"].T).astype(F32)).astype(F32)
            m = self.rmsnorm(h, L["ff_norm"])
            g = (m @ L["ff_proj"].T).astype(F32)
            u = (m @ L["up_proj"].T).astype(F32)
            act = (g / (F32(1.0) + np.exp(-g))).astype(F32) * u
            h = (h + (act.astype(F32) @ L["ff_out"].T).astype(F32)).astype(F32)
        return h, kv

    def logits(self, h_rows):
        return (self.rmsnorm(h_rows, self.ln_f) @ self.lm_head.T).astype(F32)


# ----------------------------------------------------------------------------- selection (spec §4)

class Margins:
    """The closest a decision came to a tie (spec §8): generators reject seeds below the limits."""

    LOGIT_GAP = 1e-4
    DECISION = 1e-5

    def __init__(self):
        self.logit_gap = math.inf   # top-1 vs top-2 logit of every committed token
        self.mask_argmax = 0        # candidates whose argmax is the mask token itself
        self.decision = math.inf    # |c - tau|, |c - thr(n)|, rank cuts in log(1-c) units
        self.where = {}

    def note(self, kind, value, where):
        if kind == "logit_gap":
            if value < self.logit_gap:
                self.logit_gap = value
                self.where[kind] = where
        else:
            if value < self.decision:
                self.decision = value
                self.where["decision"] = where

    def ok(self):
        return self.mask_argmax == 0 and self.logit_gap >= self.LOGIT_GAP and self.decision >= self.DECISION


class MaskArgmax(Exception):
    pass


def log1m(c):
    return -math.inf if c >= 1.0 else math.log1p(-c)


def rank_gap(ca, cb):
    a, b = log1m(ca), log1m(cb)
    if a == b:
        return 0.0
    return abs(a - b)


def candidates(model, logits_rows):
    """x0 (argmax over the whole vocabulary, lowest id on ties) and float64 confidence."""
    out = []
    for row in logits_rows:
        x0 = int(np.argmax(row))               # numpy returns the first maximum
        r64 = row.astype(np.float64)
        mx = r64[x0]
        c = 1.0 / float(np.sum(np.exp(r64 - mx)))
        srt = np.sort(row)
        gap = float(srt[-1]) - float(srt[-2])
        out.append((x0, c, gap))
    return out


def select(cands, rule, quota, margins, where):
    """cands: list of (position, x0, c, gap). Returns the committed positions (spec §4.4)."""
    order = sorted(cands, key=lambda t: (-t[2], t[0]))   # by c descending, lower position first
    n = len(order)
    kind = rule[0]
    if kind == "quota":
        k = min(quota, n)
        if 0 < k < n:
            margins.note("decision", rank_gap(order[k - 1][2], order[k][2]), where + " quota cut")
        chosen = order[:k]
    elif kind == "threshold":
        tau = rule[1]
        chosen = [order[0]]
        for t in order[1:]:
            margins.note("decision", abs(t[2] - tau), where + " threshold")
            if t[2] >= tau:
                chosen.append(t)
        if order[0][2] < tau:
            margins.note("decision", abs(order[0][2] - tau), where + " threshold top1")
            if n > 1:
                margins.note("decision", rank_gap(order[0][2], order[1][2]), where + " forced top1")
    elif kind == "factor":
        f = rule[1]
        # walk n = 1, 2, ...: thr(1) forced; stop at the first failure (c(n) < 1 - f/(n+1))
        fail = None
        for i in range(n):
            thr = -1.0 if i == 0 else 1.0 - f / (i + 2)
            if i > 0:
                margins.note("decision", abs(order[i][2] - thr), where + " factor thr")
            if order[i][2] < thr:
                fail = i
                break
        # reference quirk (spec §4.4): first failure at the last candidate (or none) -> all N;
        # a failure at rank t (0-based, t < N-1) commits the t that passed before it
        k = n if fail is None or fail == n - 1 else fail
        if 0 < k < n:
            margins.note("decision", rank_gap(order[k - 1][2], order[k][2]), where + " factor cut")
        chosen = order[:k]
    else:
        raise ValueError(rule)
    for t in chosen:
        margins.note("logit_gap", t[3], where + f" pos {t[0]}")
    return chosen


# ----------------------------------------------------------------------------- decoding (spec §5)

def quota_schedule(n, spb):
    return [n // spb + (1 if i < n % spb else 0) for i in range(spb)]


def generate(model, prompt, gen_length, block_length, steps, cache, rule, suffix=()):
    """One prompt, temperature 0. Returns dict(tokens, nfe, kinds, commits, margins, suffix).

    suffix (infilling): fixed tokens after the masked middle. The canvas is prompt | middle |
    suffix; blocks cover the middle only; the suffix is a key of every forward, like the prompt:
    PrefixCache's window x[s:] runs it fresh, DualCache keeps its block-start K/V after the block.
    """
    mask = model.mask_id
    P = len(prompt)
    L = P + gen_length + len(suffix)
    x = list(prompt) + [mask] * gen_length + list(suffix)
    K = gen_length // block_length
    assert gen_length % block_length == 0 and steps % K == 0
    spb = steps // K
    nfe = 0
    kinds = []
    commits = []
    margins = Margins()
    allpos = np.arange(L)

    def step(logits_rows, positions, s, e, i, quota_n):
        cands = []
        lr = {int(p): r for p, r in zip(positions, logits_rows)}
        rows = [p for p in range(s, e) if x[p] == mask]
        info = candidates(model, [lr[p] for p in rows])
        # spec §4.1 takes the argmax over the whole vocabulary, mask id included. Committing the
        # mask id would leave the position masked (the reference then loops or leaves masks
        # behind); dllm never draws it. Count such decisions so fixture seeds avoid them.
        margins.mask_argmax += sum(1 for x0, _, _ in info if x0 == mask)
        if margins.mask_argmax:
            raise MaskArgmax(f"nfe {nfe}: the mask token is the argmax of a candidate")
        for p, (x0, c, gap) in zip(rows, info):
            cands.append((p, x0, c, gap))
        quota = quota_n[i] if i < len(quota_n) else 0
        chosen = select(cands, rule, quota, margins, f"nfe {nfe}")
        for t in chosen:
            x[t[0]] = t[1]
        commits.append(len(chosen))

    for b in range(K):
        s = P + b * block_length
        e = s + block_length
        n0 = sum(1 for p in range(s, e) if x[p] == mask)
        quota_n = quota_schedule(n0, spb)
        if cache == "none":
            i = 0
            while any(x[p] == mask for p in range(s, e)):
                h, _ = model.forward(x, allpos)
                nfe += 1
                kinds.append("F")
                step(model.logits(h[s:e]), allpos[s:e], s, e, i, quota_n)
                i += 1
            continue
        # block start: full forward refreshes the cache and decodes step 0 (spec §5)
        h, kv = model.forward(x, allpos)
        nfe += 1
        kinds.append("F")
        step(model.logits(h[s:e]), allpos[s:e], s, e, 0, quota_n)
        i = 1
        # check first (spec §8): a block finished by its block-start forward costs nothing more
        while any(x[p] == mask for p in range(s, e)):
            if cache == "prefix":
                pos = allpos[s:]
                hw, _ = model.forward(x[s:], pos, splice=(kv, "prefix", s, None))
                kinds.append("P")
            else:
                pos = allpos[s:e]
                hw, _ = model.forward(x[s:e], pos, splice=(kv, "dual", s, e))
                kinds.append("D")
            nfe += 1
            step(model.logits(hw[: e - s]), pos[: e - s], s, e, i, quota_n)
            i += 1
    return {"tokens": x[P:P + gen_length], "nfe": nfe, "kinds": "".join(kinds),
            "commits": commits, "margins": margins, "suffix": x[P + gen_length:]}


# ----------------------------------------------------------------------------- Dream (spec §3)

class DreamModel(Model):
    """The Dream-v0 forward of spec §3 in float32.

    Qwen2.5 layout run bidirectionally: q/k/v projections with biases (o_proj without), GQA, RMSNorm
    eps and rope θ from config.json, untied lm_head. The ops (rmsnorm, rotate_half rope with the
    spec §2 fp32 table, unmasked attention, the PrefixCache/DualCache K/V splice) are Model's; only
    the tensor names, the config keys and the q/k/v biases differ. In f32 the bf16 cos/sin cast of
    spec §3 is a no-op. The logit shift (spec §3) is applied by generate_dream, not here: row i of
    `logits` is still the output at position i.
    """

    LAYER_TENSORS = {
        "attn_norm": "input_layernorm.weight",
        "q_proj": "self_attn.q_proj.weight", "q_bias": "self_attn.q_proj.bias",
        "k_proj": "self_attn.k_proj.weight", "k_bias": "self_attn.k_proj.bias",
        "v_proj": "self_attn.v_proj.weight", "v_bias": "self_attn.v_proj.bias",
        "attn_out": "self_attn.o_proj.weight",
        "ff_norm": "post_attention_layernorm.weight",
        "ff_proj": "mlp.gate_proj.weight",    # the gate (gets SiLU)
        "up_proj": "mlp.up_proj.weight",
        "ff_out": "mlp.down_proj.weight",
    }

    def __init__(self, ckpt_dir):
        ckpt_dir = Path(ckpt_dir)
        cfg = json.loads((ckpt_dir / "config.json").read_text())
        self.cfg = cfg
        self.d = cfg["hidden_size"]
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.hd = self.d // self.n_heads
        self.eps = cfg["rms_norm_eps"]
        self.mask_id = cfg["mask_token_id"]
        w = read_safetensors(ckpt_dir / "model.safetensors")
        self.wte = w["model.embed_tokens.weight"]
        self.ln_f = w["model.norm.weight"]
        self.lm_head = w["lm_head.weight"]
        self.layers = [{k: w[f"model.layers.{i}.{n}"] for k, n in self.LAYER_TENSORS.items()}
                       for i in range(self.n_layers)]
        self.rope_table(cfg["rope_theta"], cfg["max_position_embeddings"])


def fma_f32(a, b, c):
    """a·b + c with one rounding to float32 (round to nearest, ties to even), exactly."""
    from fractions import Fraction
    q = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    r = F32(float(q))  # may round twice: pick the nearest of r and its neighbours
    near = [np.nextafter(r, F32(-np.inf)), r, np.nextafter(r, F32(np.inf))]
    return min(near, key=lambda x: (abs(Fraction(float(x)) - q), int(x.view(np.uint32)) & 1))


def torch_linspace_f32(start, end, n):
    """torch.linspace(start, end, n) for float32, bit for bit as PyTorch's vectorised CPU kernel and
    its CUDA kernel compute it (spec §3 timesteps): step = (end - start) / (n - 1) in f32; then one
    fused multiply-add per element (one rounding): i < n // 2: start + step·i, else
    end - step·(n-1-i). Pinned: n = 938 gives bits 0x3f3fdbfb at 235 and 0x3f3f961b at 236."""
    start, end = F32(start), F32(end)
    if n == 1:
        return [start]
    step = F32((end - start) / F32(n - 1))
    half = n // 2
    return [fma_f32(step, F32(i), start) if i < half else fma_f32(-step, F32(n - 1 - i), end)
            for i in range(n)]


def dream_candidates(model, logits_rows):
    """(x0, c, logit gap, negative entropy) per row: x0, c as candidates() (spec §4.1-2); negative
    entropy Σ p·log(p + 1e-10) of the float64 softmax (spec §3; higher = more confident)."""
    out = []
    for (x0, c, gap), row in zip(candidates(model, logits_rows), logits_rows):
        r64 = row.astype(np.float64)
        z = np.exp(r64 - r64[x0])
        p = z / np.sum(z)
        out.append((x0, c, gap, float(np.sum(p * np.log(p + 1e-10)))))
    return out


def generate_dream(model, prompt, gen_length, block_length, steps, cache, rule, suffix=()):
    """Dream's own decoding loops (spec §3), one prompt, temperature 0.

    rule: ("entropy",) or ("threshold", tau). cache: "none" (the uncached baseline: one window over
    the whole generation; "threshold" is the "+parallel" variant), "prefix" or "dual".
    Logit shift (spec §3): in a full-canvas forward the prediction for position i is row i-1; in a
    cached window starting at s, position s reads its own row and position j > s reads row j-1.
    suffix (infilling): fixed tokens after the masked middle, as in generate; the shift is
    unchanged at the middle's edges (its first position reads the prompt's last row, the suffix's
    first row predicts nothing).
    Returns dict(tokens, nfe, kinds, commits, margins, schedule_gap, suffix); schedule_gap is the
    smallest distance of an f32 timestep-rule product to an integer (None when the rule never ran).
    """
    mask = model.mask_id
    P = len(prompt)
    G = gen_length
    assert P >= 1, "the logit shift reads the row before the first generated position"
    x = list(prompt) + [mask] * G + list(suffix)
    allpos = np.arange(P + G + len(suffix))
    kinds, commits = [], []
    margins = Margins()
    st = {"nfe": 0, "sched": math.inf}
    entropy = rule[0] == "entropy"
    if not entropy:
        assert rule[0] == "threshold", rule
        # f32 checkpoint: c >= f32(tau) (the bf16 analogue of spec §3); margins are noted vs it
        tau = float(F32(rule[1]))

    def where():
        return f"nfe {st['nfe']}"

    def cands_at(h, positions, row_of):
        rows = [row_of(p) for p in positions]
        info = dream_candidates(model, model.logits(h[rows]) if rows else [])
        # spec §4.1: argmax over the whole vocabulary, mask id included; seeds avoid it (as LLaDA)
        margins.mask_argmax += sum(1 for t in info if t[0] == mask)
        if margins.mask_argmax:
            raise MaskArgmax(f"{where()}: the mask token is the argmax of a candidate")
        return [(p,) + t for p, t in zip(positions, info)]   # (pos, x0, c, gap, negent)

    def commit(chosen):
        for t in chosen:
            margins.note("logit_gap", t[3], where() + f" pos {t[0]}")
            x[t[0]] = t[1]
        commits.append(len(chosen))

    def masked(s, e):
        return [p for p in range(s, e) if x[p] == mask]

    def n_transfer(m, ts, i, last):
        """Timestep rule (spec §3): int(f32(#mask)·(1 - ts[i+1]/ts[i])), all f32; all at the last."""
        if i == last:
            return m
        v = F32(F32(m) * F32(F32(1.0) - F32(ts[i + 1] / ts[i])))
        st["sched"] = min(st["sched"], abs(float(v) - round(float(v))))
        n = int(v)
        assert 0 <= n < m, (m, n, i)
        return n

    def top_by_entropy(cands, n):
        order = sorted(cands, key=lambda t: (-t[4], t[0]))   # ties: lower position first
        if 0 < n < len(order):
            margins.note("decision", order[n - 1][4] - order[n][4], where() + " entropy cut")
        return order[:n]

    def full():
        h, kv = model.forward(x, allpos)
        st["nfe"] += 1
        kinds.append("F")
        return h, kv

    full_row = lambda p: p - 1                                   # noqa: E731

    if cache == "none":
        # uncached baseline (spec §3): no blocks, every forward is a full canvas forward
        if entropy:
            ts = torch_linspace_f32(1.0, 1e-3, steps + 1)
            for i in range(steps):
                h, _ = full()
                cands = cands_at(h, masked(P, P + G), full_row)
                commit(top_by_entropy(cands, n_transfer(len(cands), ts, i, steps - 1)))
        else:
            # "+parallel": budget G/steps per step plus the slots rejected earlier; after the last
            # nominal step the quota is 0, so the budget is every remaining mask (spec §3)
            assert G % steps == 0, "uncached +parallel needs gen_length % steps == 0"
            quota, left, i = G // steps, 0, 0
            while masked(P, P + G):
                h, _ = full()
                cands = cands_at(h, masked(P, P + G), full_row)
                order = sorted(cands, key=lambda t: (-t[2], t[0]))
                budget = (quota if i < steps else 0) + left
                assert 1 <= budget <= len(order), (budget, len(order))
                chosen = [order[0]]
                if order[0][2] < tau:
                    margins.note("decision", abs(order[0][2] - tau), where() + " threshold top1")
                    if len(order) > 1:
                        margins.note("decision", rank_gap(order[0][2], order[1][2]),
                                     where() + " forced top1")
                for t in order[1:budget]:
                    margins.note("decision", abs(t[2] - tau), where() + " threshold")
                    if t[2] >= tau:
                        chosen.append(t)
                if budget < len(order):
                    margins.note("decision", rank_gap(order[budget - 1][2], order[budget][2]),
                                 where() + " budget cut")
                left = budget - len(chosen)
                commit(chosen)
                i += 1
        assert not masked(P, P + G)
    else:
        assert cache in ("prefix", "dual"), cache
        assert G % block_length == 0
        K = G // block_length
        if entropy:
            assert steps % K == 0, "steps must be a multiple of the number of blocks"
            spb = steps // K
            # spb = 1 would stop before filling the block (spec §3): refuse it
            assert spb >= 2, "Dream entropy decoding needs at least 2 steps per block"
            ts = torch_linspace_f32(1.0, 1e-3, spb + 1)
        for b in range(K):
            s = P + b * block_length
            e = s + block_length
            # block start: full forward refreshes the cache; commit only position s, unconditionally
            h, kv = full()
            commit(cands_at(h, [s], full_row)[:1])
            win_row = lambda p: max(p - s - 1, 0)            # noqa: E731 (shift inside the window)

            def window():
                if cache == "prefix":
                    hw, _ = model.forward(x[s:], allpos[s:], splice=(kv, "prefix", s, None))
                    kinds.append("P")
                else:
                    hw, _ = model.forward(x[s:e], allpos[s:e], splice=(kv, "dual", s, e))
                    kinds.append("D")
                st["nfe"] += 1
                return hw

            if entropy:
                for i in range(1, spb):     # exactly spb forwards per block, n_i = 0 included
                    hw = window()
                    cands = cands_at(hw, masked(s, e), win_row)
                    commit(top_by_entropy(cands, n_transfer(len(cands), ts, i, spb - 1)))
                assert not masked(s, e)
            else:
                while masked(s, e):
                    hw = window()
                    cands = cands_at(hw, masked(s, e), win_row)
                    commit(select(cands, ("threshold", tau), 0, margins, where()))
    return {"tokens": x[P:P + G], "nfe": st["nfe"], "kinds": "".join(kinds), "commits": commits,
            "margins": margins, "schedule_gap": None if st["sched"] == math.inf else st["sched"],
            "suffix": x[P + G:]}


def rule_of(case):
    if case.get("threshold") is not None:
        return ("threshold", float(case["threshold"]))
    if case.get("factor") is not None:
        return ("factor", float(case["factor"]))
    return ("quota",)


def verify_official(ref_dir):
    ref_dir = Path(ref_dir)
    model = Model(ref_dir / "checkpoint")
    data = json.loads((ref_dir / "official_tokens.json").read_text())
    prompts = {p["id"]: p["ids"] for p in data["prompts"]}
    bad = 0
    for c in data["cases"]:
        r = generate(model, prompts[c["prompt"]], c["gen_length"], c["block_length"], c["steps"],
                     c["cache"], rule_of(c))
        ok = r["tokens"] == c["tokens"] and r["nfe"] == c["nfe_checkfirst"]
        m = r["margins"]
        print(f"{'ok ' if ok else 'BAD'} {c['name']:24s} nfe {r['nfe']:3d} "
              f"(official {c['nfe']}, checkfirst {c['nfe_checkfirst']}) "
              f"min logit gap {m.logit_gap:.2e} min decision margin {m.decision:.2e}"
              f"{'' if m.mask_argmax == 0 else f' MASK ARGMAX x{m.mask_argmax}'}")
        if not ok:
            bad += 1
            print("   ours    ", r["tokens"], r["commits"])
            print("   official", c["tokens"], c["commits_per_forward"])
    print(f"{len(data['cases']) - bad}/{len(data['cases'])} official cases reproduced")
    return bad == 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "verify-official":
        sys.exit(0 if verify_official(sys.argv[2]) else 1)
    print(__doc__)
    sys.exit(2)
