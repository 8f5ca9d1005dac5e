#!/usr/bin/env python3
"""Write a checkpoint directory shaped exactly like GSAI-ML/LLaDA-8B-Instruct, with seeded random
weights.

What it is for: showing that `dllm generate --device cpu --model OUT_DIR` (and the GPU paths) load
a real-size checkpoint laid out the way Hugging Face ships the real one, without downloading it:
the real config.json fields and values (spec §2), 291 BF16 tensors with the real names and
[out, in] shapes (16,031,162,368 bytes of tensor data = 8,015,581,184 parameters x 2) split over
the same six shards `model-0000N-of-00006.safetensors` as the real `model.safetensors.index.json`
(same tensor -> shard map: HF's greedy 3 GB sharding over the real checkpoint's tensor order),
the real tokenizer_config.json layout (special tokens at LLaDA's ids, chat template,
add_bos_token false), generation_config.json and special_tokens_map.json. The weights are noise, so
what such a model generates is noise too: this checks loading, memory and speed, never quality.

THE TOKENIZER IS A STAND-IN. The real tokenizer.json cannot be downloaded here, so tokenizer.json
is a byte-level BPE of the same size and layout: ids 0..255 are the 256 GPT-2 byte tokens, ids
256..126079 are 125,824 merged filler tokens (every pair of byte characters, then some triples, so
text encodes to multi-byte tokens as with a real BPE), and ids 126080..126348 are the real added
special tokens at their real ids (<|startoftext|> 126080, <|endoftext|> 126081, <|mdm_mask|> 126336,
<|start_header_id|> 126346, <|end_header_id|> 126347, <|eot_id|> 126348, [CLS], [gMASK], <role>,
</role>, ..., <|reserved_token_N|>). As in the real one, ids 126349..126463 (rows of the embedding
and LM head beyond the tokenizer) have no token. Token ids of ordinary text therefore differ from
the real tokenizer's; special-token ids and the chat template match. OUT_DIR/README.md says the
same. (JSON has no comments, so tokenizer.json itself cannot carry this note.)

Usage: python3 tools/make_llada8b.py OUT_DIR [--seed S] [--layers N]
  OUT_DIR   must not exist or be empty (never overwritten)
  --seed    weight seed (default 0); each tensor has its own stream, seeded by (seed, name), so a
            tensor's values do not depend on --layers or on how it is chunked
  --layers  number of blocks (default 32, the real model); fewer writes a shallow variant of the
            same width quickly (n_layers in config.json follows; the six-shard split is then
            HF's greedy split with the limit chosen to give at most six shards)
Disk: about 16 GB (15 GiB) for the full 32 layers, plus ~4 MB of JSON; each layer adds 436 MB to
the 2.07 GB of embeddings and LM head. Needs only NumPy (no torch, no safetensors package: the
safetensors format is written by hand). The full write took 64 s on a two-core machine
(disk-bound, ~250 MB/s; under 230 MB resident).

Weights: BF16 bit patterns of uniform values (a 65,536-entry lookup table indexed by PCG64 output),
with std 1/sqrt(fan_in) for linear layers, std 1 for the embeddings, and 1.0 +- 0.1 for the
RMSNorm weights; all finite.
"""

import argparse
import hashlib
import json
import math
import queue
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny import bytes_to_unicode  # noqa: E402  (the GPT-2 byte alphabet, shared)

# ----------------------------------------------------------------------------- shapes (spec §2)

D_MODEL = 4096
N_HEADS = 32
N_KV_HEADS = 32
MLP = 12288
VOCAB = 126464          # vocab_size = embedding_size: rows of wte and of the LM head
FULL_LAYERS = 32
FULL_TOTAL_BYTES = 16_031_162_368   # the real model.safetensors.index.json's metadata.total_size
FULL_PARAMS = 8_015_581_184
SHARD_LIMIT = 3_000_000_000         # HF max_shard_size "3GB": gives the real six-shard map
N_SHARDS = 6

# Elements per generated chunk: 8M bf16 = 16 MB out, 16 MB of random bits (and at most 64 MB of
# index temporaries inside np.take); with the writer queue, well under 256 MB live at once.
CHUNK = 8 * 1024 * 1024

PREFIX = "model.transformer."
# The order of a block's parameters in the real checkpoint (LLaDABlock registers attn_out, ff_out;
# LLaDALlamaBlock adds attn_norm, ff_norm, q/k/v_proj, ff_proj, up_proj).
BLOCK_KINDS = ["attn_out", "ff_out", "attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj",
               "ff_proj", "up_proj"]

