"""Frames of the TensorRT-target LTX graphs (fp16 transformer and T5, fp32 VAE), run in ONNX Runtime on
the CPU, against diffusers' fp32 pipeline: max abs, mean abs, PSNR; the fp32 engines beside them.

    .venv/bin/python scripts/ltx_fp16_frames.py --work /tmp/ltx-fp16 [--steps 10] [--json out.json]

For each preset (tiny: 4x / 4x VAE; small: 32x / 8x, timestep-conditioned decoder) a random snapshot
(`svd-export make-checkpoint --family ltx`), its ONNX Runtime engines (`build-engines`, fp32) and its
`export-onnx --target tensorrt` directory; text to video and image to video (a 50x40 image), CFG 3,
a negative prompt, decode noise where the decoder takes a timestep. diffusers' one generator is replayed
into our pipeline as its draws. docs/ltx.md records a run. ~1 minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import LTXImageToVideoPipeline, LTXPipeline
from PIL import Image

from svd_trt.calibration.report import psnr
from svd_trt.engines.build import BuildOptions, build_engines, export_onnx
from svd_trt.families.ltx.config import preset
from svd_trt.families.ltx.options import LTXOptions
from svd_trt.families.ltx.port.random_checkpoint import write_random_checkpoint
from svd_trt.runtime.engine_pipeline import open_pipeline

SIZES = {"tiny": (9, 64, 96), "small": (17, 128, 192)}  # frames, height, width
PROMPT, NEGATIVE = "a red fox trots through fresh snow", "blurry, dark"


def directories(work: Path, size: str) -> dict[str, Path]:
    snapshot = work / size
    if not (snapshot / "model_index.json").exists():
        write_random_checkpoint(snapshot, preset(size))
    fp32, fp16 = work / f"{size}-fp32", work / f"{size}-tensorrt-target"
    build_engines(snapshot, fp32, BuildOptions(backend="onnxruntime"))
    export_onnx(snapshot, fp16, "tensorrt")
    return {"snapshot": snapshot, "fp32": fp32, "fp16": fp16}


def run(dirs: dict[str, Path], size: str, image: Image.Image | None, steps: int) -> dict:
    frames, height, width = SIZES[size]
    timestep_conditioned = preset(size).vae.timestep_conditioning
    call = {
        "num_frames": frames, "height": height, "width": width, "num_inference_steps": steps,
        "guidance_scale": 3.0, "max_sequence_length": 64,
        **({"decode_timestep": 0.05, "decode_noise_scale": 0.025} if timestep_conditioned else {}),
    }  # fmt: skip
    inputs = {"prompt": PROMPT, "negative_prompt": NEGATIVE, **({"image": image} if image else {})}
    cls = LTXImageToVideoPipeline if image else LTXPipeline
    pipe = cls.from_pretrained(dirs["snapshot"])
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(**inputs, **call, generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    row = {"preset": size, "mode": "i2v" if image else "t2v", "frames": f"{frames}x{height}x{width}", "steps": steps}
    opts = LTXOptions(**call)
    for name in ("fp32", "fp16"):
        with open_pipeline(dirs[name]) as ours:
            g = torch.Generator().manual_seed(0)
            shapes = ours.draw_shapes(ours.resolve(opts), image is not None)
            draws = {k: torch.randn(s, generator=g).numpy() for k, s in shapes.items()}
            out = ours.generate(inputs, opts, draws).frames
        diff = np.abs(out.astype(np.float64) - ref)
        db = psnr(out, ref)
        row[name] = {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "psnr_db": None if math.isinf(db) else round(float(db), 2),
            "finite": bool(np.isfinite(out).all()),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    rows = []
    for size in SIZES:
        dirs = directories(args.work, size)
        for img in (None, image):
            rows.append(run(dirs, size, img, args.steps))
            r = rows[-1]
            print(
                f"| {r['preset']} | {r['mode']} | {r['frames']} | {r['steps']} "
                + " ".join(f"| {r[k]['max_abs']:.2e} | {r[k]['mean_abs']:.2e} | {r[k]['psnr_db']} dB" for k in ("fp32", "fp16"))
                + " |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
