#!/usr/bin/env bash
# Behaviour snapshot of a dllm binary, to prove a refactor changes nothing a user can see:
#   tools/behaviour_check.sh snapshot BIN DIR   # write DIR/*.json|.err
#   tools/behaviour_check.sh diff DIR_A DIR_B   # byte diff of two snapshots (exit 1 if any)
# A snapshot is `dllm generate --json --trace` (stdout and stderr) on the embedded model and every
# fixture, in every cache mode with every rule (threshold, quota, factor, sampling with a seed;
# Dream: threshold and quota), two prompts as one batch; plus `dllm bench --synthetic tiny
# --device cpu --json`. Timings are masked (wall, tok/s, ms, GB/s, TFLOP/s); everything else —
# tokens, NFE, forward kinds, commits per forward, traces, texts, bench NFE and forward counts —
# must be byte-identical.
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot() {
  local bin=$1 out=$2 fixtures=tests/fixtures
  mkdir -p "$out"
  for model in embedded tiny-mha tiny-gqa tiny-dream; do
    local margs=()
    [ "$model" != embedded ] && margs=(--model "$fixtures/$model/checkpoint")
    for cache in none prefix dual; do
      for rule in "--threshold 0.9" "--quota" "--factor 1.0" "--temperature 0.8 --seed 3"; do
        if [ "$model" = tiny-dream ] && [[ "$rule" == *factor* || "$rule" == *temperature* ]]; then
          continue
        fi
        local name
        name="$model-$cache-$(echo "$rule" | tr -d ' -.')"
        # shellcheck disable=SC2086
        "$bin" generate "${margs[@]}" --device cpu --cache "$cache" $rule --gen-length 64 --json \
          --trace --prompt "What is 47 + 38?" --prompt "Hello world" >"$out/$name.json" \
          2>"$out/$name.err" || echo "exit $?" >>"$out/$name.err"
        mask_json "$out/$name.json" wall_s strict_tok_per_s forward_ms
        sed -i -E 's/wall [0-9.]+ s \| strict [0-9.]+ tok\/s \| [0-9.]+ ms\/forward//;
                   s/(loaded weights: [0-9]+ layers) in [0-9.]+ s/\1/' "$out/$name.err"
      done
    done
  done
  "$bin" bench --synthetic tiny --device cpu --json "$out/bench.json" >/dev/null 2>&1
  python3 - "$out/bench.json" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
counts = ("name", "batch", "nfe", "generated", "strict_tokens")
keep = [{k: v[k] for k in counts} for v in d["variants"]]
top = {k: d[k] for k in ("workload", "model", "preset", "scale", "dtype")}
json.dump({**top, "variants": keep}, open(p, "w"), sort_keys=True, indent=0)
PY
}

# Drop the named top-level keys of a JSON file (timings) and rewrite it canonically.
mask_json() {
  python3 - "$@" <<'PY'
import json, sys
p, keys = sys.argv[1], sys.argv[2:]
try:
    d = json.load(open(p))
except ValueError:
    sys.exit(0)  # an error run: stdout is empty, stderr holds the message
for k in keys:
    d.pop(k, None)
json.dump(d, open(p, "w"), sort_keys=True, indent=0)
PY
}

case "${1:-}" in
  snapshot) snapshot "$2" "$3" ;;
  diff) diff -r "$2" "$3" && echo "behaviour identical: $(ls "$2" | wc -l) files" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