SPECIAL = {  # LLaDA's real ids (spec §2)
    "<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
    "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348,
}
BPE_SIZE = 126080        # ids 0..126079: the BPE model's vocabulary (bytes + merged fillers)

CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)


def shape_of(kind):
    hd = D_MODEL // N_HEADS
    kvd = N_KV_HEADS * hd
    return {
        "attn_norm": [D_MODEL], "ff_norm": [D_MODEL],
        "q_proj": [D_MODEL, D_MODEL], "k_proj": [kvd, D_MODEL], "v_proj": [kvd, D_MODEL],
        "attn_out": [D_MODEL, D_MODEL],
        "ff_proj": [MLP, D_MODEL], "up_proj": [MLP, D_MODEL], "ff_out": [D_MODEL, MLP],
    }[kind]


def tensors(n_layers):
    """[(name, shape, std-or-'norm')] in the real checkpoint's storage order: wte, ln_f, then each
    block parameter kind for all blocks, the LM head `ff_out` heading the ff_out group. (This order
    with 3 GB shards reproduces the real weight_map exactly.)"""
    lin = lambda fan_in: 1.0 / math.sqrt(fan_in)  # noqa: E731
    out = [(PREFIX + "wte.weight", [VOCAB, D_MODEL], 1.0),
           (PREFIX + "ln_f.weight", [D_MODEL], "norm")]
    for kind in BLOCK_KINDS:
        if kind == "ff_out":
            out.append((PREFIX + "ff_out.weight", [VOCAB, D_MODEL], lin(D_MODEL)))
        for i in range(n_layers):
            shape = shape_of(kind)
            std = "norm" if kind.endswith("_norm") else lin(shape[1])
            out.append((f"{PREFIX}blocks.{i}.{kind}.weight", shape, std))
    return out


def nbytes(shape):
    return math.prod(shape) * 2


def greedy_shards(items, limit):
    """huggingface_hub's split: walk tensors in order, start a new shard when the next one would
    push the current shard past `limit` (a tensor larger than `limit` gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for it in items:
        n = nbytes(it[1])
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += n
    if cur:
        shards.append(cur)
    return shards


def plan_shards(items, n_layers):
    if n_layers == FULL_LAYERS:
        shards = greedy_shards(items, SHARD_LIMIT)
        assert len(shards) == N_SHARDS, len(shards)
        return shards
    total = sum(nbytes(s) for _, s, _ in items)
    limit = max(max(nbytes(s) for _, s, _ in items), -(-total // N_SHARDS))
    while len(greedy_shards(items, limit)) > N_SHARDS:
        limit = int(limit * 1.01) + 1
    return greedy_shards(items, limit)


# ----------------------------------------------------------------------------- weights

def bf16_bits(x):
    """float32 array -> bf16 bit patterns (uint16), round to nearest even."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def table_for(std):
    """65,536 bf16 values evenly spread over a uniform distribution: std `std` around 0, or
    1.0 +- 0.1 for 'norm'."""
    u = (np.arange(65536, dtype=np.float64) + 0.5) / 65536.0 * 2.0 - 1.0   # (-1, 1)
    vals = 1.0 + 0.1 * u if std == "norm" else u * (std * math.sqrt(3.0))
    t = bf16_bits(vals.astype(np.float32))
    assert np.isfinite((t.astype(np.uint32) << 16).view(np.float32)).all()
    return t


def tensor_seed(seed, name):
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "little")
    return np.random.SeedSequence([seed, h])


