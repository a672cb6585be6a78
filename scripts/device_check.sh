#!/usr/bin/env bash
# One prepared check of dqnx on an accelerator machine (issue 19), <= 8 minutes:
#
#   scripts/device_check.sh [--smoke] [--wheels DIR] [OUTDIR]     (OUTDIR default: $OUT, else ./device_check)
#
# 1. install: jax[cuda12] (skipped when the python already has a GPU backend) and
#    dqnx (pip install -e .; without a package index, from --wheels DIR or .whl/,
#    else dqnx's own code on PYTHONPATH);
# 2. devices: nvidia-smi, jax.devices(), the jax version;
# 3. the fast tests (tests/test_platform.py and the building blocks' tests);
# 4. scripts/bench_seeds.py: cartpole_reference.flags at 1, 64, 512, 2048 seeds,
#    breakout_minatar.flags at 1, 8, 64;
# 5. experiments/run.py breakout_minatar.flags at 8 seeds, timed;
# 6. scripts/bench.py on both configs, float32 and bfloat16 (CartPole at 2048
#    seeds, Breakout at 64), then Breakout with the other convolution;
# 7. scripts/device_report.py: OUTDIR/device_check.json (every step's JSON),
#    OUTDIR/report.md (the tables) and OUTDIR/log.txt; three files, so the
#    device tool brings all of them back.
#
# Every step runs under a time limit cut to what is left of DQNX_CHECK_BUDGET_S
# (default 450 s; steps that would not fit are skipped and reported), a failed
# step never stops the others, and the report is written whatever happened.
# --smoke: tiny sizes on any machine (CPU included), no install: tests/test_device_check.py.
set -u -o pipefail

