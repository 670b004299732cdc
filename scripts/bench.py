"""Our runtime against diffusers' StableVideoDiffusionPipeline: same checkpoint, image, latents, noise.

    .venv/bin/python scripts/bench.py --size small                       # CPU: ours (ONNX Runtime) vs diffusers
    .venv/bin/python scripts/bench.py --size full --device cuda --dtype fp16 \\
        --frames 25 --height 576 --width 1024 --steps 25 --contenders diffusers ours-torch

One child process per contender and round, contenders interleaved (A B A B ...), so a
noisy machine slows every contender alike; medians with min/max over all timed runs.
Each child warms up once (one step at the same shapes) before its timed runs. Frames of
every contender are compared with diffusers' (max abs error) before any time is
reported. The report (the machine, versions, the command) replaces its own section of
docs/benchmarks.md, so CPU and GPU runs update the same file independently.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402  (the sibling script; scripts/ is not a package)
from bench_common import (  # noqa: E402
    add_output_args,
    cell,
    disagreeing,
    environment,
    frame_errors,
    frame_psnr,
    interleaved,
    peak_mb,
    psnr_text,
    rss_mb,
    run_process,
    start_logging,
    stats,
    sync,
    timed_method,
    update_section,
)

from svd_trt.families.svd.config import preset  # noqa: E402
from svd_trt.spec import FRAME_MAX_ABS  # noqa: E402

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "runtime" / "assets" / "coffee.jpg"
CONTENDERS = ("diffusers", "ours-ort", "ours-torch")
# Max abs frame error (frames in [0, 1]) that counts as equal output (svd_trt/spec.py).
TOLERANCE = FRAME_MAX_ABS


@dataclass(frozen=True)
class Case:
    """One benchmark setting; every contender runs exactly this."""

    size: str = "small"
    frames: int = 8
    height: int = 256
    width: int = 448
    steps: int = 4
    chunk: int = 8
    device: str = "cpu"
    dtype: str = "fp32"

    @property
    def name(self) -> str:
        return (
            f"{self.size}-{self.frames}f-{self.height}x{self.width}-{self.steps}s-{self.device}-{self.dtype}"
        )


# ----------------------------------------------------------------------------- children


class DiffusersContender:
    """diffusers' pipeline, fed our latents and our noise-augmentation draw; stages timed by hooks."""

    def __init__(self, snapshot: Path, case: Case, noise: np.ndarray) -> None:
        import torch
        from diffusers import StableVideoDiffusionPipeline
        from diffusers.pipelines.stable_video_diffusion import pipeline_stable_video_diffusion as svd_mod

        self.torch, self.case = torch, case
        self.dtype = torch.float16 if case.dtype == "fp16" else torch.float32
        variant = "fp16" if case.dtype == "fp16" else None
        self.pipe = StableVideoDiffusionPipeline.from_pretrained(
            str(snapshot), torch_dtype=self.dtype, variant=variant
        ).to(case.device)
        self.pipe.set_progress_bar_config(disable=True)
        real = svd_mod.randn_tensor

        def fake_randn(shape, generator=None, device=None, dtype=None, **kw):
            if tuple(shape) == noise.shape:  # the image noise: ours; anything else: diffusers' own
                return torch.from_numpy(noise).to(device=device, dtype=dtype)
            return real(shape, generator=generator, device=device, dtype=dtype, **kw)

        svd_mod.randn_tensor = fake_randn
        self.stages: dict[str, list[float]] = {}
        p, dev = self.pipe, case.device
        timed_method(p.image_encoder, "forward", self.stages, "clip", dev)
        timed_method(p.vae, "encode", self.stages, "vae_encode", dev)
        timed_method(p.unet, "forward", self.stages, "unet_steps", dev)
        timed_method(p.vae, "decode", self.stages, "decode", dev)

    def __call__(self, image, latents: np.ndarray, steps: int) -> tuple[np.ndarray, dict]:
        torch, c = self.torch, self.case
        self.stages.clear()
        lat = torch.from_numpy(latents).to(c.device, self.dtype)
        sync(c.device)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.pipe(
                image,
                height=c.height,
                width=c.width,
                num_frames=c.frames,
                num_inference_steps=steps,
                decode_chunk_size=c.chunk,
                latents=lat,
                output_type="np",
            )
        sync(c.device)
        total = time.perf_counter() - start
        s = self.stages
        stages = {k: float(sum(s.get(k, []))) for k in ("clip", "vae_encode", "decode")}
        stages["unet_steps"] = list(s.get("unet_steps", []))
        return np.asarray(out.frames[0]), _stage_dict(stages, total)


