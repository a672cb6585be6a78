#!/usr/bin/env bash
# The MinAtar results table (issue 17): every game x {Double DQN, M-DQN, QR-DQN,
# Rainbow-full}, SEEDS seeds vmapped in one program each, STEPS env steps per seed.
#
#   scripts/minatar_table.sh [RUNS_DIR] [OUT_DIR]      (default runs/minatar, experiments/results)
#   SEEDS=3 STEPS=2000000 GAMES="breakout asterix" LEARNERS="dqn mdqn" scripts/minatar_table.sh
#
# Each (game, learner) is one experiments/run.py in RUNS_DIR/GAME-LEARNER; an interrupted
# one resumes from its last checkpoint, so the script can be stopped and started again.
# A finished one (summary.json at STEPS) has its record (summary.json, config.json,
# metrics.jsonl: ~20 KB, no checkpoints) copied to OUT_DIR/minatar/GAME-LEARNER, which is
# kept in the repository: a record there counts as done, so the table fills in over
# several sessions or machines. Then, per game, scripts/plot.py draws the recorded
# learners' greedy-evaluation curves (OUT_DIR/minatar_GAME.png) and writes their final
# mean, IQM, min, max and 95% bootstrap CI (OUT_DIR/minatar_GAME.md): every learner
# recorded for the game, whichever LEARNERS ran; one not yet run is left out. Last,
# scripts/minatar_aggregate.py draws the aggregate over games (IQM with stratified-bootstrap
# intervals, performance profiles, normalized by Double DQN per game) into
# OUT_DIR/minatar_aggregate.png and .md.
#
# Learners (the game's flagfile otherwise):
#   dqn   GAME_minatar.flags (Double DQN)
#   mdqn  + --munchausen (tau 0.03, alpha 0.9, l0 -1, Vieillard et al., 2020)
#   qr    + --learner=qr --num_quantiles=51 (kappa 1; Double selection as the flagfile): 51
#         quantiles as the MinAtar QR-DQN of Obando-Ceron & Castro (2021), whose configs
#         (quantile_*.gin) set num_atoms = 51; the learner costs 1.3x Double DQN's per
#         update on Breakout-MinAtar against 2.9x with QR-DQN's default 200
#   rainbow_full  GAME_minatar_rainbow_full.flags (C51 + prioritized + 3-step + dueling + noisy)
# PLOT_ONLY=1 runs nothing: it redraws the plots and tables from the records.
set -eu -o pipefail

RUNS=${1:-runs/minatar}
OUT=${2:-experiments/results}
SEEDS=${SEEDS:-3}
STEPS=${STEPS:-2000000}
ALL_GAMES="asterix breakout freeway seaquest space_invaders"
GAMES=${GAMES:-$ALL_GAMES}
ALL_LEARNERS="dqn mdqn qr rainbow_full"
LEARNERS=${LEARNERS:-$ALL_LEARNERS}
cd "$(dirname "$0")/.."
mkdir -p "$RUNS" "$OUT"

finished() {  # $1: run dir (or record)
  python - "$1" "$STEPS" "$SEEDS" <<'EOF'
import json, sys
from pathlib import Path
p = Path(sys.argv[1]) / "summary.json"
s = json.loads(p.read_text()) if p.exists() else {}
ok = s.get("env_steps_per_seed", 0) >= int(sys.argv[2]) and s.get("num_seeds") == int(sys.argv[3])
sys.exit(0 if ok else 1)
EOF
}

# All games in one file: the per-game tables under a heading each. Written after every
# game, so it follows the per-game tables while a long invocation is still running.
write_summary() {
  {
    echo "# MinAtar: final greedy return, $SEEDS seeds x $STEPS env steps (scripts/minatar_table.sh)"
    for g in $ALL_GAMES; do
      if [ -f "$OUT/minatar_$g.md" ]; then
        echo
        echo "## $g"
        echo
        grep '^|' "$OUT/minatar_$g.md"
      fi
    done
  } > "$OUT/minatar.md"
  echo "wrote $OUT/minatar.md"
}

for game in $GAMES; do
  dirs=()
  labels=()
  for learner in $LEARNERS; do
    case $learner in
      dqn) flags=(--flagfile=experiments/configs/${game}_minatar.flags) ;;
      mdqn) flags=(--flagfile=experiments/configs/${game}_minatar.flags --munchausen) ;;
      qr) flags=(--flagfile=experiments/configs/${game}_minatar.flags --learner=qr --num_quantiles=51) ;;
      rainbow_full) flags=(--flagfile=experiments/configs/${game}_minatar_rainbow_full.flags) ;;
      *) echo "unknown learner: $learner (dqn, mdqn, qr, rainbow_full)" >&2; exit 2 ;;
    esac
    dir="$RUNS/$game-$learner"
    record="$OUT/minatar/$game-$learner"
    if finished "$record"; then
      echo "recorded: $record"
    elif [ "${PLOT_ONLY:-0}" = 1 ]; then
      echo "not run yet: $game $learner"
    else
      if ! finished "$dir"; then
        echo "run: $dir"
        python experiments/run.py "${flags[@]}" --num_seeds="$SEEDS" --total_steps="$STEPS" \
          --eval_every=$((STEPS / 10)) --checkpoint_every=$((STEPS / 10)) --workdir="$dir"
      fi
      mkdir -p "$record"
      cp "$dir/summary.json" "$dir/config.json" "$dir/metrics.jsonl" "$record/"
      echo "recorded: $record"
    fi
  done
  # Every recorded learner of the game goes into its plot and table, not only LEARNERS.
  for learner in $ALL_LEARNERS; do
    if finished "$OUT/minatar/$game-$learner"; then
      dirs+=("$OUT/minatar/$game-$learner")
      labels+=("$learner")
    fi
  done
  if [ ${#dirs[@]} -gt 0 ]; then
    label_list=$(IFS=,; echo "${labels[*]}")
    python scripts/plot.py "${dirs[@]}" --labels "$label_list" --title "$game (MinAtar)" \
      --out "$OUT/minatar_$game.png" --table "$OUT/minatar_$game.md"
  fi
  write_summary
done
python scripts/minatar_aggregate.py --records "$OUT/minatar" --out "$OUT/minatar_aggregate.png" \
  --table "$OUT/minatar_aggregate.md" || echo "no aggregate yet: it needs Double DQN's records"
