#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one call that fits the device budget
# (15 minutes in all, one command at most 10): build the CUDA extension, run the GPU tests,
# profile the BFN cases kernel by kernel, record the benchmarks. Each stage has its own time
# limit, so a slow one cannot eat the others, and everything lands under $OUT as it finishes:
#
#   $OUT/session.log     every stage's output, with its exit status and seconds
#   $OUT/profile.md      bench/profile_kernels.py over the BFN cases (device time per kernel)
#   $OUT/results.tar.gz  bench/results/<prefix>-* directories of the recorded runs
#
# From the repository root on the device machine (run tool, carry .whl for the torchgfn peer):
#   tools/gpu_session.sh                      # all stages
#   STAGES="build test" tools/gpu_session.sh  # some of them
#   PREFIX=h100 tools/gpu_session.sh          # results directories h100-* (default: from
#                                             # the card's name, h100 or h200; else gpu)
# Limits in seconds: LIMIT_BUILD LIMIT_TEST LIMIT_BFN LIMIT_ROLLOUT LIMIT_PROFILE LIMIT_SAMPLING
# (defaults 90 190 70 120 45 60), and TOTAL (580) for the whole run: a stage never runs past
# it, and one that finds under 10 s left is skipped. Run it with the device tool's timeout_s=600.
# A rehearsal without a GPU (what tests/test_bench_harness.py runs):
#   DEVICE=cpu QUICK=1 STAGES=profile PROFILE_CASES=cifar tools/gpu_session.sh
#
# torchgfn (the rollout and loss peer) is not on the device image: `tools/gpu_wheels.sh` puts
# its wheels under .whl here; this script installs whatever .whl holds.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-gpu_out}"
if [ -z "${PREFIX:-}" ]; then  # h100 / h200 from the card's name, else "gpu"
  PREFIX=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 \
    | grep -oiE 'h100|h200|a100|l40s' | head -n 1 | tr 'A-Z' 'a-z')
  PREFIX="${PREFIX:-gpu}"
fi
STAGES="${STAGES:-build test bfn rollout profile sampling}"
DEVICE="${DEVICE:-cuda}"
TOTAL="${TOTAL:-580}"  # seconds for the whole run: the device tool's timeout_s is at most 600
quick=()
[ -n "${QUICK:-}" ] && quick=(--quick)
mkdir -p "$OUT"
LOG="$OUT/session.log"
started="$(mktemp)"  # results written after this one are this run's
export PYTHONUNBUFFERED=1
summary=()

stage() {  # stage NAME LIMIT COMMAND...: run it under `timeout`, log it, note its status
  local name="$1" limit="$2"
  shift 2
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local left=$((TOTAL - SECONDS))  # never past the whole run's limit, whatever came before
  if [ "$left" -lt 10 ]; then
    summary+=("$name: skipped, ${left}s of TOTAL=${TOTAL}s left")
    echo "${summary[-1]}" | tee -a "$LOG"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local status=$?
  local line="$name: exit $status after $((SECONDS - began))s"
  [ $status -eq 124 ] && line="$line (time limit)"
  echo "$line" | tee -a "$LOG"
  summary+=("$line")
  return $status
}

{
  date -u
  nvidia-smi -L || true
  python3 -c "import torch, triton, numba, sys; print(sys.version.split()[0], 'torch',
torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__)"
  git rev-parse HEAD 2>/dev/null || true
} >>"$LOG" 2>&1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site
fi

bench=(python3 -m gfn_fast bench --device "$DEVICE" --min-seconds 0.3 "${quick[@]}")

# Order: what only a GPU can tell first (do the never-run CUDA paths pass, then the figures
# issues #5 and #6 wait for), then the kernel profile, then the families recorded before.
stage build "${LIMIT_BUILD:-90}" env GFN_FAST_CUDA=1 GFN_FAST_CUDA_ARCHS=90 MAX_JOBS=16 \
  python3 -m pip install --no-build-isolation --no-deps -e . \
  || { printf '%s\n' "${summary[@]}"; exit 1; }
# -v: each result is logged as it comes, so a run cut off at its limit still names its failures
stage test "${LIMIT_TEST:-190}" python3 -m pytest -m cuda -v -n 12 -p no:cacheprovider \
  --durations=15 tests
# --no-compile (here and in the profile): the BFN family has 13 cases, and a torch.compile
# row's first call (inductor, then Triton, on an empty cache) takes seconds each; issue #5's
# GPU bars are against eager and copy bandwidth, so those rows would only eat the stage's limit
stage bfn "${LIMIT_BFN:-70}" "${bench[@]}" --ops bfn --no-compile \
  --out "bench/results/$PREFIX-bfn"
stage rollout "${LIMIT_ROLLOUT:-120}" "${bench[@]}" --ops rollout \
  --out "bench/results/$PREFIX-rollout"
stage profile "${LIMIT_PROFILE:-45}" python3 bench/profile_kernels.py --ops bfn --device "$DEVICE" \
  --no-compile --cases "${PROFILE_CASES:-}" "${quick[@]}" --out "$OUT/profile.md"
stage sampling "${LIMIT_SAMPLING:-60}" "${bench[@]}" --ops sampling \
  --out "bench/results/$PREFIX-sampling"

fresh=()
for dir in bench/results/"$PREFIX"-*; do
  [ "$dir/results.jsonl" -nt "$started" ] && fresh+=("$dir")
done
[ ${#fresh[@]} -gt 0 ] && tar -czf "$OUT/results.tar.gz" "${fresh[@]}"
echo "== summary" | tee -a "$LOG"
printf '%s\n' "${summary[@]}" | tee -a "$LOG"
for dir in "${fresh[@]}"; do  # the reply carries the end of the output: the new figures
  echo "-- $dir"
  grep -E "gfn_fast|eager" "$dir/results.md" | cut -c1-160 | head -24
done
exit 0