def _stage_dict(stages: dict, total: float) -> dict:
    unet = float(sum(stages["unet_steps"]))
    overhead = total - unet - stages["clip"] - stages["vae_encode"] - stages["decode"]
    return {**stages, "unet": unet, "total": total, "overhead": overhead}


class OursContender:
    """svd_trt.runtime's SVDPipeline over ONNX Runtime sessions or the torch port."""

    def __init__(self, snapshot: Path, engines: Path | None, case: Case, backend: str) -> None:
        from svd_trt.families.svd.pipeline import SVDPipeline

        self.case = case
        if backend == "onnxruntime":
            self.pipe = SVDPipeline.from_engine_dir(engines, backend="onnxruntime")
        else:
            self.pipe = SVDPipeline(*_torch_parts(snapshot, case))

    def __call__(self, image, latents: np.ndarray, steps: int, noise: np.ndarray) -> tuple[np.ndarray, dict]:
        from svd_trt.families.svd.options import GenerationOptions

        c = self.case
        opts = GenerationOptions(
            num_frames=c.frames,
            height=c.height,
            width=c.width,
            num_inference_steps=steps,
            decode_chunk_size=c.chunk,
        )
        out = self.pipe(image, opts, latents=latents, image_noise=noise)
        t = out.timings
        stages = {
            "clip": t["CLIP"],
            "vae_encode": t["VAE encode"],
            "decode": t["decode"],
            "unet_steps": list(t.steps),
        }
        return out.frames, _stage_dict(stages, t.total)


def _torch_parts(snapshot: Path, case: Case):
    """(manifest, runners) of the torch backend: the fast path on CUDA, the plain fp32 port on CPU."""
    from svd_trt.families.svd.port.checkpoint import read_config
    from svd_trt.manifest import Manifest

    cfg = read_config(snapshot)
    if case.device.startswith("cuda"):
        from svd_trt.export.torch_backend import fast_runners

        runners = fast_runners(snapshot, cfg, device=case.device)
    else:
        from svd_trt.export.torch_backend import torch_runners

        runners = torch_runners(snapshot, cfg)
    return Manifest("torch", "svd", cfg, {}, source=str(snapshot)), runners


def run_child(args: argparse.Namespace) -> None:
    """One contender in this process: load, warm up, time `repeat` runs, write a JSON result."""
    from PIL import Image

    case = Case(**json.loads(args.case))
    work = Path(args.work)
    noise, latents = np.load(work / "noise.npy"), np.load(work / "latents.npy")
    image = Image.open(IMAGE).convert("RGB")
    start = time.perf_counter()
    if args.contender == "diffusers":
        contender = DiffusersContender(Path(args.snapshot), case, noise)
        call = contender
    else:
        backend = "onnxruntime" if args.contender == "ours-ort" else "torch"
        contender = OursContender(Path(args.snapshot), Path(args.engines), case, backend)

        def call(image, latents, steps):
            return contender(image, latents, steps, noise)

    load_s = time.perf_counter() - start
    rss_loaded = rss_mb()
    call(image, latents, min(case.steps, 1))  # warm-up at the same shapes (arenas, autotuning, graphs)
    runs = []
    for _ in range(args.repeat):
        frames, timing = call(image, latents, case.steps)
        runs.append(timing)
    np.save(work / f"frames-{args.contender}.npy", frames)
    result = {"contender": args.contender, "load_s": load_s, "rss_loaded_mb": rss_loaded, "runs": runs}
    result.update(_memory())
    Path(args.result).write_text(json.dumps(result))


