#!/usr/bin/env bash
# The paper's ablation table as one sweep: full model + 8 ablation rows + TalkingGaussian-like baseline,
# over seeds (and subjects); every run scores its best checkpoint on the held-out test clips (test.enabled in
# the experiments), then the table (every column from the runs themselves).
#
#   scripts/sweep_ablation.sh                       # CPU, synthetic data at demo scale, here (≈ 15 min per run)
#   scripts/sweep_ablation.sh slurm                 # MEAD subjects on a SLURM cluster, one GPU job per run
#   SUBJECTS=M003,M030,W015 SEEDS=0,1,2 scripts/sweep_ablation.sh slurm hydra.launcher.partition=a100
#   SCALE=tiny SEEDS=0 scripts/sweep_ablation.sh    # a minutes-long smoke version of the whole sweep
#
# Resumable: every run is started with resume=true, so a rerun (after a kill, or in a later session) skips the
# finished runs and their evaluations and continues the interrupted ones. Locally the seeds run one after the
# other (all rows of seed 0, then of seed 1, …) and the table is rewritten after each: a one-seed table early.
# Environment: SCALE (local: demo | tiny; default demo), SEEDS (default 0,1,2), SUBJECTS (slurm),
# UA3DTALK_ROOT (where outputs/ go; default .), PY (the Python). Extra arguments are Hydra overrides.
# Runs land in outputs/runs/<scale>/<experiment>[+<variant>]/<subject>/seed<k>/ (and in wandb with
# logger=wandb: group = experiment@scale, tags = components); the table in outputs/tables/ablation.{md,tex}.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-local}"; shift || true
SEEDS="${SEEDS:-0,1,2}"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
ROOT="${UA3DTALK_ROOT:-.}"
export WANDB_MODE="${WANDB_MODE:-offline}" UA3DTALK_ROOT="$ROOT"
case "$MODE" in
  local)  SCALE="${SCALE:-demo}"; args=("scale=$SCALE" resume=true) ;;
  slurm)  SCALE=paper; args=(launcher=slurm trainer=gpu "seed=$SEEDS" "data.subject=${SUBJECTS:-M003}" resume=true) ;;
  *) echo "usage: $0 [local|slurm] [hydra overrides...]" >&2; exit 2 ;;
esac
case "$SCALE" in tiny|demo|paper) ;; *) echo "$0: SCALE must be tiny or demo, got '$SCALE'" >&2; exit 2 ;; esac
tables() {
  mkdir -p "$ROOT/outputs/tables"
  "$PY" -m ua3dtalk.cli.tables --runs "$ROOT/outputs/runs/$SCALE" --table ablation --out "$ROOT/outputs/tables/ablation.md"
  "$PY" -m ua3dtalk.cli.tables --runs "$ROOT/outputs/runs/$SCALE" --table ablation --format latex \
    --out "$ROOT/outputs/tables/ablation.tex"
}
start=$(date +%s)
if [ "$MODE" = local ]; then
  # one seed after the other (every row, then the next seed): after each seed the table holds every row
  IFS=, read -ra seed_list <<< "$SEEDS"
  for s in "${seed_list[@]}"; do
    "$PY" -m ua3dtalk.cli.train -m grid=ablation "${args[@]}" "seed=$s" "$@"
    tables
    echo "sweep_ablation: seed $s done, $(( $(date +%s) - start )) s since the start"
  done
else
  "$PY" -m ua3dtalk.cli.train -m grid=ablation "${args[@]}" "$@"
  tables
fi
cat "$ROOT/outputs/tables/ablation.md"
echo "sweep_ablation: $(( $(date +%s) - start )) s wall for the sweep and the tables (scale $SCALE, seeds $SEEDS)"
