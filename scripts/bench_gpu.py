"""GPU microbenchmarks of the torch fast path against diffusers, in one process, with CUDA events.

    python scripts/bench_gpu.py --work /tmp/w --out gpu.json [--frames 25 14] [--compile]

UNet: one CFG step (batch 2) at each frame count, 576x1024, fp16: diffusers' UNet, the
port as exported, the port with fast attention (fused QKV, one-key cross-attention
shortcut), and that replayed from a CUDA graph (optionally torch.compile'd first). Each
variant's output is compared with diffusers' on the same inputs. Decode: the 25-frame
latents decoded in chunks of each size, time and peak GPU memory above the loaded model.
Rates are reported against the measured fp16 GEMM peak and H100 SXM's 989 TFLOP/s spec.
The random fp16 checkpoint is written here if missing (bench.py's path convention).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402

from svd_trt.config import preset  # noqa: E402

log = logging.getLogger("bench_gpu")
SPEC_PEAK = 989e12  # H100 SXM dense fp16 tensor-core spec
H, W = 576, 1024


def cuda_time(fn: Callable[[], object], reps: int, warmup: int = 3) -> dict[str, float]:
    """Seconds per call: median/min/max over `reps` calls, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return {"median": float(np.median(times)), "min": float(min(times)), "max": float(max(times))}


