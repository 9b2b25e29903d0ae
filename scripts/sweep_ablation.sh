#!/usr/bin/env bash
# The paper's ablation table as one sweep: full model + 8 ablation rows + TalkingGaussian-like baseline,
# over seeds (and subjects), then the table.
#
#   scripts/sweep_ablation.sh                       # CPU, synthetic data at demo scale, here (≈ 10 min per run)
#   scripts/sweep_ablation.sh slurm                 # MEAD subjects on a SLURM cluster, one GPU job per run
#   SUBJECTS=M003,M030,W015 SEEDS=0,1,2 scripts/sweep_ablation.sh slurm hydra.launcher.partition=a100
#   scripts/sweep_ablation.sh local scale=tiny      # a seconds-long smoke version of the whole sweep
#
# Extra arguments are Hydra overrides. Runs land in outputs/runs/<experiment>/<subject>/seed<k>/ (and in
# wandb, group = experiment, tags = components, with logger=wandb); the table is written to
# outputs/tables/ablation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-local}"; shift || true
SEEDS="${SEEDS:-0,1,2}"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
export WANDB_MODE="${WANDB_MODE:-offline}"
case "$MODE" in
  local)  args=(scale=demo "seed=$SEEDS") ;;
  slurm)  args=(launcher=slurm trainer=gpu "seed=$SEEDS" "data.subject=${SUBJECTS:-M003}") ;;
  *) echo "usage: $0 [local|slurm] [hydra overrides...]" >&2; exit 2 ;;
esac
"$PY" -m ua3dtalk.cli.train -m grid=ablation "${args[@]}" "$@"
mkdir -p outputs/tables
"$PY" -m ua3dtalk.cli.tables --runs outputs/runs --table ablation --out outputs/tables/ablation.md
"$PY" -m ua3dtalk.cli.tables --runs outputs/runs --table ablation --format latex --out outputs/tables/ablation.tex
cat outputs/tables/ablation.md
