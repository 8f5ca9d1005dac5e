#!/usr/bin/env python3
"""Write the tiny LLaDA-layout test checkpoints and their golden decodes.

Each fixture is a Hugging Face checkpoint directory (config.json, model.safetensors in f32,
tokenizer.json, tokenizer_config.json, generation_config.json, special_tokens_map.json) with seeded
random weights, plus goldens.json: what tools/reference.py (the independent NumPy reference,
spec-derived) decodes for several prompts x {none, prefix, dual} x {quota, threshold 0.9,
threshold 0.7, factor 1.0}.

Seeds are searched: a seed is rejected when any decision of any golden case sits closer to a tie
than spec §8 allows (top-1 vs top-2 logit gap < 1e-4; confidence vs threshold, factor threshold or
a rank cut < 1e-5), or when confidences do not spread (no token above 0.9 besides the forced one).

A third fixture, tiny-dream, is a Dream-v0-layout checkpoint (spec §3: Qwen2.5 names, q/k/v
biases, GQA, untied lm_head, Qwen chat template) with goldens from reference.generate_dream: Dream's
own loops (logit shift, entropy timestep rule, threshold, uncached "+parallel"), same margin checks
plus the entropy and budget rank cuts.

Usage: python3 tools/make_tiny.py [OUT_DIR]                 (default: tests/fixtures; all fixtures)
       python3 tools/make_tiny.py --only tiny-dream [OUT_DIR]   (one fixture)
       python3 tools/make_tiny.py --infill [--only NAME] [OUT_DIR]
           (only goldens_infill.json of tiny-gqa and tiny-dream: the same modes with a fixed
           suffix after the masked middle, on the committed checkpoints; issue 19)
Needs only NumPy (and jinja2 for tiny-dream's chat prompt). CI never runs it: its outputs are
committed.
"""

import json
import os
import sys
from pathlib import Path

# One BLAS thread, set before NumPy loads: multi-threaded OpenBLAS changes the f32 summation order
# with the thread count, which moves the goldens' recorded margins (and could move a near-tie); the
# committed goldens were written single-threaded. (Also far faster beside other CPU jobs.)
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)

# Two fixtures: a plain multi-head one and a grouped-query one. Their special ids differ from
# each other and from the real LLaDA's so an engine that hard-codes ids fails the tests.
FIXTURES = {
    "tiny-mha": dict(
        d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp=128, vocab=288,
        rope_theta=10000.0, max_seq=512, gen_length=96, quota_steps=60,
        specials={"<|startoftext|>": 256, "<|endoftext|>": 257, "<|mdm_mask|>": 280,
                  "<|start_header_id|>": 281, "<|end_header_id|>": 282, "<|eot_id|>": 283},
    ),
    "tiny-gqa": dict(
        d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, mlp=160, vocab=320,
        rope_theta=500000.0, max_seq=512, gen_length=128, quota_steps=48,
        specials={"<|mdm_mask|>": 300, "<|startoftext|>": 301, "<|endoftext|>": 302,
                  "<|start_header_id|>": 303, "<|end_header_id|>": 304, "<|eot_id|>": 305},
    ),
}

PROMPTS = [
    ("p0", "Hello world", False),
    ("p1", "Count: 1, 2, 3, 4,", False),
    ("p2", "What is 12 plus 30?", True),
]