def _memory() -> dict:
    out = {"peak_rss_mb": peak_mb()}
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_decode_child(args: argparse.Namespace) -> None:
    """Decode the benchmark's latents with one chunk size; report peak memory above the loaded model."""
    case = Case(**json.loads(args.case))
    z = np.load(Path(args.work) / "latents.npy")[0] * np.float32(4.0)  # latent magnitudes near the end
    decode = _decoder(args.contender, Path(args.snapshot), Path(args.engines) if args.engines else None, case)
    rss_loaded = rss_mb()
    start = time.perf_counter()
    for i in range(0, len(z), case.chunk):
        decode(z[i : i + case.chunk])
    seconds = time.perf_counter() - start
    result = {
        "contender": args.contender,
        "chunk": case.chunk,
        "seconds": seconds,
        "rss_loaded_mb": rss_loaded,
    }
    result.update(_memory())
    Path(args.result).write_text(json.dumps(result))


def _decoder(contender: str, snapshot: Path, engines: Path | None, case: Case):
    """A callable decoding one chunk [n, C, h, w] (unscaled latents) to frames, on the host."""
    if contender == "ours-ort":
        from svd_trt.manifest import load_manifest
        from svd_trt.runtime.runners import open_runner

        entry = load_manifest(engines).components["vae_decoder"]
        runner = open_runner(engines, "vae_decoder", entry, "onnxruntime")
        return lambda chunk: runner.run({"latents": chunk})
    import torch

    dtype = torch.float16 if case.dtype == "fp16" else torch.float32
    if contender == "ours-torch":
        from svd_trt.export.torch_backend import torch_runner
        from svd_trt.families.svd.port.fast_attention import speed_up_attention

        runner = torch_runner(snapshot, "vae_decoder", device=case.device, dtype=dtype)
        if case.device.startswith("cuda"):
            speed_up_attention(runner.module)
        return lambda chunk: runner.run({"latents": chunk})
    from diffusers import AutoencoderKLTemporalDecoder

    variant = "fp16" if case.dtype == "fp16" else None
    vae = AutoencoderKLTemporalDecoder.from_pretrained(
        str(snapshot / "vae"), torch_dtype=dtype, variant=variant
    )
    vae = vae.to(case.device).eval()

    def decode(chunk: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(chunk).to(case.device, dtype)
            return vae.decode(x, num_frames=len(chunk)).sample.float().cpu().numpy()

    return decode


# ----------------------------------------------------------------------------- parent


def prepare(case: Case, work: Path, contenders: list[str], seed: int = 0) -> tuple[Path, Path | None]:
    """The random checkpoint (written once per size and dtype), ONNX engines if needed, the draws."""
    from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint

    cfg = preset(case.size)
    variant = "fp16" if case.dtype == "fp16" else None
    snapshot = work.parent / f"{case.size}-{case.dtype}-snapshot"  # shared by every case of this size
    if not (snapshot / "model_index.json").exists():
        log.info("writing a random %s checkpoint to %s", case.size, snapshot)
        write_random_checkpoint(snapshot, cfg, variant)
    engines = None
    if "ours-ort" in contenders:
        from svd_trt.export.onnx_export import build_onnx_dir

        engines = work.parent / f"{case.size}-{case.dtype}-onnx"
        build_onnx_dir(snapshot, engines)  # reuses what is already exported
    rng = np.random.default_rng(seed)
    s = cfg.vae.scale_factor
    noise = rng.standard_normal((1, 3, case.height, case.width), dtype=np.float32)
    latents = rng.standard_normal(
        (1, case.frames, cfg.vae.latent_channels, case.height // s, case.width // s)
    )
    # fp16 pipelines start from fp16 latents; round ours the same way so both begin equal.
    latents = latents.astype(np.float16 if case.dtype == "fp16" else np.float32).astype(np.float32)
    np.save(work / "noise.npy", noise)
    np.save(work / "latents.npy", latents)
    return snapshot, engines


def _spawn(
    mode: str, contender: str, case: Case, work: Path, snapshot: Path, engines, repeat: int = 0
) -> dict:
    result = Path(tempfile.mkstemp(dir=work, suffix=".json")[1])
    cmd = [
        sys.executable,
        __file__,
        mode,
        "--contender",
        contender,
        "--case",
        json.dumps(dataclasses.asdict(case)),
    ]
    cmd += [
        "--work",
        str(work),
        "--snapshot",
        str(snapshot),
        "--engines",
        str(engines or ""),
        "--result",
        str(result),
    ]
    cmd += ["--repeat", str(repeat)]
    log.info("%s %s (%s)", mode, contender, case.name)
    run_process(cmd)
    return json.loads(result.read_text())


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per contender: stats of every stage over all timed runs of all rounds, and peak memory."""
    out = {}
    for c, children in results.items():
        runs = [r for child in children for r in child["runs"]]
        per_step = [s for r in runs for s in r["unet_steps"]]
        s = {
            k: stats([r[k] for r in runs])
            for k in ("total", "clip", "vae_encode", "unet", "decode", "overhead")
        }
        s["unet_step"] = stats(per_step) if per_step else stats([0.0])
        s["overhead_pct"] = stats([100 * r["overhead"] / r["total"] for r in runs])
        s["peak_rss_mb"] = max(ch["peak_rss_mb"] for ch in children)
        s["load_s"] = stats([ch["load_s"] for ch in children])
        if any("cuda_peak_mb" in ch for ch in children):
            s["cuda_peak_mb"] = max(ch.get("cuda_peak_mb", 0.0) for ch in children)
        s["runs"] = len(runs)
        out[c] = s
    return out


# ----------------------------------------------------------------------------- report


def markdown(
    case: Case,
    summary: dict,
    errors: dict,
    decode_mem: list[dict],
    env: dict,
    command: str,
    psnr: dict[str, float] | None = None,
) -> str:
    """The section of docs/benchmarks.md for one case (`psnr`: frame PSNR in dB per contender)."""
    f = flops.run_flops(preset(case.size), case.frames, case.height, case.width, case.steps, case.chunk)
    ref = summary.get("diffusers")
    lines = [
        f"Case `{case.name}`: {case.frames} frames {case.height}x{case.width}, {case.steps} steps, CFG (UNet at batch 2), "
        f"decode chunk {case.chunk}, random `{case.size}` checkpoint, runtime/assets/coffee.jpg.",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in env.items()),
        "",
        "Max abs frame error vs diffusers (frames in [0, 1]): "
        + ", ".join(f"{c} {e:.2e}" for c, e in errors.items())
        + f" (tolerance {TOLERANCE[case.dtype]:g})."
        + ("" if not psnr else " PSNR: " + ", ".join(f"{c} {psnr_text(db)}" for c, db in psnr.items()) + "."),
        "",
        "Seconds, median (min-max) over every timed run; runtime overhead = wall time outside model calls.",
        "",
        "| contender | runs | total | speed-up vs diffusers | CLIP | VAE encode | UNet | UNet per step | decode | overhead | overhead % | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, s in summary.items():
        speed = ref["total"]["median"] / s["total"]["median"] if ref else float("nan")
        mem = f"{s['peak_rss_mb']:.0f}" + (f" (GPU {s['cuda_peak_mb']:.0f})" if "cuda_peak_mb" in s else "")
        lines.append(
            f"| {c} | {s['runs']} | {cell(s['total'])} | {speed:.2f}x | {cell(s['clip'])} | {cell(s['vae_encode'])} | "
            f"{cell(s['unet'])} | {cell(s['unet_step'])} | {cell(s['decode'])} | {cell(s['overhead'])} | "
            f"{s['overhead_pct']['median']:.2f}% | {mem} |"
        )
    lines += [
        "",
        "Work per stage (FLOPs counted from the architecture, scripts/flops.py) and rate reached:",
        "",
    ]
    lines += ["| stage | GFLOP | " + " | ".join(f"{c} GFLOP/s" for c in summary) + " |"]
    lines += ["|---|---|" + "---|" * len(summary)]
    for stage, key in (
        ("CLIP", "clip"),
        ("VAE encode", "vae_encode"),
        ("UNet (all steps)", "unet"),
        ("decode", "decode"),
    ):
        rates = [f"{f[key] / max(s[key]['median'], 1e-9) / 1e9:.1f}" for s in summary.values()]
        lines.append(f"| {stage} | {f[key] / 1e9:.1f} | " + " | ".join(rates) + " |")
    if decode_mem:
        lines += [
            "",
            f"Decode of all {case.frames} frames by chunk size (one child each): seconds and memory above the loaded model.",
            "",
        ]
        lines += [
            "| contender | chunk | seconds | peak RSS MB | RSS above loaded MB | GPU peak MB |",
            "|---|---|---|---|---|---|",
        ]
        for d in decode_mem:
            gpu = f"{d['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in d else "-"
            lines.append(
                f"| {d['contender']} | {d['chunk']} | {d['seconds']:.2f} | {d['peak_rss_mb']:.0f} | "
                f"{d['peak_rss_mb'] - d['rss_loaded_mb']:.0f} | {gpu} |"
            )
    return "\n".join(lines) + "\n"


def run_parent(args: argparse.Namespace) -> int:
    case = Case(
        args.size, args.frames, args.height, args.width, args.steps, args.chunk, args.device, args.dtype
    )
    work = Path(args.work) / case.name
    work.mkdir(parents=True, exist_ok=True)
    contenders = args.contenders
    snapshot, engines = prepare(case, work, contenders)
    results = interleaved(
        contenders, args.rounds, lambda c, r: _spawn("child", c, case, work, snapshot, engines, args.repeat)
    )
    errors = frame_errors(work, contenders) if "diffusers" in contenders else {}
    psnr = frame_psnr(work, contenders) if "diffusers" in contenders else {}
    summary = summarise(results)
    decode_mem = []
    for chunk in args.decode_chunks:
        for c in contenders:
            chunk_case = dataclasses.replace(case, chunk=chunk)
            decode_mem.append(_spawn("decode", c, chunk_case, work, snapshot, engines))
    command = "python scripts/bench.py " + " ".join(sys.argv[1:])
    report = {
        "case": dataclasses.asdict(case),
        "command": command,
        "errors": errors,
        "psnr_db": psnr,
        "summary": summary,
        "decode_memory": decode_mem,
    }
    report["raw"] = results
    report["environment"] = environment()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    tol = TOLERANCE[case.dtype]
    bad = disagreeing(errors, tol)
    if bad:
        log.error("outputs disagree with diffusers (tolerance %g): %s; no times reported", tol, bad)
        return 1
    text = markdown(case, summary, errors, decode_mem, report["environment"], command, psnr)
    print(text)
    if args.docs:
        update_section(Path(args.docs), args.section or case.name, text)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="bench", choices=["bench", "child", "decode"])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "full", "full-14"])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=448)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=8, help="decode chunk size of the timed runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--contenders", nargs="+", default=["diffusers", "ours-ort"], choices=CONTENDERS)
    ap.add_argument("--rounds", type=int, default=3, help="children per contender, interleaved")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per child (after one warm-up)")
    ap.add_argument(
        "--decode-chunks", type=int, nargs="*", default=[], help="chunk sizes of the memory sweep"
    )
    add_output_args(ap)
    ap.add_argument("--section", default=None, help="section name in --docs (default: the case name)")
    # child-only
    ap.add_argument("--contender", default=None)
    ap.add_argument("--case", default=None)
    ap.add_argument("--snapshot", default=None)
    ap.add_argument("--engines", default=None)
    ap.add_argument("--result", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    start_logging()
    args = parse_args(argv)
    if args.mode == "child":
        run_child(args)
        return 0
    if args.mode == "decode":
        run_decode_child(args)
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
