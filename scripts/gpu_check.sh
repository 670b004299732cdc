#!/usr/bin/env bash
# The GPU check (issue 12): one command on a lent CUDA machine, tables into docs/benchmarks_gpu.md.
#
#   bash scripts/gpu_check.sh                                      # CUDA, full-size SVD-XT
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny bash scripts/gpu_check.sh   # CPU smoke run, tiny shapes
#
# Parts, in order of importance; each runs under `timeout`, prints its elapsed time and is
# recorded in WORK/parts.tsv (a failed or timed-out part is reported and the next one runs):
#   checkpoint   svd-export make-checkpoint --variant fp16: random weights, real shapes
#   e2e          scripts/bench.py: diffusers' fp16 StableVideoDiffusionPipeline vs our runtime on
#                the torch fast path, same latents and noise: per-step UNet, decode, GPU peak
#                memory, frames' max abs error and PSNR (one child each, one timed run)
#   unet-decode  scripts/bench_gpu.py: the UNet variants per step (diffusers, port, fast
#                attention, CUDA graph) against diffusers' fp16 and the fp32 port; decode sweep
#   tests        pytest -m "gpu or tensorrt": the TensorRT tests skip where it is missing; the
#                part is "ok" only where a test passed, "not run: ..." where every one skipped
#   tensorrt     where TensorRT cannot be imported: recorded as "not run: why" (no engine is
#                built or run; its tests are among the skipped ones)
#   onnx-export, onnx-check
#                svd-export export-onnx --target tensorrt (fp16 graphs), then svd-export check
#                at a modest size, only where onnxruntime has the execution provider for the
#                device (CUDAExecutionProvider on a GPU); else "not run: why"
#   report       scripts/gpu_check_report.py: the tables into the docs' gpu-check section
#
# A part this machine cannot run is printed and recorded as "not run: <why>", never as passed,
# and does not fail the run (torch + CUDA without TensorRT or onnxruntime-gpu runs the torch
# backend end to end, its fp16 parity and timing, and the GPU tests torch can run). The last
# lines group the parts: passed, not run (why), failed.
#
# Time budget (full size, one H100/H200, 16 cores; must end under 8 minutes whatever is
# installed). Every part's limit is min(its cap, what BUDGET leaves after the floors kept for
# the parts after it), so a slow part cannot eat the rest:
#   part          expected                                cap   floor kept for it
#   setup         ~15 s (wheels, pip -e)                  -     -
#   checkpoint    ~20 s (19.7 s there, docs/export.md)    90    -
#   e2e           ~90 s: 2 children x (imports + 4.5 GB   150   90
#                 load ~30 s, 1-step warm-up, 25 steps
#                 at ~0.4 s, decode ~1 s)
#   unet-decode   ~110 s: fp32 reference step, 4 UNet     150   90
#                 variants x 8 calls (5 timed), decode
#                 chunks 1/8/25 x 2 impls x 5 runs
#   tests         ~30 s without TensorRT (collection and  120   45
#                 one CUDA test), ~2 min with it
#   onnx-export   ~100 s (docs/export.md), only with a    150   -
#                 CUDA execution provider
#   onnx-check    ~60 s, 2 frames 256x256, same           90    -
#   report        ~5 s; always runs, outside BUDGET       30    -
# BUDGET 440 s + report 30 s + slack = under 480 s. Cut for it: frames 25 only (not 14 too),
# 5 timed reps, 3 decode chunks, one e2e round, no torch.compile, no e2e decode sweep.
#
# Environment: GPU_CHECK_DEVICE (cuda | cpu), GPU_CHECK_SIZE (full | tiny), GPU_CHECK_WORK
# (default: a new /tmp folder), GPU_CHECK_DOCS (default docs/benchmarks_gpu.md for cuda + full,
# else a copy in WORK: a smoke run never touches the real docs), GPU_CHECK_BUDGET_S (440),
# GPU_CHECK_WHEELS (.whl: wheels installed into WORK/site first; "" for none),
# GPU_CHECK_TIME_SCALE (1: multiplies every cap, floor and the budget, for a loaded CPU
# machine whose smoke run checks function, not time), GPU_CHECK_COMMIT (the commit named in
# the report where the copy has no .git), PYTHON (python3), OUT (the device tool's folder:
# the log, JSON and the updated docs are copied there).
set -uo pipefail  # not -e: a failed part is recorded and the others still run

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-full}
SCALE=${GPU_CHECK_TIME_SCALE:-1}
BUDGET=$((${GPU_CHECK_BUDGET_S:-440} * SCALE))
WHEELS=${GPU_CHECK_WHEELS-$ROOT/.whl}
PY=${PYTHON:-python3}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # parts run in WORK
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PARTS=$WORK/parts.tsv
LOG=${OUT:+$OUT/gpu_check.log}
LOG=${LOG:-$WORK/gpu_check.log}
START=$(date +%s)
export PYTHONUNBUFFERED=1