def bytes_to_unicode():
    """GPT-2 byte-level alphabet: byte b -> a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def special_names(spec):
    """All ids >= 256: the named specials, every other id a reserved token."""
    by_id = {i: name for name, i in spec["specials"].items()}
    names = {}
    r = 0
    for i in range(256, spec["vocab"]):
        if i in by_id:
            names[i] = by_id[i]
        else:
            names[i] = f"<|reserved_token_{r}|>"
            r += 1
    return names


def tokenizer_json(spec):
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    specials = special_names(spec)
    for i, name in specials.items():
        vocab[name] = i
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, name in sorted(specials.items())]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def tokenizer_config(spec):
    specials = special_names(spec)
    return {
        "add_bos_token": False, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": n, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for i, n in sorted(specials.items())},
        "bos_token": "<|startoftext|>", "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
        "fast_tokenizer": True, "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": spec["max_seq"], "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def config_json(spec):
    sp = spec["specials"]
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": spec["d_model"], "embedding_dropout": 0.0, "embedding_size": spec["vocab"],
        "eos_token_id": sp["<|endoftext|>"], "flash_attention": False, "include_bias": False,
        "include_qkv_bias": False, "init_device": "meta", "init_fn": "mitchell",
        "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": sp["<|mdm_mask|>"],
        "max_sequence_length": spec["max_seq"], "mlp_hidden_size": spec["mlp"], "mlp_ratio": 4,
        "model_type": "llada", "multi_query_attention": None, "n_heads": spec["n_heads"],
        "n_kv_heads": spec["n_kv_heads"], "n_layers": spec["n_layers"],
        "pad_token_id": sp["<|endoftext|>"], "precision": None, "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": spec["rope_theta"], "scale_logits": False, "torch_dtype": "float32",
        "transformers_version": "4.49.0", "use_cache": False, "vocab_size": spec["vocab"],
        "weight_tying": False,
    }


def weights(spec, seed):
    """Seeded weights, scaled like the official tiny checkpoint so confidences spread."""
    rng = np.random.default_rng(seed)
    d, m, v = spec["d_model"], spec["mlp"], spec["vocab"]
    hd = d // spec["n_heads"]
    kvd = spec["n_kv_heads"] * hd

    def mat(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    p = "model.transformer."
    w = {p + "wte.weight": mat(v, d, 1.0)}
    for i in range(spec["n_layers"]):
        b = f"{p}blocks.{i}."
        w[b + "attn_norm.weight"] = norm(d)
        w[b + "q_proj.weight"] = mat(d, d, 3.0 / np.sqrt(d))
        w[b + "k_proj.weight"] = mat(kvd, d, 3.0 / np.sqrt(d))
        w[b + "v_proj.weight"] = mat(kvd, d, 1.0 / np.sqrt(d))
        w[b + "attn_out.weight"] = mat(d, d, 1.0 / np.sqrt(d))
        w[b + "ff_norm.weight"] = norm(d)
        w[b + "ff_proj.weight"] = mat(m, d, 1.0 / np.sqrt(d))
        w[b + "up_proj.weight"] = mat(m, d, 1.0 / np.sqrt(d))
        w[b + "ff_out.weight"] = mat(d, m, 1.0 / np.sqrt(m))
    w[p + "ln_f.weight"] = norm(d)
    w[p + "ff_out.weight"] = mat(v, d, 1.0)
    return w


def prompt_ids(spec, text, chat):
    sp = spec["specials"]
    body = list(text.strip().encode("utf-8") if chat else text.encode("utf-8"))
    if not chat:
        return body
    hdr = lambda role: [sp["<|start_header_id|>"]] + list(role.encode()) + \
        [sp["<|end_header_id|>"]] + list(b"\n\n")
    return [sp["<|startoftext|>"]] + hdr("user") + body + [sp["<|eot_id|>"]] + hdr("assistant")


def rules(spec):
    return [("quota", spec["quota_steps"], None, None),
            ("thr0.9", spec["gen_length"], 0.9, None),
            ("thr0.7", spec["gen_length"], 0.7, None),
            ("factor1.0", spec["gen_length"], None, 1.0)]


def write_checkpoint(ck, tensors, files):
    """A checkpoint directory: model.safetensors and the JSON files {name: object}."""
    ck.mkdir(parents=True, exist_ok=True)
    reference.write_safetensors(ck / "model.safetensors", tensors)
    for f, obj in files.items():
        (ck / f).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    return ck


def write_fixture(out, name, spec, seed):
    sp = spec["specials"]
    return write_checkpoint(out / name / "checkpoint", weights(spec, seed), {
        "config.json": config_json(spec),
        "tokenizer.json": tokenizer_json(spec),
        "tokenizer_config.json": tokenizer_config(spec),
        "generation_config.json": {"bos_token_id": sp["<|startoftext|>"], "eos_token_id": sp["<|endoftext|>"],
                                   "pad_token_id": sp["<|endoftext|>"]},
        "special_tokens_map.json": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                    "pad_token": "<|endoftext|>"},
    })


def try_seed(out, name, spec, seed):
    ck = write_fixture(out, name, spec, seed)
    model = reference.Model(ck)
    cases = []
    worst_gap, worst_dec = float("inf"), float("inf")
    spread = False
    for pid, text, chat in PROMPTS:
        ids = prompt_ids(spec, text, chat)
        for cache in ("none", "prefix", "dual"):
            for rname, steps, thr, fac in rules(spec):
                rule = ("threshold", thr) if thr else ("factor", fac) if fac else ("quota",)
                try:
                    r = reference.generate(model, ids, spec["gen_length"], 32, steps, cache, rule)
                except reference.MaskArgmax as e:
                    return None, f"{pid}/{cache}/{rname}: {e}"
                m = r["margins"]
                if not m.ok():
                    return None, f"{pid}/{cache}/{rname}: too close to a tie or mask argmax " \
                        f"(mask argmax {m.mask_argmax}, logit gap {m.logit_gap:.1e}, decision {m.decision:.1e}, {m.where})"
                worst_gap = min(worst_gap, m.logit_gap)
                worst_dec = min(worst_dec, m.decision)
                if thr == 0.9 and max(r["commits"]) > 1:
                    spread = True
                cases.append({
                    "name": f"{pid}/{cache}/{rname}", "prompt": pid, "cache": cache,
                    "steps": steps, "threshold": thr, "factor": fac,
                    "gen_length": spec["gen_length"], "block_length": 32,
                    "tokens": r["tokens"], "nfe": r["nfe"], "forward_kinds": r["kinds"],
                    "commits_per_forward": r["commits"],
                    "min_logit_gap": m.logit_gap, "min_decision_margin": m.decision,
                })
    if not spread:
        return None, "no confidence above 0.9 besides the forced top-1"
    goldens = {
        "what": "Golden decodes of tools/reference.py (NumPy, f32, temperature 0) on this "
                "fixture; regenerate with tools/make_tiny.py.",
        "seed": seed,
        "min_logit_gap": worst_gap, "min_decision_margin": worst_dec,
        "special_ids": spec["specials"],
        "prompts": [{"id": pid, "text": t, "chat": c, "ids": prompt_ids(spec, t, c)}
                    for pid, t, c in PROMPTS],
        "cases": cases,
    }
    return goldens, None


# ----------------------------------------------------------------------------- Dream (spec §3)

DREAM_CHAT_TEMPLATE = (
    "{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Dream's specials at small ids of their own: not the real Dream's (151643.., 151666) nor the LLaDA
# fixtures', so an engine that hard-codes ids fails. <|endoftext|> is BOS, EOS and pad.
DREAM_FIXTURES = {
    "tiny-dream": dict(
        d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, mlp=160, vocab=320,
        rope_theta=1000000.0, max_seq=512, gen_length=96,
        specials={"<|endoftext|>": 290, "<|im_start|>": 291, "<|im_end|>": 292, "<|mask|>": 293},
    ),
}


def dream_config_json(spec):
    sp = spec["specials"]
    return {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "bos_token_id": sp["<|endoftext|>"], "eos_token_id": sp["<|endoftext|>"],
        "hidden_act": "silu", "hidden_size": spec["d_model"], "initializer_range": 0.02,
        "intermediate_size": spec["mlp"], "mask_token_id": sp["<|mask|>"],
        "max_position_embeddings": spec["max_seq"], "max_window_layers": spec["n_layers"],
        "model_type": "Dream", "num_attention_heads": spec["n_heads"],
        "num_hidden_layers": spec["n_layers"], "num_key_value_heads": spec["n_kv_heads"],
        "pad_token_id": sp["<|endoftext|>"], "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": spec["rope_theta"], "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "float32", "transformers_version": "4.46.2", "use_cache": False,
        "use_sliding_window": False, "vocab_size": spec["vocab"],
    }


def dream_tokenizer_config(spec):
    specials = special_names(spec)
    return {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": n, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for i, n in sorted(specials.items())},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|endoftext|>", "chat_template": DREAM_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace",
        "mask_token": "<|mask|>", "model_max_length": spec["max_seq"],
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def dream_weights(spec, seed):
    """Seeded weights scaled like the LLaDA fixtures; q/k/v biases with half the standard
    deviation of their projection's output (q/k outputs ~3, v ~1), so they change decodes."""
    rng = np.random.default_rng(seed)
    d, m, v = spec["d_model"], spec["mlp"], spec["vocab"]
    hd = d // spec["n_heads"]
    qd = spec["n_heads"] * hd
    kvd = spec["n_kv_heads"] * hd

    def mat(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def vec(n, scale):
        return (rng.standard_normal(n) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(v, d, 1.0)}
    for i in range(spec["n_layers"]):
        b = f"model.layers.{i}."
        w[b + "input_layernorm.weight"] = norm(d)
        w[b + "self_attn.q_proj.weight"] = mat(qd, d, 3.0 / np.sqrt(d))
        w[b + "self_attn.q_proj.bias"] = vec(qd, 1.5)
        w[b + "self_attn.k_proj.weight"] = mat(kvd, d, 3.0 / np.sqrt(d))
        w[b + "self_attn.k_proj.bias"] = vec(kvd, 1.5)
        w[b + "self_attn.v_proj.weight"] = mat(kvd, d, 1.0 / np.sqrt(d))
        w[b + "self_attn.v_proj.bias"] = vec(kvd, 0.5)
        w[b + "self_attn.o_proj.weight"] = mat(d, qd, 1.0 / np.sqrt(qd))
        w[b + "post_attention_layernorm.weight"] = norm(d)
        w[b + "mlp.gate_proj.weight"] = mat(m, d, 1.0 / np.sqrt(d))
        w[b + "mlp.up_proj.weight"] = mat(m, d, 1.0 / np.sqrt(d))
        w[b + "mlp.down_proj.weight"] = mat(d, m, 1.0 / np.sqrt(m))
    w["model.norm.weight"] = norm(d)
    w["lm_head.weight"] = mat(v, d, 1.0)
    return w


def dream_prompt_ids(spec, text, chat):
    """Raw prompts: UTF-8 bytes, no BOS. Chat prompts: the checkpoint's chat_template rendered with
    jinja2 as transformers does, then special-token strings -> ids, everything else UTF-8 bytes."""
    if not chat:
        return list(text.encode("utf-8"))
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    rendered = env.from_string(DREAM_CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": text}], add_generation_prompt=True,
        bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    sp = spec["specials"]
    ids, i = [], 0
    while i < len(rendered):
        hit = next((t for t in sp if rendered.startswith(t, i)), None)
        if hit:
            ids.append(sp[hit])
            i += len(hit)
        else:
            ids.extend(rendered[i].encode("utf-8"))
            i += 1
    return ids


def dream_rules(spec):
    """(name, cache, rule, steps): the cases of every prompt (cached block length 32)."""
    g = spec["gen_length"]
    return [("entropy", "none", ("entropy",), g),
            ("entropy48", "none", ("entropy",), g // 2),
            ("thr0.9", "none", ("threshold", 0.9), g // 2),
            ("thr0.9", "prefix", ("threshold", 0.9), g),
            ("entropy", "prefix", ("entropy",), g),
            ("entropy24", "prefix", ("entropy",), g // 4),
            ("thr0.9", "dual", ("threshold", 0.9), g),
            ("thr0.7", "dual", ("threshold", 0.7), g),
            ("entropy", "dual", ("entropy",), g)]


def write_dream_fixture(out, name, spec, seed):
    sp = spec["specials"]
    return write_checkpoint(out / name / "checkpoint", dream_weights(spec, seed), {
        "config.json": dream_config_json(spec),
        "tokenizer.json": tokenizer_json(spec),
        "tokenizer_config.json": dream_tokenizer_config(spec),
        "generation_config.json": {"bos_token_id": sp["<|endoftext|>"], "eos_token_id": sp["<|endoftext|>"],
                                   "pad_token_id": sp["<|endoftext|>"], "mask_token_id": sp["<|mask|>"]},
        "special_tokens_map.json": {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
                                    "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                    "mask_token": "<|mask|>", "pad_token": "<|endoftext|>"},
    })


def check_dream_schedule(cname, cache, rule, steps, gen_length, commits):
    """Spec §3's worked examples of the timestep rule, asserted on every case they cover."""
    if rule[0] != "entropy":
        return
    if cache != "none" and steps // (gen_length // 32) == 32:
        want = [1, 0] + [1] * 29 + [2]
        for b in range(gen_length // 32):
            got = commits[32 * b: 32 * (b + 1)]
            assert got == want, f"{cname}: block {b} commits {got}, spec §3 says {want}"
    if cache == "none" and steps == gen_length:
        assert commits[0] == 0 and commits[-1] == 2, f"{cname}: commits {commits}"


def try_dream_seed(out, name, spec, seed):
    ck = write_dream_fixture(out, name, spec, seed)
    model = reference.DreamModel(ck)
    G = spec["gen_length"]
    cases = []
    worst_gap, worst_dec, worst_sched = float("inf"), float("inf"), float("inf")
    spread = False
    for pid, text, chat in PROMPTS:
        ids = dream_prompt_ids(spec, text, chat)
        for rname, cache, rule, steps in dream_rules(spec):
            cname = f"{pid}/{cache}/{rname}"
            try:
                r = reference.generate_dream(model, ids, G, 32, steps, cache, rule)
            except reference.MaskArgmax as e:
                return None, f"{cname}: {e}"
            m = r["margins"]
            if not m.ok():
                return None, f"{cname}: too close to a tie or mask argmax " \
                    f"(mask argmax {m.mask_argmax}, logit gap {m.logit_gap:.1e}, " \
                    f"decision {m.decision:.1e}, {m.where})"
            check_dream_schedule(cname, cache, rule, steps, G, r["commits"])
            worst_gap = min(worst_gap, m.logit_gap)
            worst_dec = min(worst_dec, m.decision)
            if r["schedule_gap"] is not None:
                worst_sched = min(worst_sched, r["schedule_gap"])
            thr = rule[1] if rule[0] == "threshold" else None
            if thr == 0.9 and max(r["commits"]) > 1:
                spread = True
            cases.append({
                "name": cname, "prompt": pid, "cache": cache, "rule": rule[0],
                "steps": steps, "threshold": thr, "factor": None,
                "gen_length": G, "block_length": 32,
                "tokens": r["tokens"], "nfe": r["nfe"], "forward_kinds": r["kinds"],
                "commits_per_forward": r["commits"],
                "min_logit_gap": m.logit_gap, "min_decision_margin": m.decision,
                "min_schedule_frac_gap": r["schedule_gap"],
            })
    if not spread:
        return None, "no confidence above 0.9 besides the forced top-1"
    goldens = {
        "what": "Golden decodes of tools/reference.py generate_dream (NumPy, f32, temperature 0, "
                "Dream's own loops of spec §3) on this fixture; regenerate with "
                "tools/make_tiny.py --only tiny-dream.",
        "family": "dream",
        "seed": seed,
        "min_logit_gap": worst_gap, "min_decision_margin": worst_dec,
        "min_schedule_frac_gap": worst_sched,
        "special_ids": spec["specials"],
        "prompts": [{"id": pid, "text": t, "chat": c, "ids": dream_prompt_ids(spec, t, c)}
                    for pid, t, c in PROMPTS],
        "cases": cases,
    }
    return goldens, None


def search(out, name, spec, try_fn):
    for seed in range(1, 200):
        goldens, why = try_fn(out, name, spec, seed)
        if goldens is None:
            print(f"{name}: seed {seed} rejected: {why}", flush=True)
            continue
        (out / name / "goldens.json").write_text(json.dumps(goldens, indent=1) + "\n")
        print(f"{name}: seed {seed} accepted, {len(goldens['cases'])} cases, "
              f"min logit gap {goldens['min_logit_gap']:.2e}, "
              f"min decision margin {goldens['min_decision_margin']:.2e}", flush=True)
        return
    sys.exit(f"{name}: no seed passed the margin checks")


# ----------------------------------------------------------------------------- infilling (issue 19)

# Per prompt, suffix texts tried in order until every case clears the margin checks; lengths
# differ between prompts so that a batch of the three mixes suffix lengths.
INFILL_SUFFIXES = {
    "p0": [" and goodbye.", " again, world!", " there.", " from dllm.", " of mine!", " hi"],
    "p1": [" 9, 10.", " 11, 12, 13.", " 7.", " 8, 9.", " 20.", " and so on.", " 100!"],
    "p2": [" So the answer is 42.", " It is 42.", " 42", " The sum is 42.", " Answer: 42."],
}


def infill_cases(model, family, spec, pid, ids, suffix):
    """Every mode of the fixture's goldens, decoded with `suffix` after the middle."""
    G = spec["gen_length"]
    if family == "dream":
        modes = [(f"{pid}/{c}/{n}", c, r, st) for n, c, r, st in dream_rules(spec)]
        run = lambda c, r, st: reference.generate_dream(model, ids, G, 32, st, c, r, suffix)  # noqa
    else:
        modes = []
        for cache in ("none", "prefix", "dual"):
            for rname, steps, thr, fac in rules(spec):
                rule = ("threshold", thr) if thr else ("factor", fac) if fac else ("quota",)
                modes.append((f"{pid}/{cache}/{rname}", cache, rule, steps))
        run = lambda c, r, st: reference.generate(model, ids, G, 32, st, c, r, suffix)  # noqa
    cases = []
    for cname, cache, rule, steps in modes:
        try:
            r = run(cache, rule, steps)
        except reference.MaskArgmax as e:
            return None, f"{cname}: {e}"
        m = r["margins"]
        if not m.ok():
            return None, f"{cname}: too close to a tie (logit gap {m.logit_gap:.1e}, decision {m.decision:.1e})"
        assert r["suffix"] == list(suffix), f"{cname}: the reference changed the suffix"
        cases.append({
            "name": cname, "prompt": pid, "cache": cache, "rule": rule[0], "steps": steps,
            "threshold": rule[1] if rule[0] == "threshold" else None,
            "factor": rule[1] if rule[0] == "factor" else None,
            "gen_length": G, "block_length": 32, "suffix": list(suffix),
            "tokens": r["tokens"], "nfe": r["nfe"], "forward_kinds": r["kinds"],
            "commits_per_forward": r["commits"],
            "min_logit_gap": m.logit_gap, "min_decision_margin": m.decision,
        })
    return cases, None


def write_infill_goldens(out, name, spec, family):
    """goldens_infill.json beside goldens.json: the reference with a suffix (issue 19), on the
    fixture's committed checkpoint (run after the fixture exists)."""
    doc = json.loads((out / name / "goldens.json").read_text())
    ck = out / name / "checkpoint"
    model = reference.DreamModel(ck) if family == "dream" else reference.Model(ck)
    cases, suffixes = [], {}
    for p in doc["prompts"]:
        for text in INFILL_SUFFIXES[p["id"]]:
            sfx = list(text.encode("utf-8"))
            got, why = infill_cases(model, family, spec, p["id"], p["ids"], sfx)
            if got is not None:
                cases += got
                suffixes[p["id"]] = text
                break
            print(f"{name}: {p['id']} suffix {text!r} rejected: {why}", flush=True)
        else:
            sys.exit(f"{name}: no suffix of {p['id']} passed the margin checks")
    goldens = {
        "what": "Infilling goldens: tools/reference.py with a fixed suffix after the masked middle "
                "(NumPy, f32, temperature 0); regenerate with tools/make_tiny.py --infill.",
        "family": family,
        "min_logit_gap": min(c["min_logit_gap"] for c in cases),
        "min_decision_margin": min(c["min_decision_margin"] for c in cases),
        "prompts": [dict(p, suffix_text=suffixes[p["id"]]) for p in doc["prompts"]],
        "cases": cases,
    }
    (out / name / "goldens_infill.json").write_text(json.dumps(goldens, indent=1) + "\n")
    print(f"{name}: {len(cases)} infilling cases, suffixes {suffixes}", flush=True)


def main():
    args = sys.argv[1:]
    infill = args[:1] == ["--infill"]
    if infill:
        args = args[1:]
    only = None
    if args[:1] == ["--only"]:
        if len(args) < 2:
            sys.exit("usage: make_tiny.py [--infill] [--only NAME] [OUT_DIR]")
        only, args = args[1], args[2:]
    known = list(FIXTURES) + list(DREAM_FIXTURES)
    if only is not None and only not in known:
        sys.exit(f"--only {only}: unknown fixture (known: {', '.join(known)})")
    out = Path(args[0]) if args else \
        Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    for name, spec in FIXTURES.items():
        if only in (None, name):
            if not infill:
                search(out, name, spec, try_seed)
            if name == "tiny-gqa":
                write_infill_goldens(out, name, spec, "llada")
    for name, spec in DREAM_FIXTURES.items():
        if only in (None, name):
            if not infill:
                search(out, name, spec, try_dream_seed)
            write_infill_goldens(out, name, spec, "dream")


if __name__ == "__main__":
    main()
