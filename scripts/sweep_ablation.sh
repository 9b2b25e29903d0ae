#!/usr/bin/env bash
# The paper's ablation table as one sweep: full model + 8 ablation rows + TalkingGaussian-like baseline,
# over seeds (and subjects); every run scores its best checkpoint on the held-out test clips (test.enabled in
# the experiments), then the table (every column from the runs themselves).
#
#   scripts/sweep_ablation.sh                       # CPU, synthetic data at demo scale, here (≈ 15 min per run)
#   scripts/sweep_ablation.sh slurm                 # MEAD subjects on a SLURM cluster, one GPU job per run
#   SUBJECTS=M003,M030,W015 SEEDS=0,1,2 scripts/sweep_ablation.sh slurm hydra.launcher.partition=a100
#   SCALE=tiny SEEDS=0 scripts/sweep_ablation.sh    # a minutes-long smoke version of the whole sweep
#   JOBS=2 scripts/sweep_ablation.sh                # locally, two runs at a time on nproc/2 threads each
#
# Resumable: every run is started with resume=true, so a rerun (after a kill, or in a later session) skips the
# finished runs and their evaluations and continues the interrupted ones. Locally the seeds run one after the
# other (all rows of seed 0, then of seed 1, …) and the table is rewritten after each: a one-seed table early.
# Environment: SCALE (local: demo | tiny; default demo), SEEDS (default 0,1,2), SUBJECTS (slurm),
# JOBS (local: runs at a time, default 1 = one Hydra multirun per seed; N > 1: the grid's rows as a queue worked
# by N processes, each on nproc/N torch threads — the demo runs' small tensors use 2 threads poorly, so 2 jobs on
# 2 cores finish the sweep sooner; each run's output goes to outputs/sweep-logs/<scale>/seed<k>/<row>.log),
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
JOBS="${JOBS:-1}"
case "$JOBS" in ''|*[!0-9]*|0) echo "$0: JOBS must be a positive integer, got '$JOBS'" >&2; exit 2 ;; esac
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
  if [ "$JOBS" -gt 1 ]; then
    # the grid's rows (experiments/grid/ablation.yaml), one process per run, JOBS at a time
    rows=$(sed -n 's/^ *experiment: *//p' experiments/grid/ablation.yaml | tr ',' ' ')
    [ -n "$rows" ] || { echo "$0: no experiment list in experiments/grid/ablation.yaml" >&2; exit 2; }
    threads=$(( $(nproc 2>/dev/null || echo 1) / JOBS )); [ "$threads" -ge 1 ] || threads=1
    export OMP_NUM_THREADS="$threads" PY
  fi
  for s in "${seed_list[@]}"; do
    if [ "$JOBS" -gt 1 ]; then
      logs="$ROOT/outputs/sweep-logs/$SCALE/seed$s"; mkdir -p "$logs"
      echo "sweep_ablation: seed $s, $(wc -w <<< "$rows") runs, $JOBS at a time on $threads threads each (logs: $logs)"
      # a run's exit status is kept: xargs reports a failure (123) after the other runs finish
      printf '%s\n' $rows | xargs -P "$JOBS" -I{} bash -c 'r="$1"; shift
        if "$PY" -m ua3dtalk.cli.train grid=ablation "$@" > "'"$logs"'/$r.log" 2>&1; then
          echo "sweep_ablation: $r seed'"$s"' done ($(date +%H:%M:%S))"
        else c=$?; echo "sweep_ablation: $r seed'"$s"' FAILED (exit $c; log '"$logs"'/$r.log)" >&2; exit $c; fi' \
        _ {} "experiment={}" "${args[@]}" "seed=$s" "$@"
    else
      "$PY" -m ua3dtalk.cli.train -m grid=ablation "${args[@]}" "seed=$s" "$@"
    fi
    tables
    echo "sweep_ablation: seed $s done, $(( $(date +%s) - start )) s since the start"
  done
else
  "$PY" -m ua3dtalk.cli.train -m grid=ablation "${args[@]}" "$@"
  tables
fi
cat "$ROOT/outputs/tables/ablation.md"
echo "sweep_ablation: $(( $(date +%s) - start )) s wall for the sweep and the tables (scale $SCALE, seeds $SEEDS)"
