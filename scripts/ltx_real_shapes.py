"""LTX-Video at its real layer shapes, random weights: export each component, run one call in ONNX Runtime.

    .venv/bin/python scripts/ltx_real_shapes.py --work /tmp/ltx-real [--only transformer] [--json out.json]

Runs (RUNS below): the 2B transformer (28 blocks, 32 x 64 heads) as its fp32 and its fp16 graph; the
0.9.5 VAE's decoder and encoder (fp32); T5-XXL with 2 of its 24 blocks (the whole fp32 encoder,
19 GB, does not fit a 23 GB machine). Each runs in a child process so one's memory never
adds to the next's; each records the parameter count, export time, ONNX file sizes (external data
past 2 GB), session load and one-call times at a small size other than the traced one, the max
abs / relative error against the fp32 port on the same inputs, and peak RSS. docs/ltx.md records
a run. Not a test: ~12 minutes, ~10 GB of RAM and ~20 GB of disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from svd_trt.export.checkpoint import component_module, parameter_count
from svd_trt.export.onnx_export import export_onnx
from svd_trt.families.ltx.config import LTXConfig, preset
from svd_trt.families.ltx.port.checkpoint import build_module
from svd_trt.families.ltx.spec import component_specs, sizes_for, trace_sizes
from svd_trt.runtime.runners import OrtRunner

# (component, precision, transformer blocks or None = all). The 2B DiT both as the fp32 graph
# ONNX Runtime runs (7.7 GB) and as the fp16 one --target tensorrt builds (3.9 GB).
RUNS = (
    ("transformer", "fp32", None),
    ("transformer", "fp16", None),
    ("vae_decoder", "fp32", None),
    ("vae_encoder", "fp32", None),
    ("text_encoder", "fp32", None),
)
T5_BLOCKS = 2
PART = {"vae_encoder": "encoder", "vae_decoder": "decoder"}
# One call, CFG batch of 2 for the transformer (the pipeline's), 1 for the rest: 9 frames at 96x64
# (3 x 2 latents x 2 latent frames = 12 tokens) and 16 text tokens; the trace is 17 frames, 64x96, 6.
RUN = {"num_frames": 9, "height": 96, "width": 64, "text_len": 16}


def real_config(transformer_layers: int | None = None) -> LTXConfig:
    full = preset("full")
    tc = (
        full.transformer
        if transformer_layers is None
        else dataclasses.replace(full.transformer, num_layers=transformer_layers)
    )
    return dataclasses.replace(
        full, transformer=tc, text_encoder=dataclasses.replace(full.text_encoder, num_layers=T5_BLOCKS)
    )


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 2)


def _port_outputs(module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The fp32 port on the same values (fp16 inputs widened)."""
    with torch.no_grad():
        out = module(
            *(torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v) for v in inputs.values())
        )
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _errors(spec, got: dict[str, np.ndarray], ref: list[np.ndarray]) -> dict:
    errors = {}
    for t, r in zip(spec.outputs, ref):
        diff = np.abs(got[t.name].astype(np.float64) - r)
        errors[t.name] = {
            "max_abs": float(diff.max()),
            "rel": float(diff.max() / max(np.abs(r).max(), 1e-30)),
            "finite": bool(np.isfinite(got[t.name]).all()),
        }
    return errors


def measure(name: str, precision: str, layers: int | None, work: Path) -> dict:
    """Build the random port, run it in fp32, export it (in place to fp16 if asked), free it, run the
    graph in ONNX Runtime on the same inputs."""
    cfg = real_config(layers)
    spec = component_specs(cfg)[name]
    torch.manual_seed(0)
    with torch.no_grad():
        source, build_s = _timed(lambda: build_module(spec.source, cfg).eval())
    module = component_module(source, spec)
    batch = 2 if name == "transformer" else 1
    sizes = sizes_for(cfg, batch, RUN["num_frames"], RUN["height"], RUN["width"], RUN["text_len"])
    inputs = spec.sample_inputs(sizes, np.random.default_rng(0), precision)
    ref, port_s = _timed(_port_outputs, module, inputs)
    if precision == "fp16":
        source.half()  # in place: the fp32 weights are freed before the export
    folder = work / (f"{name}-{precision}" + ("" if layers is None else f"-{layers}blocks"))
    folder.mkdir(parents=True, exist_ok=True)
    _, export_s = _timed(export_onnx, module, spec, folder / spec.onnx_file, precision, trace_sizes(cfg))
    export_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    params = parameter_count(getattr(source, PART.get(name, ""), source))  # the VAE's half in use
    del module, source
    gc.collect()
    runner, load_s = _timed(OrtRunner, folder / spec.onnx_file)
    got, run_s = _timed(runner.run, inputs)
    return {
        "component": name,
        "precision": precision,
        "transformer_blocks": cfg.transformer.num_layers if name == "transformer" else None,
        "parameters": params,
        "run_sizes": sizes,
        "trace_sizes": trace_sizes(cfg),
        "build_s": build_s,
        "port_fp32_call_s": port_s,
        "export_s": export_s,
        "files_gb": {p.name: round(p.stat().st_size / 1e9, 3) for p in sorted(folder.iterdir())},
        "session_load_s": load_s,
        "onnxruntime_call_s": run_s,
        "errors_vs_fp32_port": _errors(spec, got, ref),
        "peak_rss_export_gb": round(export_rss, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="where the ONNX files go (~15 GB)")
    ap.add_argument(
        "--only", default=None, help="only this component's runs (COMPONENT or COMPONENT:PRECISION)"
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", nargs=3, metavar=("COMPONENT", "PRECISION", "BLOCKS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        name, precision, blocks = args.child
        print(json.dumps(measure(name, precision, None if blocks == "all" else int(blocks), args.work)))
        return
    results = []
    for name, precision, blocks in RUNS:
        if args.only and args.only not in (name, f"{name}:{precision}"):
            continue
        child = [name, precision, "all" if blocks is None else str(blocks)]
        proc = subprocess.run(
            [sys.executable, __file__, "--work", str(args.work), "--child", *child],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            results.append({"run": child, "failed": proc.returncode, "stderr": proc.stderr[-2000:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
