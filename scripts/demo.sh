#!/usr/bin/env bash
# The main job on a fresh machine: set up, make a small random-weight checkpoint (real weights
# cannot be downloaded here), build ONNX Runtime engines from it and render a video plus a contact
# sheet. SVD (default): the shipped photo to video. FAMILY=ltx: LTX-Video, a prompt to video.
# Set MODEL=/path/to/snapshot to use a real Hugging Face snapshot instead (then also pass real
# sizes, see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-out}
FAMILY=${FAMILY:-svd}
MODEL=${MODEL:-$OUT/$FAMILY-small-random}
if [ ! -f "$MODEL/model_index.json" ]; then
  .venv/bin/svd-export make-checkpoint --family "$FAMILY" --size small --out "$MODEL"
fi
.venv/bin/svd-export build-engines --model "$MODEL" --out "$OUT/engines-$FAMILY-small"
if [ "$FAMILY" = ltx ]; then
  .venv/bin/svd-trt infer --engines "$OUT/engines-ltx-small" --prompt "A red fox trots through fresh snow" \
    --out "$OUT/demo-ltx.mp4" --contact-sheet "$OUT/demo-ltx-frames.png" \
    --num-frames ${FRAMES:-25} --height ${HEIGHT:-256} --width ${WIDTH:-384} \
    --num-inference-steps ${STEPS:-10} --seed 0 "$@"
else
  .venv/bin/svd-trt infer --engines "$OUT/engines-svd-small" --image runtime/assets/coffee.jpg \
    --out "$OUT/demo.mp4" --contact-sheet "$OUT/demo-frames.png" \
    --num-frames ${FRAMES:-8} --height ${HEIGHT:-256} --width ${WIDTH:-448} \
    --num-inference-steps ${STEPS:-10} --decode-chunk-size 4 --seed 0 "$@"
fi
