#!/usr/bin/env bash
# NFE, TPF and strict tok/s of every Fast-dLLM mode on the tiny fixtures, CPU backend, as a
# markdown table. Usage: tools/cpu_table.sh [path/to/dllm]   (default: target/release/dllm)
# Wall time is the whole generate call after model load (spec §1); each cell is the best of 3.
set -euo pipefail
bin=${1:-target/release/dllm}
root=$(cd "$(dirname "$0")/.." && pwd)
echo "| model | cache | rule | NFE | TPF | strict tok/s (gen tok/s) | ms/forward |"
echo "|---|---|---|---|---|---|---|"
for model in tiny-mha tiny-gqa; do
  dir=$root/tests/fixtures/$model/checkpoint
  gen=$([ $model = tiny-mha ] && echo 96 || echo 128)
  for cache in none prefix dual; do
    for rule in "--quota" "--threshold 0.9" "--threshold 0.7" "--factor 1.0"; do
      best=""
      for _ in 1 2 3; do
        # shellcheck disable=SC2086
        line=$("$bin" generate --model "$dir" --prompt "What is 12 plus 30?" --gen-length "$gen" \
               --cache "$cache" $rule --device cpu --json 2>/dev/null)
        best=$(python3 - "$line" "$best" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); r = d["rows"][0]
cur = (d["wall_s"], r["nfe"], len(r["generated_ids"]), d["strict_tokens"])
prev = sys.argv[2]
if prev:
    p = tuple(float(x) for x in prev.split())
    if p[0] <= cur[0]:
        cur = p
print(" ".join(str(x) for x in cur))
PY
)
      done
      read -r wall nfe gen_tok strict <<<"$best"
      python3 -c "
w,n,g,s=$wall,int(float($nfe)),int(float($gen_tok)),int(float($strict))
print(f'| $model | $cache | ${rule#--} | {n} | {g/n:.2f} | {s/w:.0f} ({g/w:.0f}) | {1e3*w/n:.2f} |')"
    done
  done
done