case $SIZE in
  full) FRAMES=25 H=576 W=1024 STEPS=25 CHUNK=8 REPS=5 DECODE_CHUNKS="1 8 25"
        CHECK_SIZES="--num-frames 2 --height 256 --width 256" ;;
  tiny) FRAMES=3 H=32 W=48 STEPS=1 CHUNK=2 REPS=1 DECODE_CHUNKS="1 3"
        CHECK_SIZES="--num-frames 3 --height 32 --width 48" ;;
  *) echo "GPU_CHECK_SIZE must be full or tiny, got $SIZE" >&2; exit 2 ;;
esac
case $DEVICE in
  cuda) DTYPE=fp16 PROVIDER=CUDAExecutionProvider ;;
  # The CPU torch backend is the fp32 port, so the smoke run compares fp32 pipelines.
  cpu) DTYPE=fp32 PROVIDER=CPUExecutionProvider ;;
  *) echo "GPU_CHECK_DEVICE must be cuda or cpu, got $DEVICE" >&2; exit 2 ;;
esac
if [[ -n ${GPU_CHECK_DOCS:-} ]]; then
  DOCS=$GPU_CHECK_DOCS
elif [[ $DEVICE == cuda && $SIZE == full ]]; then
  DOCS=$ROOT/docs/benchmarks_gpu.md
else
  DOCS=$WORK/benchmarks_gpu.md
  cp "$ROOT/docs/benchmarks_gpu.md" "$DOCS"
fi
SNAP=$WORK/$SIZE-fp16-snapshot
FAILED=0

elapsed() { echo $(($(date +%s) - START)); }

save_out() {  # what the device tool brings back: 8 files at most, none deeper than $OUT/a/b
  [[ -n ${OUT:-} ]] || return 0
  local f
  for f in parts.tsv e2e.json bench_gpu.json gpu_tests.xml; do
    [[ -f $WORK/$f ]] && cp "$WORK/$f" "$OUT/"
  done
  [[ -f $WORK/onnx_check/report.json ]] && cp "$WORK/onnx_check/report.json" "$OUT/onnx_check.json"
  [[ -f $DOCS ]] && cp "$DOCS" "$OUT/benchmarks_gpu.md"
  return 0
}

record() {  # record NAME LIMIT SECONDS STATUS
  printf '%s\t%s\t%s\t%s\n' "$@" >>"$PARTS"
}

not_run() {  # not_run NAME WHY: a part this machine cannot run; printed and recorded, never as passed
  echo "=== $1: not run: $2"
  record "$1" 0 0 "not run: $2"
}

tests_outcome() {  # the tests part's "ok" becomes what its JUnit XML says: ok only where a test passed
  "$PY" "$ROOT/scripts/gpu_check_report.py" --work "$WORK" --tests-outcome
}

