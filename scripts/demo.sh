#!/usr/bin/env bash
# The main job on a fresh machine: set up, make a small random-weight SVD checkpoint
# (real weights cannot be downloaded here), build ONNX Runtime engines from it and turn
# the shipped photo into an mp4 plus a contact sheet. Set MODEL=/path/to/snapshot to use
# a real Hugging Face SVD snapshot instead (then also pass real sizes, see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-out}
MODEL=${MODEL:-$OUT/svd-small-random}
if [ ! -f "$MODEL/model_index.json" ]; then
  .venv/bin/svd-export make-checkpoint --size small --out "$MODEL"
fi
.venv/bin/svd-export build-engines --model "$MODEL" --out "$OUT/engines-small"
.venv/bin/svd-trt infer --engines "$OUT/engines-small" --image runtime/assets/coffee.jpg \
  --out "$OUT/demo.mp4" --contact-sheet "$OUT/demo-frames.png" \
  --num-frames ${FRAMES:-8} --height ${HEIGHT:-256} --width ${WIDTH:-448} \
  --num-inference-steps ${STEPS:-10} --decode-chunk-size 4 --seed 0 "$@"
