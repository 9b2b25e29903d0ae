#!/usr/bin/env bash
# Your own video end to end on a CPU (`make video VIDEO=my.mp4 AUDIO=speech.wav`):
#   preprocess → train (experiment=own_video) → score the held-out frames → drive with AUDIO → report.
# The three commands it runs are the README's; each resumes (preprocessing steps, training with
# resume=true), so a rerun after a kill continues. Environment: VIDEO, AUDIO (required), NAME (default: the
# video's file name), DATA (default data/videos/NAME), EVALUATORS (optional evaluator directory for LMD /
# Sync-C/D), EXPRESSION (optional expr.npy whose brows, eyes and lip corners the driven avatar follows, e.g. of
# another preprocessed video; without it the avatar keeps the video's average expression), ARGS (extra Hydra
# overrides for ua3dtalk-train).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
: "${VIDEO:?VIDEO=path/to/video.mp4 is required}"
: "${AUDIO:?AUDIO=path/to/speech.wav is required}"
[ -f "$VIDEO" ] || { echo "make video: VIDEO=$VIDEO not found" >&2; exit 2; }
[ -f "$AUDIO" ] || { echo "make video: AUDIO=$AUDIO not found" >&2; exit 2; }
[ -z "${EXPRESSION:-}" ] || [ -f "$EXPRESSION" ] || { echo "make video: EXPRESSION=$EXPRESSION not found" >&2; exit 2; }
NAME=${NAME:-$(basename "${VIDEO%.*}")}
DATA=${DATA:-data/videos/$NAME}
t0=$(date +%s)
stamp() { echo "[make video] $1 ($(( $(date +%s) - t0 )) s so far)"; }

stamp "1/4 preprocess $VIDEO → $DATA"
$PY -m ua3dtalk.cli.preprocess "$VIDEO" --out "$DATA"
stamp "2/4 train experiment=own_video data.root=$DATA"
# shellcheck disable=SC2086
$PY -m ua3dtalk.cli.train experiment=own_video "data.root=$DATA" resume=true ${ARGS:-}
# shellcheck disable=SC2086
RUN=$($PY -c "import sys; from ua3dtalk.cli.train import compose; print(compose(sys.argv[1:]).paths.run_dir)" \
      experiment=own_video "data.root=$DATA" ${ARGS:-})
stamp "3/4 score the held-out frames of $RUN"
$PY -m ua3dtalk.cli.eval "ckpt=$RUN" split=val ${EVALUATORS:+"evaluators=$EVALUATORS"}
stamp "4/4 drive with $AUDIO"
$PY -m ua3dtalk.cli.infer "ckpt=$RUN" "audio=$AUDIO" "out=$RUN/driven.mp4" ${EXPRESSION:+"expression=$EXPRESSION"}
$PY -m ua3dtalk.reporting.video_report "$RUN" --driven "$RUN/driven.mp4" --out "outputs/video/$NAME"
stamp "done: outputs/video/$NAME/report.md"