def chunks(seed, name, numel, table):
    bg = np.random.PCG64(tensor_seed(seed, name))
    done = 0
    while done < numel:
        n = min(CHUNK, numel - done)
        idx = bg.random_raw((n + 3) // 4).view("<u2")[:n]
        out = np.empty(n, np.uint16)
        np.take(table, idx, out=out, mode="wrap")   # idx < 65536 always: wrap never wraps
        yield out
        done += n


class Writer:
    """Writes buffers to a file on a background thread, so disk and generation overlap."""

    def __init__(self, f):
        self.f = f
        self.q = queue.Queue(maxsize=4)
        self.err = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while True:
            buf = self.q.get()
            if buf is None:
                return
            if self.err is None:
                try:
                    self.f.write(memoryview(buf).cast("B"))
                except BaseException as e:   # noqa: BLE001 -- re-raised in the main thread
                    self.err = e

    def put(self, buf):
        if self.err:
            raise self.err
        self.q.put(buf)

    def close(self):
        self.q.put(None)
        self.t.join()
        if self.err:
            raise self.err


class Progress:
    def __init__(self, total):
        self.total, self.done, self.t0, self.next = total, 0, time.time(), 0

    def add(self, n):
        self.done += n
        if self.done >= self.next or self.done == self.total:
            el = time.time() - self.t0
            rate = self.done / el / 1e6 if el > 0 else 0.0
            print(f"  {self.done / 1e9:6.2f} / {self.total / 1e9:.2f} GB  {el:6.1f} s  "
                  f"({rate:.0f} MB/s)", flush=True)
            self.next = self.done + 1_000_000_000


def write_shard(path, items, seed, progress):
    """One safetensors file: u64 LE header length, JSON header (padded with spaces to a multiple
    of 8), then the raw data. Tensors sorted by name, as safetensors' save_file lays them out."""
    items = sorted(items, key=lambda it: it[0])
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, _ in items:
        n = nbytes(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        w = Writer(f)
        try:
            for name, shape, std in items:
                table = table_for(std)
                for buf in chunks(seed, name, math.prod(shape), table):
                    w.put(buf)
                    progress.add(buf.nbytes)
        finally:
            w.close()
        assert f.tell() == 8 + len(hb) + off, (path, f.tell())
    return off


# ----------------------------------------------------------------------------- JSON files

def config_json(n_layers):
    """The real LLaDA-8B-Instruct config.json (its fields and values), n_layers aside."""
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": D_MODEL, "embedding_dropout": 0.0, "embedding_size": VOCAB,
        "eos_token_id": SPECIAL["<|endoftext|>"], "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": SPECIAL["<|mdm_mask|>"], "max_sequence_length": 4096,
        "mlp_hidden_size": MLP, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": N_HEADS, "n_kv_heads": N_KV_HEADS,
        "n_layers": n_layers, "pad_token_id": SPECIAL["<|endoftext|>"], "precision": "amp_bf16",
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.46.3", "use_cache": False, "vocab_size": VOCAB,
        "weight_tying": False,
    }


def added_tokens():
    """{id: content} of the real tokenizer's added tokens, 126080..126348."""
    toks = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126082: "[CLS]",
            126083: "[gMASK]"}
    for r in range(256):
        toks[126084 + r] = f"<|reserved_token_{r}|>"
    toks[126336] = "<|mdm_mask|>"            # takes reserved_token_252's place
    for i, t in enumerate(["<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>",
                           "<|number_start|>", "<|number_end|>", "<|start_header_id|>",
                           "<|end_header_id|>", "<|eot_id|>"]):
        toks[126340 + i] = t
    assert sorted(toks) == list(range(126080, 126349))
    for name, i in SPECIAL.items():
        assert toks[i] == name, (name, i)
    return toks


ADDITIONAL = ["<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>",
              "<|number_start|>", "<|number_end|>"]


def tokenizer_json():
    """Byte-level BPE stand-in: 256 byte tokens (ids 0..255), every pair of byte characters, then
    pair+character triples, up to id 126079, each with its merge; the added tokens after."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    # Byte order for building merges: printable ASCII (space first), newline/tab/CR, the high
    # bytes, the other control bytes -- so common text merges early, as in a real BPE.
    order = list(range(0x20, 0x7F)) + [0x0A, 0x09, 0x0D] + list(range(0x80, 0x100))
    order += [b for b in range(256) if b not in order]
    rank = {b: i for i, b in enumerate(order)}
    pairs = sorted(((a, b) for a in range(256) for b in range(256)),
                   key=lambda p: (max(rank[p[0]], rank[p[1]]), rank[p[0]], rank[p[1]]))
    merges = []
    for a, b in pairs:
        vocab[b2u[a] + b2u[b]] = len(vocab)
        merges.append(f"{b2u[a]} {b2u[b]}")
    done = False
    for a, b in pairs:
        for c in order:
            if len(vocab) == BPE_SIZE:
                done = True
                break
            left = b2u[a] + b2u[b]
            vocab[left + b2u[c]] = len(vocab)
            merges.append(f"{left} {b2u[c]}")
        if done:
            break
    assert len(vocab) == BPE_SIZE and sorted(vocab.values()) == list(range(BPE_SIZE))
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in sorted(added_tokens().items())]
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
                  "vocab": vocab, "merges": merges},
    }


def tokenizer_config():
    """The real LLaDA-8B-Instruct tokenizer_config.json layout."""
    return {
        "add_bos_token": False, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for i, t in sorted(added_tokens().items())},
        "additional_special_tokens": ADDITIONAL,
        "bos_token": "<|startoftext|>", "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "cls_token": "[CLS]",
        "eos_token": "<|endoftext|>", "fast_tokenizer": True, "gmask_token": "[gMASK]",
        "merges_file": None, "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast", "trust_remote_code": True,
        "vocab_file": None,
    }


def special_tokens_map():
    return {"additional_special_tokens": ADDITIONAL, "bos_token": "<|startoftext|>",
            "cls_token": "[CLS]", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def generation_config():
    return {"bos_token_id": SPECIAL["<|startoftext|>"], "eos_token_id": SPECIAL["<|endoftext|>"],
            "pad_token_id": SPECIAL["<|endoftext|>"], "transformers_version": "4.46.3"}


README = """# LLaDA-8B-Instruct-shaped checkpoint with RANDOM weights

