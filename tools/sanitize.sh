#!/usr/bin/env bash
# Run the CUDA test suite under compute-sanitizer (memcheck, then racecheck) and fail on any
# error the sanitizer reports, or on any failing test.
#
#   tools/sanitize.sh                 # every cuda-marked test, both tools
#   TOOLS=memcheck tools/sanitize.sh tests/test_balance.py   # one tool, chosen tests
#
# Needs a GPU and compute-sanitizer (CUDA toolkit; set SANITIZER=/path/to/compute-sanitizer).
# Triton JIT-compiles on first use: the run warms the kernel cache first without the sanitizer
# (so compilation is not sanitized), then runs under each tool. Sanitized runs are slow (10-100x):
# the large-tensor tests are deselected (they would take hours and need the memory twice).
set -euo pipefail

cd "$(dirname "$0")/.."
SANITIZER="${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}"
TOOLS="${TOOLS:-memcheck racecheck}"
TESTS=("$@")
[ ${#TESTS[@]} -eq 0 ] && TESTS=(tests)
SELECT=(-m cuda -k "not full_size and not test_distributed" -q -p no:cacheprovider)

if [ ! -x "$SANITIZER" ]; then
  echo "sanitize.sh: compute-sanitizer not found (set SANITIZER=...)" >&2
  exit 2
fi
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "sanitize.sh: no CUDA device visible to torch" >&2
  exit 2
fi

echo "== warm-up (no sanitizer)"
python -m pytest "${TESTS[@]}" "${SELECT[@]}"

status=0
for tool in $TOOLS; do
  log="$(mktemp -t "sanitize-${tool}.XXXX.log")"
  echo "== compute-sanitizer --tool $tool (log: $log)"
  # --error-exitcode makes any reported hazard fail the run; child processes (pytest spawns
  # for the compile checks) are followed; PyTorch's caching allocator hides use-after-free
  # from memcheck, so it is switched off.
  if ! PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" --error-exitcode 99 \
      --target-processes all --print-limit 100 --log-file "$log" \
      python -m pytest "${TESTS[@]}" "${SELECT[@]}"; then
    echo "sanitize.sh: $tool FAILED" >&2
    status=1
  fi
  if grep -Eq "ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [1-9]|Invalid (__global__|__shared__)" "$log"; then
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid" "$log" | head -20 >&2
    echo "sanitize.sh: $tool reported errors" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "sanitize.sh: clean ($TOOLS)"
exit $status
