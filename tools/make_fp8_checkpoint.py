#!/usr/bin/env python3
"""Write an FP8 checkpoint the way llm-compressor's FP8_DYNAMIC scheme lays one out, without dllm:
the fixture tests/fp8_checkpoint.rs loads to prove dllm reads such checkpoints as they ship.

  - every linear weight but the LM head (llm-compressor's usual `ignore: ["lm_head"]`) as
    F8_E4M3, `<name>_scale` beside it: F32 (the model's dtype), shape [rows, 1],
    scale = absmax(row) / 448, codes = e4m3(clip(w / scale, ±448)) (ml_dtypes, round to nearest even);
  - embeddings, norms and the LM head as stored;
  - config.json with llm-compressor's quantization_config (compressed-tensors, float-quantized,
    channel weights, dynamic per-token activations); the other files copied.

    pip install numpy ml_dtypes
    python3 tools/make_fp8_checkpoint.py tests/fixtures/tiny-gqa/checkpoint tests/fixtures/tiny-gqa-fp8
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

LINEARS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out",  # LLaDA
           "o_proj", "gate_proj", "down_proj")                                         # Dream
LM_HEADS = ("model.transformer.ff_out.weight", "lm_head.weight")

QUANTIZATION_CONFIG = {
    "config_groups": {"group_0": {
        "input_activations": {"actorder": None, "block_structure": None, "dynamic": True,
                              "group_size": None, "num_bits": 8, "observer": None,
                              "observer_kwargs": {}, "strategy": "token", "symmetric": True,
                              "type": "float"},
        "output_activations": None,
        "targets": ["Linear"],
        "weights": {"actorder": None, "block_structure": None, "dynamic": False,
                    "group_size": None, "num_bits": 8, "observer": "minmax",
                    "observer_kwargs": {}, "strategy": "channel", "symmetric": True,
                    "type": "float"},
    }},
    "format": "float-quantized",
    "global_compression_ratio": None,
    "ignore": ["lm_head"],
    "kv_cache_scheme": None,
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        assert h["dtype"] == "F32", "the fixture generator reads F32 checkpoints"
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(h["shape"])
    return out


def write_safetensors(path, tensors):
    """tensors: name -> (safetensors dtype, shape, bytes); names sorted, header 8-byte aligned."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def quantize(w):
    scale = (np.abs(w).max(axis=1, keepdims=True) / np.float32(448.0)).astype(np.float32)
    codes = np.clip(w / scale, -448.0, 448.0).astype(ml_dtypes.float8_e4m3fn)
    return codes.view(np.uint8), scale


def main(src, dst):
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, w in read_safetensors(src / "model.safetensors").items():
        linear = w.ndim == 2 and name.split(".")[-2] in LINEARS and name not in LM_HEADS
        if linear:
            codes, scale = quantize(w)
            out[name] = ("F8_E4M3", w.shape, codes.tobytes())
            out[name + "_scale"] = ("F32", scale.shape, scale.astype("<f4").tobytes())
        else:
            out[name] = ("F32", w.shape, np.ascontiguousarray(w, dtype="<f4").tobytes())
    write_safetensors(dst / "model.safetensors", out)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIG
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, dst / f.name)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