Written by `tools/make_llada8b.py` of dllm (seed {seed}, {layers} layers). Not a usable model:
the weights are seeded noise, so generations are noise. It exists to check that a checkpoint laid
out exactly as Hugging Face ships GSAI-ML/LLaDA-8B-Instruct loads and runs, e.g.

    dllm generate --device cpu --model {out} --prompt "Hello"

- config.json: the real LLaDA-8B-Instruct fields and values{layers_note}.
- model-0000N-of-0000{n}.safetensors + model.safetensors.index.json: the real tensor names, shapes
  ([out, in]) and dtype (BF16){shard_note}; {total:,} bytes of tensor data.
- tokenizer_config.json, special_tokens_map.json, generation_config.json: the real layout, special
  token ids and chat template.
- tokenizer.json: A STAND-IN, not LLaDA's tokenizer. A byte-level BPE of the same size: byte tokens
  0..255, merged filler tokens 256..126079 (all byte pairs, then some triples), and LLaDA's real
  added special tokens at their real ids 126080..126348 (<|startoftext|> 126080, <|endoftext|>
  126081, <|mdm_mask|> 126336, <|start_header_id|> 126346, <|end_header_id|> 126347, <|eot_id|>
  126348). Ordinary text tokenizes to different ids than with the real tokenizer.
- No configuration_llada.py / modeling_llada.py (auto_map names them): transformers cannot load
  this directory with trust_remote_code; dllm does not need them.
"""


def dump(path, obj, indent=2, sort_keys=False):
    path.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=FULL_LAYERS)
    a = ap.parse_args()
    if a.layers < 1:
        ap.error("--layers must be at least 1")
    if a.seed < 0:
        ap.error("--seed must be non-negative")
    out = a.out_dir
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        sys.exit(f"error: {out} exists and is not an empty directory; refusing to overwrite it")

    t0 = time.time()
    items = tensors(a.layers)
    total = sum(nbytes(s) for _, s, _ in items)
    params = sum(math.prod(s) for _, s, _ in items)
    if a.layers == FULL_LAYERS:
        assert len(items) == 291, len(items)
        assert total == FULL_TOTAL_BYTES, total
        assert params == FULL_PARAMS, params
    shards = plan_shards(items, a.layers)
    n = len(shards)
    print(f"LLaDA-8B-shaped checkpoint -> {out}: {a.layers} layers, {len(items)} tensors, "
          f"{params:,} params, {total:,} bytes in {n} shards, seed {a.seed}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    dump(out / "config.json", config_json(a.layers))
    dump(out / "generation_config.json", generation_config())
    dump(out / "special_tokens_map.json", special_tokens_map())
    dump(out / "tokenizer_config.json", tokenizer_config())
    # tokenizers writes tokenizer.json with indent 2 (the real one is ~several MB either way).
    dump(out / "tokenizer.json", tokenizer_json())
    print(f"JSON files written ({time.time() - t0:.1f} s)", flush=True)

    weight_map = {}
    written = 0
    progress = Progress(total)
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{n:05d}.safetensors"
        size = sum(nbytes(s) for _, s, _ in shard)
        print(f"{fname}: {len(shard)} tensors, {size / 1e9:.2f} GB", flush=True)
        written += write_shard(out / fname, shard, a.seed, progress)
        for name, _, _ in shard:
            weight_map[name] = fname
    assert written == total and len(weight_map) == len(items)
    # HF writes the index with indent 2 and sorted keys.
    dump(out / "model.safetensors.index.json",
         {"metadata": {"total_size": total}, "weight_map": weight_map}, sort_keys=True)
    layers_note = "" if a.layers == FULL_LAYERS else f", except n_layers {a.layers} (real: 32)"
    shard_note = (" split over six shards exactly as the real index maps them"
                  if a.layers == FULL_LAYERS else f" split over {n} shards")
    (out / "README.md").write_text(README.format(
        seed=a.seed, layers=a.layers, out=out, layers_note=layers_note, n=n,
        shard_note=shard_note, total=total), encoding="utf-8")
    el = time.time() - t0
    print(f"done: {total:,} bytes of tensors in {el:.1f} s ({total / el / 1e6:.0f} MB/s)",
          flush=True)


if __name__ == "__main__":
    main()