def gemm_peak(n: int = 8192, reps: int = 20) -> float:
    """Measured dense fp16 FLOP/s of one large cuBLAS GEMM on random data."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.float16) for _ in range(2))
    t = cuda_time(lambda: a @ b, reps)
    return 2 * n**3 / t["median"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def unet_inputs(cfg, frames: int, seed: int = 0) -> list[torch.Tensor]:
    """sample [2, F, 8, h, w], timestep [2], embeds [2, 1, 1024], time ids [2, 3] as the pipeline feeds."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = lambda *s: torch.randn(*s, device="cuda", dtype=torch.float16, generator=g)  # noqa: E731
    timestep = torch.full((2,), 0.25 * float(np.log(100.0)), device="cuda")
    ids = torch.tensor([[6.0, 127.0, 0.02]] * 2, device="cuda", dtype=torch.float16)
    s = cfg.vae.scale_factor
    return [
        h(2, frames, cfg.unet.in_channels, H // s, W // s),
        timestep,
        h(2, 1, cfg.clip.projection_dim),
        ids,
    ]


def _peak_above(fn: Callable[[], object]) -> float:
    """Peak GPU memory one call allocates above what is resident before it, MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_unet(snapshot: Path, frames: list[int], reps: int, compile_unet: bool, peak: float) -> list[dict]:
    from diffusers import UNetSpatioTemporalConditionModel

    from svd_trt.export.torch_fast import CudaGraphRunner, speed_up_attention
    from svd_trt.export.torch_runner import torch_runner

    cfg = preset("full")
    inputs = {f: unet_inputs(cfg, f) for f in frames}
    rows, refs = [], {}
    ref = (
        UNetSpatioTemporalConditionModel.from_pretrained(
            str(snapshot / "unet"), torch_dtype=torch.float16, variant="fp16"
        )
        .to("cuda")
        .eval()
    )
    torch.backends.cudnn.benchmark = True

    def record(variant: str, f: int, fn: Callable[[], torch.Tensor]) -> None:
        with torch.inference_mode():
            out = fn()
            mem = _peak_above(fn)
            t = cuda_time(fn, reps)
        work = flops.unet_flops(cfg.unet, 2, f, H // 8, W // 8)
        err = rel_err(out, refs[f]) if f in refs else 0.0
        row = {"variant": variant, "frames": f, "seconds": t, "tflop": work / 1e12, "peak_mem_mib": mem}
        row.update(rel_err_vs_diffusers=err, tflops=work / t["median"] / 1e12)
        row.update(
            frac_measured_peak=work / t["median"] / peak, frac_spec_peak=work / t["median"] / SPEC_PEAK
        )
        log.info(
            "%s F=%d: %.1f ms (%.0f TFLOP/s), err %.2e, +%.0f MiB",
            variant,
            f,
            1e3 * t["median"],
            row["tflops"],
            err,
            mem,
        )
        rows.append(row)
        if variant == "diffusers":
            refs[f] = out.clone()

    for f in frames:
        record("diffusers", f, lambda f=f, ref=ref: ref(*inputs[f]).sample)
    ref = None  # frees diffusers' UNet before the port loads
    gc.collect()
    torch.cuda.empty_cache()
    port = torch_runner(snapshot, "unet", cfg, "cuda", torch.float16)
    for f in frames:
        record("port", f, lambda f=f: port.module(*inputs[f]))
    speed_up_attention(port.module)
    for f in frames:
        record("port+fast-attention", f, lambda f=f: port.module(*inputs[f]))
    graphed = CudaGraphRunner(port)
    for f in frames:
        graph, static, outs = graphed._capture(inputs[f])
        record(
            "port+fast-attention+cuda-graph", f, lambda graph=graph, outs=outs: (graph.replay(), outs[0])[1]
        )
        del graph, static, outs
        torch.cuda.empty_cache()
    if compile_unet:
        rows += _compiled(port, inputs, frames[0], record)
    return rows


def _compiled(port, inputs, frames: int, record) -> list[dict]:
    """torch.compile (inductor, default mode) of the fast port, then a CUDA graph of it: one frame count."""
    from svd_trt.export.torch_fast import CudaGraphRunner

    start = time.perf_counter()
    port.module = torch.compile(port.module, dynamic=False)
    with torch.inference_mode():
        port.module(*inputs[frames])
    log.info("torch.compile took %.0f s", time.perf_counter() - start)
    graph, static, outs = CudaGraphRunner(port)._capture(inputs[frames])
    record("port+fast-attention+compile+cuda-graph", frames, lambda: (graph.replay(), outs[0])[1])
    return []


def bench_decode(snapshot: Path, frames: int, chunks: list[int], reps: int) -> list[dict]:
    """All `frames` latents decoded chunk by chunk, fp16: seconds and peak memory above the weights."""
    from diffusers import AutoencoderKLTemporalDecoder

    from svd_trt.export.torch_fast import speed_up_attention
    from svd_trt.export.torch_runner import torch_runner

    cfg = preset("full")
    g = torch.Generator(device="cuda").manual_seed(1)
    z = 4 * torch.randn(frames, 4, H // 8, W // 8, device="cuda", dtype=torch.float16, generator=g)
    port = torch_runner(snapshot, "vae_decoder", cfg, "cuda", torch.float16)
    speed_up_attention(port.module)
    ref = (
        AutoencoderKLTemporalDecoder.from_pretrained(
            str(snapshot / "vae"), torch_dtype=torch.float16, variant="fp16"
        )
        .to("cuda")
        .eval()
    )
    impls = {
        "diffusers": lambda x: ref.decode(x, num_frames=len(x)).sample,
        "port+fast-attention": lambda x: port.module(x),
    }
    rows = []
    for chunk in chunks:
        outs = {}
        for name, dec in impls.items():

            def run(dec=dec, chunk=chunk):
                return torch.cat([dec(z[i : i + chunk]) for i in range(0, frames, chunk)])

            with torch.inference_mode():
                outs[name] = run()
                mem = _peak_above(run)
                t = cuda_time(run, reps, warmup=1)
            work = sum(
                flops.vae_decode_flops(cfg.vae, min(chunk, frames - i), H // 8, W // 8)
                for i in range(0, frames, chunk)
            )
            rows.append(
                {
                    "impl": name,
                    "chunk": chunk,
                    "frames": frames,
                    "seconds": t,
                    "peak_mem_mib": mem,
                    "tflops": work / t["median"] / 1e12,
                    "frac_spec_peak": work / t["median"] / SPEC_PEAK,
                }
            )
            log.info("decode %s chunk %d: %.3f s, +%.0f MiB", name, chunk, t["median"], mem)
        rows[-1]["rel_err_vs_diffusers"] = rel_err(outs["port+fast-attention"], outs["diffusers"])
        del outs
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, nargs="+", default=[25, 14])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--decode-chunks", type=int, nargs="*", default=[1, 2, 4, 8, 14, 25])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-unet", action="store_true")
    args = ap.parse_args()
    snapshot = args.work / "full-fp16-snapshot"
    result: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not (snapshot / "model_index.json").exists():
        from svd_trt.export.random_checkpoint import write_random_checkpoint

        start = time.perf_counter()
        write_random_checkpoint(snapshot, preset("full"), "fp16")
        result["write_checkpoint_s"] = time.perf_counter() - start
    result["gemm_peak_tflops"] = gemm_peak() / 1e12
    log.info("measured fp16 GEMM peak %.0f TFLOP/s", result["gemm_peak_tflops"])

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1))

    save()
    if not args.skip_unet:
        result["unet"] = bench_unet(
            snapshot, args.frames, args.reps, args.compile, result["gemm_peak_tflops"] * 1e12
        )
        save()
        gc.collect()
        torch.cuda.empty_cache()
    if args.decode_chunks:
        result["decode"] = bench_decode(
            snapshot, max(args.frames), args.decode_chunks, max(2, args.reps // 4)
        )
        save()


if __name__ == "__main__":
    main()