summary() {  # the parts grouped: what passed, what could not run here and why, what failed
  local name limit seconds status passed="" failed=""
  while IFS=$'\t' read -r name limit seconds status; do
    case $status in
      ok*"not run: "*) passed+=" $name" && echo "not run: $name: ${status#*not run: }" ;;
      ok*) passed+=" $name" ;;
      "not run: "*) echo "not run: $name: ${status#not run: }" ;;
      reused*) passed+=" $name" ;;
      *) failed+=" $name ($status)" ;;
    esac
  done <"$PARTS"
  echo "passed:${passed:- none}"
  echo "failed:${failed:- none}"
}

run_part() {  # run_part NAME CAP FLOOR_AFTER CMD...: CMD in WORK, limit min(CAP, budget left - FLOOR_AFTER)
  local name=$1 cap=$(($2 * SCALE)) floor_after=$(($3 * SCALE))
  shift 3
  local limit=$((BUDGET - $(elapsed) - floor_after))
  ((limit > cap)) && limit=$cap
  if ((limit < 5)); then
    echo "=== $name: skipped at $(elapsed) s, the budget of $BUDGET s is spent"
    record "$name" 0 0 "skipped: budget spent"
    FAILED=1
    return 1
  fi
  echo "=== $name: start at $(elapsed) s, limit $limit s"
  local t0 rc seconds status
  t0=$(date +%s.%N)
  # timeout signals the whole process group: bench.py's children die with their parent.
  (cd "$WORK" && timeout --kill-after=10 "$limit" "$@")
  rc=$?
  seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after $limit s" FAILED=1 ;;
    *) status="failed (exit $rc)" FAILED=1 ;;
  esac
  echo "=== $name: $status in $seconds s (total $(elapsed) s)"
  record "$name" "$limit" "$seconds" "$status"
  save_out
  return $rc
}

