#!/usr/bin/env python3
"""The README's pictures (issue 20), each from a file dllm writes, as PNG + SVG under docs/img/.

  python3 tools/plot.py sweep docs/img/sweep.json
      `dllm eval --sweep FILE`: accuracy against tokens per forward and against strict tok/s,
      a colour per cache mode, a line per rule along its parameter (threshold ●, factor ■, quota ▲),
      the baseline marked.
  python3 tools/plot.py s1 docs/gpu-runs/2026-11-27-h100-run12.md
      a GPU check report (tools/gpu_check.sh): the per-op share of S1's forwards (stacked bars:
      s1-dual, mostly in-block DualCache steps; s1-base, every forward a full-canvas block start),
      and S1-dual's tok/s against batch size beside the ceiling its floors allow.

    pip install matplotlib
"""
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
CACHE_STYLE = {"none": ("tab:gray", "no cache"), "prefix": ("tab:blue", "PrefixCache"),
               "dual": ("tab:green", "DualCache")}
RULE_MARKER = {"threshold": "o", "factor": "s", "quota": "^"}


def save(fig, name):
    OUT.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(OUT / f"{name}.{ext}", dpi=130, bbox_inches="tight",
                    metadata={"Date": None} if ext == "svg" else None)
    print(f"wrote {OUT / name}.png and .svg")


def sweep(path):
    data = json.loads(Path(path).read_text())
    pts = data["points"]
    base = next(p for p in pts if p["name"].startswith("baseline"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, x, label, log in ((axes[0], "tpf", "tokens per forward (TPF)", True),
                              (axes[1], "strict_tok_per_s", "strict tok/s (CPU)", False)):
        for cache, (color, name) in CACHE_STYLE.items():
            # one line per cache mode and rule, along the rule's parameter
            for rule, marker in RULE_MARKER.items():
                mine = sorted((p for p in pts if p["cache"] == cache and p["rule"] == rule and p is not base),
                              key=lambda p: p["value"])
                if mine:
                    ax.plot([p[x] for p in mine], [100 * p["accuracy"] for p in mine], "-" + marker,
                            color=color, alpha=0.75, ms=5, label=name if rule == "threshold" else None)
        ax.plot(base[x], 100 * base["accuracy"], "*", color="black", ms=14, label="baseline (1 token/step)")
        ax.set_xlabel(label)
        if log:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for rule, m in RULE_MARKER.items():
        axes[1].plot([], [], m, color="black", label=rule)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"{data['model']}: {data['problems']} held-out problems, gen {data['gen_length']}, "
                 f"block {data['block_length']}, batch {data['batch_size']}, on {data['device']}",
                 fontsize=10)
    save(fig, "sweep")


def md_profile(text, variant):
    """{op: total ms} of the report's `profile of VARIANT` table."""
    m = re.search(rf"^profile of {re.escape(variant)} .*?\n\|.*?\n\|.*?\n((?:\|.*\n)+)", text, re.M)
    # "linear gate|up" holds the table's separator: protect it before splitting
    lines = m.group(1).replace("gate|up", "gate/up").strip().splitlines()
    rows = [line.split("|")[1:-1] for line in lines]
    return {r[0].strip(): float(r[2]) for r in rows}


def md_s1(text):
    """{variant: (batch, tok/s, block-start floor ms, in-block floor ms)} of the S1 table."""
    out = {}
    for m in re.finditer(r"^\| (s1-[\w-]+) \| (\d+) \| \d+ \| [\d.]+ \| [\d.]+ \| ([\d.]+) \| "
                         r"[\d.]+ \(([\d.]+), [\d.]+×\) \| [\d.]+ \(([\d.]+), [\d.]+×\) \|", text, re.M):
        out.setdefault(m.group(1), (int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5))))
    return out


def s1(path):
    text = Path(path).read_text()
    card = re.search(r"^- card: ([^,\n]+)", text, re.M).group(1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    ax = axes[0]
    profiles = {"s1-dual: 72 in-block\n+ 8 block starts": md_profile(text, "s1-dual"),
                "s1-base: 80 full-canvas\nforwards (block starts)": md_profile(text, "s1-base")}
    groups = {"GEMMs (q|k|v, o, gate|up, down)": ["linear qkv", "linear o", "linear gate/up", "linear down"],
              "LM head": ["lm head"], "attention": ["attention"], "RoPE + KV write": ["rope + kv write"],
              "norms, residual, SwiGLU": ["rmsnorm", "residual add + rmsnorm", "residual add", "swiglu"],
              "argmax, select, embed, gather": ["argmax + confidence", "select", "embed", "gather block"]}
    colors = plt.cm.tab10.colors
    for i, (label, prof) in enumerate(profiles.items()):
        total, bottom = sum(prof.values()), 0.0
        for j, (g, ops) in enumerate(groups.items()):
            share = 100 * sum(prof.get(o, 0.0) for o in ops) / total
            ax.bar(i, share, bottom=bottom, color=colors[j], label=g if i == 0 else None, width=0.55)
            if share > 4:
                ax.text(i, bottom + share / 2, f"{share:.0f}%", ha="center", va="center", fontsize=8)
            bottom += share
    ax.set_xticks(range(len(profiles)), list(profiles))
    ax.set_ylabel("% of the forwards' time")
    ax.set_title("where S1's time goes (per-op device marks)", fontsize=10)
    ax.set_xlim(-0.6, 2.4)
    ax.legend(fontsize=7, loc="center right")
    ax = axes[1]
    rows = md_s1(text)
    dual = sorted((v for k, v in rows.items() if k.startswith("s1-dual")), key=lambda v: v[0])
    batch = [b for b, *_ in dual]
    # S1: 256 tokens a row, 8 block starts and 72 in-block steps at their floors
    ceiling = [256 * b / ((8 * fs + 72 * fi) / 1e3) for b, _, fs, fi in dual]
    ax.plot(batch, [t for _, t, *_ in dual], "o-", color="tab:green", label="S1-dual measured")
    ax.plot(batch, ceiling, "--", color="black", label="ceiling from the floors")
    for b, t, c in zip(batch, [t for _, t, *_ in dual], ceiling):
        ax.annotate(f"{t:.0f} ({100 * t / c:.0f}% of {c:.0f})", (b, t), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch, [str(b) for b in batch])
    ax.set_xlabel("batch size")
    ax.set_ylabel("tok/s")
    ax.set_title("tok/s against batch size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"S1 (LLaDA-8B shape, bf16, prompt 512, gen 256, 80 steps) on one {card}: "
                 f"{Path(path).name}", fontsize=10)
    save(fig, "s1")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("sweep", "s1"):
        sys.exit(__doc__)
    {"sweep": sweep, "s1": s1}[sys.argv[1]](sys.argv[2])
