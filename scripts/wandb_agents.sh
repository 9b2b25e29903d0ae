#!/usr/bin/env bash
# Start one wandb sweep agent per GPU (each agent runs one configuration at a time on its GPU).
#   wandb sweep experiments/sweep/ablation.yaml           # → ENTITY/PROJECT/SWEEP_ID
#   scripts/wandb_agents.sh ENTITY/PROJECT/SWEEP_ID [NUM_GPUS]
# Agents run in the background; logs in outputs/wandb_agents/gpu<k>.log; stop them with `kill <pid>`.
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP="${1:?usage: $0 ENTITY/PROJECT/SWEEP_ID [NUM_GPUS]}"
N="${2:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
[ "$N" -ge 1 ] || { echo "no GPU found (give NUM_GPUS)" >&2; exit 2; }
mkdir -p outputs/wandb_agents
for ((k = 0; k < N; k++)); do
  CUDA_VISIBLE_DEVICES=$k nohup wandb agent "$SWEEP" > "outputs/wandb_agents/gpu$k.log" 2>&1 &
  echo "agent on GPU $k: pid $!"
done
