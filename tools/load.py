#!/usr/bin/env python3
"""Load a running `dllm serve` from N concurrent clients for T seconds (loopback only, bounded).

Each client sends completions requests back to back (prompts of mixed lengths, mixed decoding
modes) and records latency and generated tokens. At the end it prints throughput (requests/s,
generated tokens/s), p50/p99 latency, the error count, and — with --pid — the server's resident
memory sampled every few seconds (first, last, max), to show it stays flat.

With --diffusion-features the mix also holds issue 19's requests: n = 2 samples, top-k /
nucleus sampling, reveal-time logprobs, and infilling (a suffix), with rules and draws mixed in
one batch.

Usage:
    python3 tools/load.py --url http://127.0.0.1:8000 --clients 16 --seconds 300 [--pid PID]
                          [--diffusion-features]
Needs only the standard library.
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse

PROMPTS = ["What is 47 + 38?", "What is 12 + 9?", "Tom has 11 cards. He loses 7. Then he finds 3 more. "
           "How many cards does Tom have now?", "What is 90 + 19?", "Hi", "Mia has 4 apples. She buys 5 more. "
           "Then she gives away 2. How many apples does Mia have now?"]
MODES = [{}, {"cache": "prefix"}, {"threshold": 0.7}, {"cache": "none", "threshold": 0.9}, {"factor": 1.0}]
FEATURES = [{"n": 2, "temperature": 0.7, "seed": 5}, {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 9},
            {"logprobs": 3}, {"suffix": " So the answer is"}, {"logprobs": 2, "threshold": 0.7, "top_p": 0.5}]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--pid", type=int, help="server process to sample memory of")
    ap.add_argument("--api-key")
    ap.add_argument("--diffusion-features", action="store_true",
                    help="mix in n, top_k/top_p, logprobs and suffix requests")
    a = ap.parse_args()
    modes = MODES + FEATURES if a.diffusion_features else MODES
    u = urllib.parse.urlparse(a.url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"load.py only targets loopback, not {u.hostname}")
    if not (1 <= a.clients <= 256 and 0 < a.seconds <= 3600):
        sys.exit("--clients must be 1..256 and --seconds 0..3600")
    lock = threading.Lock()
    lat, errors, tokens, count = [], [], [0], [0]
    stop_at = time.time() + a.seconds
    headers = {"Content-Type": "application/json"}
    if a.api_key:
        headers["Authorization"] = f"Bearer {a.api_key}"

    def client(i):
        rng = random.Random(i)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=300)
        while time.time() < stop_at:
            with lock:
                if count[0] >= a.max_requests:
                    return
                count[0] += 1
            body = {"prompt": rng.choice(PROMPTS), "max_tokens": a.max_tokens, **rng.choice(modes)}
            t0 = time.time()
            try:
                conn.request("POST", "/v1/completions", json.dumps(body), headers)
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
                n = json.loads(data)["usage"]["completion_tokens"]
                with lock:
                    lat.append(time.time() - t0)
                    tokens[0] += n
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                with lock:
                    errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=300)

    mem = []
    t_start = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if a.pid:
            m = rss_kib(a.pid)
            if m:
                mem.append(m)
        time.sleep(2)
    wall = time.time() - t_start
    for t in threads:
        t.join()
    ok = len(lat)
    q = sorted(lat)
    p = lambda f: q[min(len(q) - 1, int(f * len(q)))] if q else float("nan")
    print(f"dllm load: {a.clients} clients, {wall:.0f} s, {ok} requests ok, {len(errors)} errors")
    print(f"  throughput: {ok / wall:.2f} requests/s, {tokens[0] / wall:.1f} generated tokens/s")
    print(f"  latency: p50 {p(0.5) * 1e3:.0f} ms, p99 {p(0.99) * 1e3:.0f} ms, mean "
          f"{(statistics.mean(lat) if lat else float('nan')) * 1e3:.0f} ms")
    if mem:
        print(f"  server RSS: first {mem[0] / 1024:.1f} MiB, last {mem[-1] / 1024:.1f} MiB, "
              f"max {max(mem) / 1024:.1f} MiB ({len(mem)} samples)")
        # one sample a minute (every 30th, 2 s apart): flat once the decode buffers are touched
        print("  server RSS each minute (MiB): " + " ".join(f"{m / 1024:.1f}" for m in mem[::30]))
    for e in errors[:5]:
        print("  error:", e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
