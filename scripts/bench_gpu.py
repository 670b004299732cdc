"""Microbenchmarks of the torch backend's fast path against diffusers, one process, CUDA events.

    python scripts/bench_gpu.py --work /tmp/w --out gpu.json [--frames 25 14] [--compile]
    python scripts/bench_gpu.py --work /tmp/w --out cpu.json --size tiny --device cpu \\
        --height 32 --width 48 --frames 3 --decode-chunks 1 2 3     # a smoke run of every path
    python scripts/bench_gpu.py ... --dtype fp32     # the CPU smoke run in fp32: fp16 on a CPU is slow

UNet: one CFG step (batch 2) per frame count, fp16: diffusers' UNet (SDPA attention, its
default), the port as exported, the port with fast attention (fused QKV, one-key
cross-attention shortcut), that replayed from a CUDA graph, and optionally that
torch.compile'd first. Every output is compared with diffusers' fp16 one and with the fp32
port (TF32 off) on the same inputs; diffusers' own fp16 error is the yardstick. Rates use
the model's FLOPs (diffusers' count, scripts/flops.py) for every variant, against the
measured fp16 GEMM peak and H100 SXM's 989 TFLOP/s dense fp16 spec. `markdown(result)`
renders the JSON as the tables of docs/benchmarks_gpu.md (scripts/gpu_check_report.py).

Decode: the frames' latents decoded in chunks of each size, diffusers and the fast port:
time and peak GPU memory above the loaded model. The random fp16 checkpoint is written
to WORK/<size>-fp16-snapshot if missing (where scripts/bench.py --work WORK --dtype fp16 finds it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402  (the sibling script; scripts/ is not a package)

from svd_trt.families.svd.config import SVDConfig, preset  # noqa: E402
from svd_trt.families.svd.spec import DEFAULT_HEIGHT, DEFAULT_WIDTH  # noqa: E402

log = logging.getLogger("bench_gpu")
SPEC_PEAK = 989e12  # H100 SXM dense fp16 tensor-core spec (no sparsity)
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class Bench:
    """Timing, memory and cache hygiene on one device: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: str, reps: int) -> None:
        self.device, self.reps = torch.device(device), reps
        self.cuda = self.device.type == "cuda"

    def time(self, fn: Callable[[], object], reps: int | None = None, warmup: int = 2) -> dict[str, float]:
        """Seconds per call: median/min/max over `reps` calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps or self.reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        return {"median": float(np.median(times)), "min": float(min(times)), "max": float(max(times))}

    def peak_above(self, fn: Callable[[], object]) -> float | None:
        """Peak memory one call allocates above what is resident before it, MiB (GPU only)."""
        if not self.cuda:
            fn()
            return None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def gemm_peak(self, n: int = 8192) -> float:
        """Measured dense FLOP/s of one large square fp16 GEMM (fp32 on the CPU) on random data."""
        n = n if self.cuda else 512
        dtype = torch.float16 if self.cuda else torch.float32
        a, b = (torch.randn(n, n, device=self.device, dtype=dtype) for _ in range(2))
        return 2 * n**3 / self.time(lambda: a @ b, reps=20, warmup=5)["median"]


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """max |out - ref|, and that over max |ref| (the tests' relative error)."""
    d = (out.double() - ref.double()).abs().max().item()
    return {"max_abs": d, "rel": d / max(ref.double().abs().max().item(), 1e-30)}


def unet_inputs(cfg: SVDConfig, frames: int, h: int, w: int, device, dtype) -> list[torch.Tensor]:
    """sample [2, F, 8, h, w], timestep [2] (fp32), embeds [2, 1, D], time ids [2, 3], as the pipeline feeds."""
    g = torch.Generator().manual_seed(frames)
    s = cfg.vae.scale_factor
    sample = torch.randn(2, frames, cfg.unet.in_channels, h // s, w // s, generator=g)
    embeds = torch.randn(2, 1, cfg.clip.projection_dim, generator=g)
    embeds[0] = 0  # the unconditional half of CFG
    timestep = torch.full((2,), 0.25 * float(np.log(100.0)))
    ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    return [sample.to(device, dtype), timestep.to(device), embeds.to(device, dtype), ids.to(device, dtype)]


def bench_unet(snapshot: Path, cfg: SVDConfig, args: argparse.Namespace, b: Bench, peak: float) -> list[dict]:
    from diffusers import UNetSpatioTemporalConditionModel

    from svd_trt.export.torch_backend import CudaGraphRunner, strict_fp32, torch_runner
    from svd_trt.families.svd.port.fast_attention import speed_up_attention

    dtype, s = DTYPES[args.dtype], cfg.vae.scale_factor
    inputs = {f: unet_inputs(cfg, f, args.height, args.width, b.device, dtype) for f in args.frames}
    ref_diffusers: dict[int, torch.Tensor] = {}
    ref32: dict[int, torch.Tensor] = {}
    rows: list[dict] = []
    if not args.no_fp32_reference:  # the port in fp32 equals diffusers' fp32 UNet (tests/export)
        port32 = torch_runner(snapshot, "unet", cfg, b.device, torch.float32)
        with torch.inference_mode(), strict_fp32():
            for f in args.frames:
                ref32[f] = port32.module(*[a.float() if a.is_floating_point() else a for a in inputs[f]])
        del port32
        b.free()
    if b.cuda:
        torch.backends.cudnn.benchmark = True

    def record(variant: str, f: int, fn: Callable[[], torch.Tensor]) -> None:
        with torch.inference_mode():
            out = fn().clone()
            mem = b.peak_above(fn)
            t = b.time(fn)
        work = flops.unet_flops(cfg.unet, 2, f, args.height // s, args.width // s)
        row = {"variant": variant, "frames": f, "seconds": t, "model_tflop": work / 1e12, "peak_mem_mib": mem}
        row["tflops"] = work / t["median"] / 1e12
        row["frac_measured_peak"] = work / t["median"] / peak
        row["frac_spec_peak"] = work / t["median"] / SPEC_PEAK
        row["vs_diffusers"] = errors(out, ref_diffusers[f]) if f in ref_diffusers else None
        row["vs_fp32"] = errors(out, ref32[f]) if f in ref32 else None
        log.info(
            "%s F=%d: %.2f ms, %.0f TFLOP/s (%.0f%% of spec), rel err vs diffusers %.1e, vs fp32 %.1e",
            variant,
            f,
            1e3 * t["median"],
            row["tflops"],
            100 * row["frac_spec_peak"],
            (row["vs_diffusers"] or {}).get("rel", 0.0),
            (row["vs_fp32"] or {}).get("rel", 0.0),
        )
        rows.append(row)
        if variant == "diffusers":
            ref_diffusers[f] = out

    unet = UNetSpatioTemporalConditionModel.from_pretrained(
        str(snapshot / "unet"), torch_dtype=dtype, variant="fp16"
    )
    unet = unet.to(b.device).eval()
    for f in args.frames:
        record("diffusers", f, lambda f=f, m=unet: m(*inputs[f]).sample)
    del unet  # free diffusers' UNet before the port loads
    b.free()
    port = torch_runner(snapshot, "unet", cfg, b.device, dtype)
    for f in args.frames:
        record("port", f, lambda f=f: port.module(*inputs[f]))
    speed_up_attention(port.module)
    for f in args.frames:
        record("port+fast-attention", f, lambda f=f: port.module(*inputs[f]))
    if not b.cuda:
        return rows
    for f in args.frames:
        graph, _static, outs = CudaGraphRunner(port).capture(inputs[f])
        record(
            "port+fast-attention+cuda-graph", f, lambda graph=graph, outs=outs: (graph.replay(), outs[0])[1]
        )
        del graph, _static, outs
        b.free()
    if args.compile:
        start = time.perf_counter()
        port.module = torch.compile(port.module, dynamic=False)
        f = args.frames[0]
        with torch.inference_mode():
            port.module(*inputs[f])
        log.info("torch.compile took %.0f s", time.perf_counter() - start)
        graph, _static, outs = CudaGraphRunner(port).capture(inputs[f])
        record("port+fast-attention+compile+cuda-graph", f, lambda: (graph.replay(), outs[0])[1])
    return rows


def bench_decode(snapshot: Path, cfg: SVDConfig, args: argparse.Namespace, b: Bench) -> list[dict]:
    """All max(frames) latents decoded chunk by chunk in --dtype: seconds and peak memory above the weights."""
    from diffusers import AutoencoderKLTemporalDecoder

    from svd_trt.export.torch_backend import torch_runner
    from svd_trt.families.svd.port.fast_attention import speed_up_attention

    dtype, s, frames = DTYPES[args.dtype], cfg.vae.scale_factor, max(args.frames)
    g = torch.Generator().manual_seed(1)
    # the pipeline decodes latents / scaling_factor: ~5x unit variance
    z = torch.randn(frames, cfg.vae.latent_channels, args.height // s, args.width // s, generator=g)
    z = (z / cfg.vae.scaling_factor).to(b.device, dtype)
    port = torch_runner(snapshot, "vae_decoder", cfg, b.device, dtype)
    speed_up_attention(port.module)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(
        str(snapshot / "vae"), torch_dtype=dtype, variant="fp16"
    )
    vae = vae.to(b.device).eval()
    impls = {
        "diffusers": lambda x: vae.decode(x, num_frames=len(x)).sample,
        "port+fast-attention": lambda x: port.module(x),
    }
    rows = []
    for chunk in args.decode_chunks:
        outs = {}
        work = sum(
            flops.vae_decode_flops(cfg.vae, min(chunk, frames - i), args.height // s, args.width // s)
            for i in range(0, frames, chunk)
        )
        for name, dec in impls.items():

            def run(dec=dec, chunk=chunk):
                return torch.cat([dec(z[i : i + chunk]) for i in range(0, frames, chunk)])

            with torch.inference_mode():
                outs[name] = run()
                mem = b.peak_above(run)
                t = b.time(run, reps=max(2, args.reps // 4), warmup=1)
            row = {"impl": name, "chunk": chunk, "frames": frames, "seconds": t, "peak_mem_mib": mem}
            row.update(tflops=work / t["median"] / 1e12, frac_spec_peak=work / t["median"] / SPEC_PEAK)
            rows.append(row)
            log.info("decode %s chunk %d: %.3f s, +%s MiB", name, chunk, t["median"], mem)
        rows[-1]["vs_diffusers"] = errors(outs["port+fast-attention"], outs["diffusers"])
        del outs
        b.free()
    return rows


def machine() -> dict:
    import diffusers

    info = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info.update(
            gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version()
        )
        try:
            q = "name,driver_version,memory.total,clocks.max.sm,power.limit"
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True
            )
            info["nvidia_smi"] = smi.stdout.strip()
        except OSError:
            pass
    return info


def _ms(t: dict[str, float]) -> str:
    return f"{1e3 * t['median']:.2f} ({1e3 * t['min']:.2f}-{1e3 * t['max']:.2f})"


def _err(e: dict | None, key: str = "rel") -> str:
    return "-" if e is None else f"{e[key]:.2e}"


def _mib(m: float | None) -> str:
    return "-" if m is None else f"{m:,.0f}"


def markdown(result: dict) -> str:
    """This script's JSON as markdown tables: the UNet variants, then the decode sweep."""
    m = result.get("machine", {})
    dtype = result.get("args", {}).get("dtype", "fp16")
    lines = [
        "Machine: " + "; ".join(f"{k} {v}" for k, v in m.items() if k != "nvidia_smi"),
        "",
        f"Measured GEMM peak (one 8192^3 fp16 product; 512^3 fp32 on a CPU): "
        f"{result.get('gemm_peak_tflops', float('nan')):.3g} TFLOP/s; "
        f"spec {SPEC_PEAK / 1e12:.0f} TFLOP/s (H100 SXM dense fp16).",
    ]
    if result.get("unet"):
        lines += [
            "",
            f"UNet, one CFG step (batch 2), {dtype}; ms median (min-max); rates from diffusers' FLOP count; "
            "relative error = max |d| / max |ref|; peak = GPU memory one call allocates above what is resident.",
            "",
            f"| variant | F | ms / step | TFLOP/s | % of GEMM peak | % of spec | rel. err vs diffusers {dtype} "
            "| rel. err vs fp32 port | peak MiB above weights |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["unet"]:
            lines.append(
                f"| {r['variant']} | {r['frames']} | {_ms(r['seconds'])} | {r['tflops']:.3g} "
                f"| {100 * r['frac_measured_peak']:.0f}% | {100 * r['frac_spec_peak']:.0f}% "
                f"| {_err(r['vs_diffusers'])} | {_err(r['vs_fp32'])} | {_mib(r['peak_mem_mib'])} |"
            )
    if result.get("decode"):
        lines += [
            "",
            f"VAE decode of all frames' latents, chunk by chunk, {dtype}: seconds median (min-max), "
            "peak GPU memory above the loaded decoder.",
            "",
            "| decode chunk | implementation | frames | s | TFLOP/s | peak MiB above weights | max abs vs diffusers |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["decode"]:
            t = r["seconds"]
            lines.append(
                f"| {r['chunk']} | {r['impl']} | {r['frames']} | {t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}) "
                f"| {r['tflops']:.3g} | {_mib(r['peak_mem_mib'])} | {_err(r.get('vs_diffusers'), 'max_abs')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="where the random checkpoint lives")
    ap.add_argument("--out", type=Path, required=True, help="JSON results (rewritten after each part)")
    ap.add_argument("--size", default="full", choices=["tiny", "small", "full"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, nargs="+", default=[25, 14])
    ap.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument(
        "--dtype", default="fp16", choices=list(DTYPES), help="of every variant (fp32: CPU smoke runs)"
    )
    ap.add_argument("--decode-chunks", type=int, nargs="*", default=[1, 2, 4, 8, 14, 25])
    ap.add_argument("--compile", action="store_true", help="also torch.compile the fast UNet (minutes)")
    ap.add_argument("--skip-unet", action="store_true")
    ap.add_argument("--no-fp32-reference", action="store_true")
    args = ap.parse_args()
    cfg = preset(args.size)
    b = Bench(args.device, args.reps)
    snapshot = args.work / f"{args.size}-fp16-snapshot"
    result: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    if not (snapshot / "model_index.json").exists():
        from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint

        start = time.perf_counter()
        write_random_checkpoint(snapshot, cfg, "fp16")
        result["write_checkpoint_s"] = time.perf_counter() - start
        log.info("wrote %s in %.0f s", snapshot, result["write_checkpoint_s"])
    peak = b.gemm_peak()
    result["gemm_peak_tflops"] = peak / 1e12
    log.info("measured GEMM peak %.0f TFLOP/s", peak / 1e12)

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1))

    save()
    if not args.skip_unet:
        result["unet"] = bench_unet(snapshot, cfg, args, b, peak)
        save()
        b.free()
    if args.decode_chunks:
        result["decode"] = bench_decode(snapshot, cfg, args, b)
        save()


if __name__ == "__main__":
    main()