setup() {  # diffusers and polygraphy as carried wheels, then svd_trt importable from any folder
  if [[ -n $WHEELS ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "installing into $WORK/site: $(cd "$WHEELS" && echo *.whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$WHEELS"/*.whl || return 1
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # Parts run in WORK: from the repository root, ./svd_trt would hide the installed package's
  # subpackages (export/, engines/... live beside it and are mapped in by the install).
  if ! (cd "$WORK" && "$PY" -c "import svd_trt.engines.cli" 2>/dev/null); then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" 2>&1 | tail -3
    if ! (cd "$WORK" && "$PY" -c "import svd_trt.engines.cli" 2>/dev/null); then
      echo "pip install -e failed; importing svd_trt through a shim in $WORK/shim"
      mkdir -p "$WORK/shim" && cp -r "$ROOT/svd_trt" "$WORK/shim/"
      for d in export runtime engines calibration; do ln -sfn "$ROOT/$d" "$WORK/shim/svd_trt/$d"; done
      export PYTHONPATH=$WORK/shim${PYTHONPATH:+:$PYTHONPATH}
    fi
  fi
  # What each part needs; a missing one fails its parts, not the run.
  (cd "$WORK" && "$PY" -c "
import importlib
for name in ('torch', 'diffusers', 'transformers', 'onnxruntime', 'polygraphy', 'tensorrt'):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, 'MISSING:', type(e).__name__, e)
import torch
print('CUDA', torch.version.cuda, 'available' if torch.cuda.is_available() else 'not available')
import svd_trt.engines.cli")
}

tensorrt_part() {  # TensorRT itself: its tests run in the tests part; without it, say so
  local why
  why=$(cd "$WORK" && "$PY" -c 'import tensorrt' 2>&1 | tail -1)
  [[ -z $why ]] && return 0
  not_run tensorrt "TensorRT is not importable here (${why:0:120}): no engine built or run"
}

onnx_parts() {  # export + check where onnxruntime has the provider for DEVICE; else not run, and why
  local providers build
  providers=$(cd "$WORK" && "$PY" -c 'import onnxruntime as o; print(" ".join(o.get_available_providers()))')
  if [[ " $providers " != *" $PROVIDER "* ]]; then
    build=$(cd "$WORK" && "$PY" -c 'from svd_trt.runtime.devices import onnxruntime_build as b; print(b())')
    local why="onnxruntime here has no $PROVIDER ($build with: $providers); install onnxruntime-gpu in its place"
    echo "not run: $why" >"$WORK/onnx_check.skipped"
    not_run onnx-export,onnx-check "$why"
    return 0
  fi
  echo "The fp16 graphs ran on onnxruntime's $PROVIDER (providers: $providers); fp32 reference: torch on $DEVICE." \
    >"$WORK/onnx_check.where"
  run_part onnx-export 150 0 "$PY" -m svd_trt.engines.cli export-onnx \
    --model "$SNAP" --out "$WORK/onnx-fp16" --target tensorrt || return 0
  # shellcheck disable=SC2086  # CHECK_SIZES is a list of options
  run_part onnx-check 90 0 "$PY" -m svd_trt.engines.cli check --engines "$WORK/onnx-fp16" --model "$SNAP" \
    --backend onnxruntime --device "$DEVICE" $CHECK_SIZES --report "$WORK/onnx_check"
}

main() {
  echo "gpu_check: device $DEVICE, size $SIZE, work $WORK, docs $DOCS, budget $BUDGET s"
  command -v nvidia-smi >/dev/null && nvidia-smi
  setup || { echo "setup failed: nothing measured"; return 2; }
  : >"$PARTS"
  record setup - "$(elapsed)" ok

  if [[ -f $SNAP/model_index.json ]]; then
    record checkpoint - 0 "reused $SNAP"
  else
    run_part checkpoint 90 $((90 + 90 + 45)) "$PY" -m svd_trt.engines.cli make-checkpoint \
      --size "$SIZE" --variant fp16 --out "$SNAP"
  fi
  # bench.py finds the snapshot at WORK/<size>-<dtype>-snapshot (written there if missing).
  run_part e2e 150 $((90 + 45)) "$PY" "$ROOT/scripts/bench.py" --size "$SIZE" --device "$DEVICE" \
    --dtype "$DTYPE" --frames "$FRAMES" --height "$H" --width "$W" --steps "$STEPS" --chunk "$CHUNK" \
    --contenders diffusers ours-torch --rounds 1 --work "$WORK" --json "$WORK/e2e.json"
  # shellcheck disable=SC2086  # DECODE_CHUNKS is a list
  run_part unet-decode 150 45 "$PY" "$ROOT/scripts/bench_gpu.py" --work "$WORK" --out "$WORK/bench_gpu.json" \
    --size "$SIZE" --device "$DEVICE" --dtype "$DTYPE" --frames "$FRAMES" --height "$H" --width "$W" --reps "$REPS" \
    --decode-chunks $DECODE_CHUNKS
  local tests
  mapfile -t tests < <(grep -rlE "pytest\.mark\.(gpu|tensorrt)" "$ROOT/tests" --include="*.py" | sort)
  run_part tests 120 0 "$PY" -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" \
    --junitxml "$WORK/gpu_tests.xml" "${tests[@]}"
  tests_outcome
  tensorrt_part
  onnx_parts

  # The report always runs, with its own limit outside BUDGET.
  local commit title
  commit=${GPU_CHECK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "unknown")}
  title="Run of \`bash scripts/gpu_check.sh\` on $(date -u +%Y-%m-%d) (size $SIZE, device $DEVICE, commit $commit)."
  BUDGET=$(($(elapsed) + 30 * SCALE))
  run_part report 30 0 "$PY" "$ROOT/scripts/gpu_check_report.py" --work "$WORK" --docs "$DOCS" --title "$title"
  save_out
  echo "gpu_check: done in $(elapsed) s; tables in $DOCS; work folder $WORK${OUT:+; copies in $OUT}"
  cat "$PARTS"
  summary
  return $FAILED
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
