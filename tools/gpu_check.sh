#!/usr/bin/env bash
# The one-call GPU check.
#
#   tools/gpu_check.sh stage   (here, with Rust): build the release binary and the test binaries,
#                              strip and pack them into stage/ (git-ignored) with the
#                              compute-sanitizer wheel; ≈ 35 MB, under the device tool's 64 MiB.
#   tools/gpu_check.sh run     (on the GPU machine, from the repository root, no Rust needed):
#                              find the cuBLAS libraries, run every test binary with
#                              DLLM_REQUIRE_GPU=1, the kernel tests under compute-sanitizer
#                              (memcheck, racecheck, initcheck), a short decode bench, and print a
#                              compact report last. Full logs go to $OUT (default /tmp/dllm-gpu).
#
# Device tool call, e.g.:  run(command="DLLM_GPU_BUDGET=300 bash tools/gpu_check.sh run", carry=["stage"], timeout_s=360)
# Budget: DLLM_GPU_BUDGET seconds (default 420) for the whole run, cold start not included; each
# step gets at most its own cap and what is left.
set -uo pipefail
cd "$(dirname "$0")/.."

stage() {
  set -e
  cargo build --release
  local list
  list=$(cargo test --release --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
')
  rm -rf stage && mkdir -p stage/bin
  cp target/release/dllm stage/bin/dllm
  # the kernels' fatbin, for cuobjdump's SASS on the GPU machine
  cp "$(ls -t target/release/build/dllm-*/out/dllm.fatbin | head -n 1)" stage/dllm.fatbin
  while read -r name exe; do
    cp "$exe" "stage/bin/test-$name"
  done <<<"$list"
  strip stage/bin/* 2>/dev/null || true
  tar czf stage/bins.tar.gz -C stage bin
  rm -rf stage/bin
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d stage \
    "nvidia-cuda-sanitizer-api==13.0.85" >/dev/null
  { git rev-parse HEAD; git status --porcelain | grep -q . && echo "(with uncommitted changes)" || true; } > stage/COMMIT
  du -sh stage
  ls -la stage
}

run() {
  local OUT=${OUT:-/tmp/dllm-gpu}
  mkdir -p "$OUT"
  local report="$OUT/report.md"
  : > "$report"
  say() { echo "$*" | tee -a "$report"; }
  local t_start=$SECONDS
  # The whole run must end inside one device call: every step gets at most what is left of
  # DLLM_GPU_BUDGET seconds (default 420), and a step with under 10 s left is skipped.
  local budget=${DLLM_GPU_BUDGET:-420}
  left() { # left CAP: seconds for the next step, at most CAP
    local l=$((budget - (SECONDS - t_start)))
    [ "$l" -gt "$1" ] && l=$1
    echo "$l"
  }
  within() { # within CAP CMD...: run CMD under `timeout` of what is left (rc 124 if none is)
    local s
    s=$(left "$1"); shift
    if [ "$s" -lt 10 ]; then echo "(skipped: device budget spent)"; return 124; fi
    timeout "$s" "$@"
  }

  tar xzf stage/bins.tar.gz -C stage
  chmod +x stage/bin/*
  export DLLM_BIN=$PWD/stage/bin/dllm

  say "# dllm GPU check"
  say ""
  say "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  say "- commit: $(tr '\n' ' ' < stage/COMMIT)"
  say "- card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi unavailable')"

  # cuBLAS lives in the machine's Python environment: find it once.
  local lt
  lt=$(find / -xdev -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -n 1)
  if [ -n "$lt" ]; then
    export LD_LIBRARY_PATH="$(dirname "$lt")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "- cuBLAS: $(dirname "$lt")"
  else
    say "- cuBLAS: libcublasLt.so.13 NOT FOUND"
  fi

  # compute-sanitizer: the machine's own (the staged wheel's ended every run with "Target
  # application terminated before first instrumented API call" on 2026-11-27), else the wheel
  local san
  san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null \
    || find / -xdev -name compute-sanitizer -type f -not -path "$PWD/*" 2>/dev/null | head -n 1)
  local whl
  whl=$(ls stage/nvidia_cuda_sanitizer_api-*.whl 2>/dev/null | head -n 1)
  if [ ! -x "$san" ] && [ -n "$whl" ]; then
    python3 -m zipfile -e "$whl" stage/san >/dev/null 2>&1 && chmod +x stage/san/nvidia/cu13/bin/* \
      && san=$PWD/stage/san/nvidia/cu13/bin/compute-sanitizer
  fi
  say "- compute-sanitizer: ${san:-not found}"
  say ""

  say "## Tests (DLLM_REQUIRE_GPU=1)"
  say ""
  say "| binary | result | time |"
  say "|---|---|---|"
  local t rc summary
  # The binaries that touch the GPU (the others are CPU-only and run in CI); DLLM_GPU_ALL_TESTS=1
  # runs every test binary.
  local bins="stage/bin/test-gpu stage/bin/test-cli"
  [ "${DLLM_GPU_ALL_TESTS:-0}" = 1 ] && bins="stage/bin/test-gpu $(ls stage/bin/test-* | grep -v test-gpu)"
  for bin in $bins; do
    local name=${bin##*/test-}
    t=$SECONDS
    DLLM_REQUIRE_GPU=1 within 150 "$bin" --test-threads=4 --nocapture > "$OUT/test-$name.log" 2>&1
    rc=$?
    summary=$(grep -E '^test result:' "$OUT/test-$name.log" | tail -n 1)
    say "| $name | $([ $rc -eq 0 ] && echo PASS || echo "FAIL (rc $rc)") ${summary#test result: } | $((SECONDS - t)) s |"
    if [ $rc -ne 0 ]; then
      grep -E -A12 '^---- |panicked' "$OUT/test-$name.log" | head -n 40 | sed 's/^/    /' | tee -a "$report"
    fi
  done
  # the errors measured (forced attention splits: in the log only)
  grep -h -E 'relative error|tokens equal|^tuned:|FP8' "$OUT/test-gpu.log" | grep -v 'splits Some' | sed 's/^/    /' | tee -a "$report"
  say ""

  say "## compute-sanitizer on the kernel tests"
  say ""
  # sanitize LABEL TOOL CMD...: run CMD under compute-sanitizer's TOOL, log it, report one line
  sanitize() {
    local label=$1 tool=$2
    shift 2
    t=$SECONDS
    within 60 "$san" --tool "$tool" --error-exitcode 9 "$@" > "$OUT/sanitizer-now.log" 2>&1
    rc=$?
    { echo "==== $label (rc $rc)"; cat "$OUT/sanitizer-now.log"; } >> "$OUT/sanitizer.log"
    summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-now.log" | tail -n 1)
    say "- $label: $([ $rc -eq 0 ] && echo clean || echo "FAIL (rc $rc)") — ${summary:-no summary} ($((SECONDS - t)) s)"
    [ $rc -ne 0 ] && grep -E '^=========' "$OUT/sanitizer-now.log" | head -n 20 | sed 's/^/    /' | tee -a "$report"
    rm -f "$OUT/sanitizer-now.log"
  }
  if [ -x "$san" ]; then
    for tool in memcheck racecheck initcheck; do
      sanitize "$tool" "$tool" stage/bin/test-gpu kernels_match_cpu_twins_f32 attention_splits fp8 \
        top_logprobs mixed_draws --test-threads=1
    done
    # the whole binary too: a real decode (graphs, every op) under memcheck
    sanitize "memcheck of \`dllm generate --device cuda\` (dual cache, graphs)" memcheck "$DLLM_BIN" generate \
      --device cuda --model tests/fixtures/tiny-gqa/checkpoint --prompt "What is 12 plus 30?" --gen-length 64 \
      --cache dual
  else
    say "- skipped: no compute-sanitizer"
  fi
  say ""

  say "## Short decode bench (tiny-gqa f32, gen 128, threshold 0.9; wall of the generate call)"
  say ""
  say "| device | cache | NFE | wall | ms/forward |"
  say "|---|---|---|---|---|"
  for dev in cuda cpu; do
    for cache in none prefix dual; do
      local line
      line=$(within 30 "$DLLM_BIN" generate --model tests/fixtures/tiny-gqa/checkpoint --prompt "What is 12 plus 30?" \
        --gen-length 128 --cache "$cache" --device "$dev" 2>&1 >/dev/null | grep '^NFE')
      local nfe wall ms
      nfe=$(echo "$line" | sed -n 's/^NFE \([0-9]*\).*/\1/p')
      wall=$(echo "$line" | sed -n 's/.*wall \([0-9.]* s\).*/\1/p')
      ms=$(echo "$line" | sed -n 's/.*| \([0-9.]* ms\/forward\).*/\1/p')
      say "| $dev | $cache | ${nfe:-?} | ${wall:-failed} | ${ms:-?} |"
    done
  done
  say ""

  say "## S1 on synthetic LLaDA-8B weights (dllm bench)"
  say ""
  within 150 "$DLLM_BIN" bench --synthetic llada-8b --device cuda --json "$OUT/s1.json" > "$OUT/s1.txt" 2>&1
  rc=$?
  cat "$OUT/s1.txt" | tee -a "$report"
  [ $rc -ne 0 ] && say "(rc $rc)"
  say ""

  say "### CUDA graphs off (s1-dual), for comparison"
  within 60 "$DLLM_BIN" bench --synthetic llada-8b --device cuda --variants s1-dual --no-graphs \
    2>&1 | grep -E '^\| s1-' | tee -a "$report"
  say ""
  say "### Per-op profile (s1-dual, s1-base)"
  within 120 "$DLLM_BIN" bench --synthetic llada-8b --device cuda --variants s1-dual,s1-base --profile \
    > "$OUT/s1-profile.txt" 2>&1
  sed -n '/^profile of/,$p' "$OUT/s1-profile.txt" | tee -a "$report"
  say ""
  # (run 6 measured DLLM_ATTENTION=simt: attention on CUDA cores only)
  say "### residual add and rmsnorm as two kernels (DLLM_UNFUSED=1), same card"
  DLLM_UNFUSED=1 within 60 "$DLLM_BIN" bench --synthetic llada-8b --device cuda --variants s1-dual,s1-dual-b4 \
    2>&1 | grep -E '^\| s1-' | sed 's/^| s1-/| unfused s1-/' | tee -a "$report"
  say ""
  say "### in-block attention key splits forced (DLLM_ATTENTION_SPLITS; automatic: 5 on an H100, 3 on CUDA cores)"
  for n in 3 12; do
    DLLM_ATTENTION_SPLITS=$n within 30 "$DLLM_BIN" bench --synthetic llada-8b --device cuda --variants s1-dual \
      2>&1 | grep -E '^\| s1-' | sed "s/^| s1-/| splits $n s1-/" | tee -a "$report"
  done
  say ""
  say "## S2: d3LLM's multi-block decoder on synthetic LLaDA-8B weights (dllm bench)"
  say ""
  within 90 "$DLLM_BIN" bench --synthetic llada-8b --device cuda --variants s2-mb,s2-kv \
    --json "$OUT/s2.json" > "$OUT/s2.txt" 2>&1
  rc=$?
  sed -n '/^workload S2/,$p' "$OUT/s2.txt" | tee -a "$report"
  [ $rc -ne 0 ] && say "(rc $rc)"
  say ""
  say "## FP8 weights (W8A8 e4m3, issue 17) on synthetic LLaDA-8B weights (dllm bench --weights fp8)"
  say ""
  within 120 "$DLLM_BIN" bench --synthetic llada-8b --device cuda --weights fp8 \
    --variants s1-prefix,s1-dual,s1-dual-b4,s1-dual-b16 --json "$OUT/s1-fp8.json" > "$OUT/s1-fp8.txt" 2>&1
  rc=$?
  grep -E '^(dllm bench|ceilings|\| )' "$OUT/s1-fp8.txt" | tee -a "$report"
  [ $rc -ne 0 ] && { say "(rc $rc)"; tail -n 5 "$OUT/s1-fp8.txt" | sed 's/^/    /' | tee -a "$report"; }
  say ""
  # Kernel times without launch gaps: Nsight Compute on our kernels (cuBLAS's excluded) of one S1
  # DualCache in-block step. Our kernels a forward: block start 166 (tensor-core attention, no
  # combine; 63 residual adds fused with the next norm), in-block 198; the bench runs a warm-up
  # (1 block start + 7 in-block steps), then s1-dual twice: skip the warm-up, S1's first block
  # start and first in-block step.
  local ncu_bin
  ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
  if [ -n "$ncu_bin" ]; then
    say "### Nsight Compute: our kernels over one S1 in-block DualCache step (graphs off)"
    t=$SECONDS
    within 150 "$ncu_bin" --kernel-name 'regex:^(embed|rmsnorm|rope|attention|swiglu|add|gather|argmax|select)' \
      --launch-skip 1916 --launch-count 198 --metrics gpu__time_duration.sum --print-summary per-kernel \
      "$DLLM_BIN" bench --synthetic llada-8b --device cuda --variants s1-dual --no-graphs > "$OUT/ncu.txt" 2>&1
    rc=$?
    say "(ncu rc $rc, $((SECONDS - t)) s; full output in ncu.txt)"
    grep -E '^ *(embed|rmsnorm|rope|attention|swiglu|add|gather|argmax|select)[a-z_0-9]*|gpu__time_duration' "$OUT/ncu.txt" \
      | sed -E 's/ +/ /g' | head -n 60 | sed 's/^/    /' | tee -a "$report"
    say ""
  else
    say "### Nsight Compute: skipped (no ncu)"
  fi
  if command -v cuobjdump >/dev/null && [ -f stage/dllm.fatbin ]; then
    say "### SASS of attention_bf16 (sm_90a): memory instructions"
    cuobjdump -sass -arch sm_90a -fun attention_bf16 stage/dllm.fatbin 2>&1 \
      | grep -oE '\b(LDG|STG|LDS|STS|SHFL)[.A-Z0-9]*' | sort | uniq -c | tr '\n' ';' | tee -a "$report"
    say ""
  fi
  say ""
  say "total: $((SECONDS - t_start)) s; logs in $OUT"
  echo
  echo "================ REPORT ================"
  cat "$report"
}

case "${1:-}" in
  stage) stage ;;
  run) run ;;
  *) echo "usage: $0 stage|run" >&2; exit 2 ;;
esac