SMOKE=0
WHEELS=""
OUTDIR=""
while (($#)); do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) OUTDIR="$1" ;;
  esac
  shift
done
OUTDIR="${OUTDIR:-${OUT:-device_check}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PARTS="$(mktemp -d /tmp/dqnx_device_check.XXXXXX)"
LOG="$OUTDIR/log.txt"
: >"$LOG"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
BUDGET=${DQNX_CHECK_BUDGET_S:-$((SMOKE ? 600 : 450))}
RESERVE=10 # seconds kept for the report

say() { echo "$*" | tee -a "$LOG"; }

# step NAME MAX_S MIN_S COMMAND...: runs COMMAND under min(MAX_S, time left);
# skipped when less than MIN_S is left. Appends its outcome to steps.jsonl.
step() {
  local name=$1 max=$2 min=$3
  shift 3
  local left=$((START + BUDGET - RESERVE - $(date +%s)))
  if ((left < min)); then
    say "=== $name: skipped (${left}s left of the ${BUDGET}s budget, needs ${min}s)"
    echo "{\"name\": \"$name\", \"status\": \"skipped\", \"rc\": null, \"seconds\": 0}" >>"$PARTS/steps.jsonl"
    return 0
  fi
  local limit=$((left < max ? left : max))
  say "=== $name (limit ${limit}s): $*"
  local t0 rc status
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local seconds
  seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  status=ok
  ((rc == 0)) || status=failed
  ((rc == 124 || rc == 137)) && status=timeout
  say "=== $name: $status (rc $rc, ${seconds}s)"
  echo "{\"name\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $seconds, \"limit_s\": $limit}" >>"$PARTS/steps.jsonl"
}

install() {
  if "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    echo "jax already has a GPU backend: $("$PY" -c 'import jax; print(jax.__version__)')"
  elif ! command -v nvidia-smi >/dev/null; then
    echo "no nvidia-smi: no NVIDIA GPU here, jax[cuda12] not installed"
  else
    "$PY" -m pip install -q --timeout 20 --retries 1 "jax[cuda12]<0.12" || echo "warning: jax[cuda12] not installed"
  fi
  local wheels="$WHEELS"
  [[ -z "$wheels" && -d .whl ]] && wheels=.whl
  if [[ -n "$wheels" ]]; then # carried wheels (a machine without a package index)
    "$PY" -m pip install -q --no-index --no-deps "$wheels"/*.whl || echo "warning: wheels from $wheels"
  fi
  "$PY" -m pip install -q --timeout 20 --retries 1 -e . ||
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . ||
    echo "warning: dqnx not installed; its code runs from PYTHONPATH=$ROOT"
  "$PY" -c "import dqnx, gymnax, flax, optax, orbax.checkpoint, tensorboardX, tqdm" # fails the step if missing
}

REF=experiments/configs/cartpole_reference.flags
BRK=experiments/configs/breakout_minatar.flags
if ((SMOKE)); then
  # Tiny: short chunks, small learners, one or two seeds; the same programs and files.
  SMALL=(--log_every=64 --learning_starts=64 --batch_size=16 --buffer_size=512 --eval_episodes=2)
  CART_SEEDS=1,2 BRK_SEEDS=1 CART_BENCH_SEEDS=2 BRK_BENCH_SEEDS=1 RUN_SEEDS=2
  CHUNKS=(--chunks=1)
  BENCH=(--iterations=8 --chunks=1 --matmul_size=64 --matmul_repeats=1 --hidden_sizes=8)
  RUN=(--total_steps=512 --eval_every=256 --hidden_sizes=8)
  TESTS=(tests/test_platform.py -k "choices_for or accelerators_turn")
else
  SMALL=()
  CART_SEEDS=1,64,512,2048 BRK_SEEDS=1,8,64 CART_BENCH_SEEDS=2048 BRK_BENCH_SEEDS=64 RUN_SEEDS=8
  CHUNKS=(--chunks=2)
  BENCH=(--iterations=500 --chunks=2)
  RUN=(--checkpoint_every=0 --notensorboard)
  # ~75 s on a 2-core CPU: the platform choices, compute dtypes and the learner's blocks.
  TESTS=(tests/test_platform.py tests/test_losses.py tests/test_replay.py tests/test_nstep.py
    tests/test_learner.py)
fi

say "# dqnx device check $( ((SMOKE)) && echo '(smoke) ')$(date -u +%FT%TZ) in $ROOT -> $OUTDIR"
if ((SMOKE)); then
  say "=== install: skipped (--smoke)"
else
  step install 240 30 install
fi
step devices 60 5 "$PY" scripts/device_report.py devices --out "$PARTS/devices.json"
nvidia-smi 2>&1 | tee -a "$LOG" || true
step tests 90 20 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step seeds_cartpole 150 30 "$PY" scripts/bench_seeds.py --flagfile=$REF --seeds=$CART_SEEDS \
  "${CHUNKS[@]}" "${SMALL[@]}" --out="$PARTS/seeds_cartpole.json"
step seeds_breakout 120 30 "$PY" scripts/bench_seeds.py --flagfile=$BRK --seeds=$BRK_SEEDS \
  "${CHUNKS[@]}" "${SMALL[@]}" --out="$PARTS/seeds_breakout.json"
rm -rf "$PARTS/run"
step run_breakout 150 40 "$PY" experiments/run.py --flagfile=$BRK --num_seeds=$RUN_SEEDS \
  "${SMALL[@]}" "${RUN[@]}" --workdir="$PARTS/run"
[[ -f "$PARTS/run/summary.json" ]] && cp "$PARTS/run/summary.json" "$PARTS/run_breakout.json"
for dtype in float32 bfloat16; do
  step "bench_cartpole_$dtype" 90 25 "$PY" scripts/bench.py --flagfile=$REF "${SMALL[@]}" \
    --num_seeds=$CART_BENCH_SEEDS --compute_dtype=$dtype "${BENCH[@]}" \
    --out="$PARTS/bench_cartpole_$dtype.json"
  step "bench_breakout_$dtype" 90 25 "$PY" scripts/bench.py --flagfile=$BRK "${SMALL[@]}" \
    --num_seeds=$BRK_BENCH_SEEDS --compute_dtype=$dtype "${BENCH[@]}" \
    --out="$PARTS/bench_breakout_$dtype.json"
done
# The other convolution than the platform's default, to settle --conv_impl=auto there.
OTHER=$("$PY" -c "from dqnx import platforms as p; print({'patches': 'xla', 'xla': 'patches'}[p.current().conv_impl])" 2>/dev/null || echo patches)
step "bench_breakout_float32_conv_$OTHER" 90 25 "$PY" scripts/bench.py --flagfile=$BRK "${SMALL[@]}" \
  --num_seeds=$BRK_BENCH_SEEDS --conv_impl="$OTHER" "${BENCH[@]}" \
  --out="$PARTS/bench_breakout_float32_conv_$OTHER.json"

"$PY" scripts/device_report.py report "$PARTS" --json "$OUTDIR/device_check.json" \
  --md "$OUTDIR/report.md" --total_s $(($(date +%s) - START)) 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
rm -rf "$PARTS"
exit "$rc"
