#!/usr/bin/env python3
"""The synthetic task of dllm's small trained model: GSM8K-style problems with worked lines and
one checkable final answer (`#### N`).

Two kinds, both several steps long:
- column addition of two 2-digit numbers, one line per column with the carry shown:
    question: "What is 58 + 67?"
    answer:   "8 + 7 = 15, carry 1\\n5 + 6 + 1 = 12\\n#### 125"
- short word problems over small numbers (two operations):
    question: "Mia has 7 apples. She buys 5 more. Then she gives away 3. How many apples does Mia have now?"
    answer:   "7 + 5 = 12\\n12 - 3 = 9\\n#### 9"

Usage:
    python3 tools/arith_task.py write DIR   # DIR/test.jsonl (500 held-out) + DIR/fewshot.jsonl (8)
The held-out set and the few-shot examples are drawn from seeds disjoint from training, and
training skips any question that appears in them (`is_held_out`).
"""

import json
import random
import sys
from pathlib import Path

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Eva", "Max", "Ivy", "Ben", "Ada", "Kai"]
ITEMS = ["apples", "books", "coins", "cards", "pens", "shells", "stamps", "marbles"]


def addition(rng):
    a = rng.randint(10, 99)
    b = rng.randint(10, 99)
    q = f"What is {a} + {b}?"
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry = s // 10
        lines.append(f"{terms} = {s}" + (", carry 1" if carry else ""))
    lines.append(f"#### {a + b}")
    return q, "\n".join(lines)


def word(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    n = rng.randint(2, 15)
    q = f"{name} has {n} {item}."
    lines = []
    ops = 2
    for k in range(ops):
        if (rng.random() < 0.5 or n < 2) and n < 40:
            m = rng.randint(1, 9)
            phrase = "buys {} more" if rng.random() < 0.5 else "finds {} more"
            lines.append(f"{n} + {m} = {n + m}")
            n2 = n + m
        else:
            m = rng.randint(1, min(9, n - 1))
            phrase = "gives away {}" if rng.random() < 0.5 else "loses {}"
            lines.append(f"{n} - {m} = {n - m}")
            n2 = n - m
        sub = "She" if name in ("Mia", "Ava", "Zoe", "Eva", "Ivy", "Ada") else "He"
        join = " Then" if k > 0 else ""
        q += f"{join} {sub.lower() if join else sub} " + phrase.format(m) + "."
        n = n2
    q += f" How many {item} does {name} have now?"
    lines.append(f"#### {n}")
    return q, "\n".join(lines)


def problem(rng, word_share=0.5):
    return addition(rng) if rng.random() < 1.0 - word_share else word(rng)


def held_out(n=500, seed=2026):
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        q, a = problem(rng)
        if q not in seen:
            seen.add(q)
            out.append({"question": q, "answer": a})
    return out


def fewshot(n=8, seed=7):
    rng = random.Random(seed)
    test = {p["question"] for p in held_out()}
    out = []
    while len(out) < n:
        q, a = problem(rng)
        if q not in test:
            out.append({"question": q, "answer": a})
    return out


_HELD = None


def is_held_out(q):
    global _HELD
    if _HELD is None:
        _HELD = {p["question"] for p in held_out()} | {p["question"] for p in fewshot()}
    return q in _HELD


def train_stream(seed, word_share=0.5):
    """Endless training problems, never a held-out or few-shot question. `word_share` only tilts
    the training mixture; the held-out set is always drawn half and half."""
    rng = random.Random(seed)
    while True:
        q, a = problem(rng, word_share)
        if not is_held_out(q):
            yield q, a


def final_number(text):
    """What an evaluator extracts (the Rust side has its own, tested): `#### N`, else the last
    number."""
    import re
    m = re.search(r"####\s*(-?[\d,]+)", text)
    if m:
        return m.group(1).replace(",", "")
    nums = re.findall(r"-?\d[\d,]*", text)
    return nums[-1].replace(",", "") if nums else None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        d = Path(sys.argv[2])
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "test.jsonl", "w") as f:
            for p in held_out():
                f.write(json.dumps(p) + "\n")
        with open(d / "fewshot.jsonl", "w") as f:
            for p in fewshot():
                f.write(json.dumps(p) + "\n")
        print(f"wrote {d}/test.jsonl (500) and {d}/fewshot.jsonl (8)")
    else:
        rng = random.Random(0)
        for _ in range(4):
            q, a = problem(rng)
            print(q)
            print(a)
            print()
