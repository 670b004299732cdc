"""`svd-trt infer` against diffusers' LTXPipeline, as whole processes: same random checkpoint, prompt, draws.

    .venv/bin/python scripts/bench_ltx.py --rounds 5 --docs docs/benchmarks.md

Each contender is what a user runs: `svd-trt infer --engines E --prompt ... --out frames.npy` (the
numpy runtime over ONNX Runtime), and a Python process that imports torch and diffusers, loads
`LTXPipeline.from_pretrained`, calls it and saves the frames with np.save. Both start from the same
initial latents and decode noise (`--latents`, `--decode-noise`; diffusers gets them packed and
through its randn_tensor). One process per contender and round, interleaved (A B A B ...); the
parent measures each process's wall time and its own peak RSS (wait4). Stage times come from
inside: ours from the timing line `svd-trt infer` prints, diffusers' from hooks on its modules.
Every round's frames are compared with diffusers' (max abs, frames in [0, 1]) and no time is
reported when they disagree (svd_trt.spec.FRAME_MAX_ABS). The report replaces its own section of
docs/benchmarks.md (scripts/bench_common.py does the shared parts; scripts/bench.py is SVD's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402  (scripts/ is not a package)
    ProcessRun,
    add_output_args,
    cell,
    disagreeing,
    environment,
    frame_errors,
    interleaved,
    peak_mb,
    run_process,
    start_logging,
    stats,
    timed_method,
    update_section,
)

from svd_trt.spec import FRAME_MAX_ABS  # noqa: E402

log = logging.getLogger("bench")
CONTENDERS = ("diffusers", "ours-ort")
PROMPT = "A red fox trots through fresh snow at dawn, its breath steaming in the cold air."
STAGES = ("T5", "transformer", "decode")  # the runtime's Timings labels (families/ltx/pipeline.py)


@dataclass(frozen=True)
class Case:
    """One benchmark request; both contenders run exactly this (text to video, CFG on)."""

    size: str = "small"
    frames: int = 49
    height: int = 256
    width: int = 384
    steps: int = 4
    guidance_scale: float = 3.0
    decode_timestep: float = 0.05  # LTX's recommended 0.03..0.05: the decoder's timestep and noise are used
    prompt: str = PROMPT

    @property
    def name(self) -> str:
        return f"ltx-{self.size}-{self.frames}f-{self.height}x{self.width}-{self.steps}s-cpu-fp32"


# ----------------------------------------------------------------------------- the diffusers child


def run_diffusers(args: argparse.Namespace) -> None:
    """diffusers' process: import, load, one call with our draws, np.save; phases and stages to --result."""
    start = time.perf_counter()
    import torch
    from diffusers import LTXPipeline
    from diffusers.pipelines.ltx import pipeline_ltx

    imported = time.perf_counter()
    case = Case(**json.loads(args.case))
    work = Path(args.work)
    latents, decode_noise = np.load(work / "latents.npy"), np.load(work / "decode_noise.npy")
    pipe = LTXPipeline.from_pretrained(args.snapshot)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()

    def given_noise(shape, generator=None, device=None, dtype=None, **kw):
        # the only draw left in __call__ once latents are given: the decode noise
        assert tuple(shape) == decode_noise.shape, (shape, decode_noise.shape)
        return torch.from_numpy(decode_noise).to(device=device, dtype=dtype)

    pipeline_ltx.randn_tensor = given_noise
    sink: dict[str, list[float]] = {}
    timed_method(pipe.text_encoder, "forward", sink, "T5")
    timed_method(pipe.transformer, "forward", sink, "transformer")
    timed_method(pipe.vae, "decode", sink, "decode")
    tc = pipe.transformer.config
    packed = pipe._pack_latents(torch.from_numpy(latents), tc.patch_size, tc.patch_size_t)
    called = time.perf_counter()
    video = pipe(
        case.prompt,
        num_frames=case.frames,
        height=case.height,
        width=case.width,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance_scale,
        decode_timestep=case.decode_timestep,
        latents=packed,
        output_type="np",
    ).frames[0]
    done = time.perf_counter()
    np.save(args.out, video)
    result = {
        "phases": {"import": imported - start, "load": loaded - imported, "call": done - called},
        "stages": {k: float(sum(sink.get(k, []))) for k in STAGES},
        "steps": sink.get("transformer", []),
        "self_peak_rss_mb": peak_mb(),
    }
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- ours: svd-trt infer

# One part of Timings.summary(): "transformer 0.176 s (0.044 s/step x 4)", "overhead 0.3 s (25.45%)".
_PART = re.compile(
    r"^(?P<name>.+?) (?P<seconds>\d+(?:\.\d+)?) s(?: \((?P<step>\d+(?:\.\d+)?) s/step x \d+\))?"
)


def parse_summary(stdout: str) -> dict[str, float]:
    """Seconds by stage from the timing line `svd-trt infer` prints (runtime/timings.py Timings.summary);
    the denoiser's per-step mean as "<stage>/step"; "total" is the pipeline call."""
    line = next(x for x in reversed(stdout.splitlines()) if " | total " in x)
    out = {}
    for part in line.split(" | "):
        m = _PART.match(part)
        if m:
            out[m["name"]] = float(m["seconds"])
            if m["step"]:
                out[m["name"] + "/step"] = float(m["step"])
    return out


def command(name: str, module: str) -> list[str]:
    """The installed console script `name` beside this interpreter, else its module."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def ours_command(case: Case, engines: Path, work: Path, out: Path) -> list[str]:
    return command("svd-trt", "svd_trt.runtime.cli") + [
        "infer", "--engines", str(engines), "--prompt", case.prompt, "--out", str(out),
        "--num-frames", str(case.frames), "--height", str(case.height), "--width", str(case.width),
        "--num-inference-steps", str(case.steps), "--guidance-scale", str(case.guidance_scale),
        "--decode-timestep", str(case.decode_timestep),
        "--latents", str(work / "latents.npy"), "--decode-noise", str(work / "decode_noise.npy"),
        "--no-progress",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- parent


def prepare(case: Case, work: Path, seed: int = 0) -> tuple[Path, Path]:
    """The random checkpoint and its ONNX engines (by the CLIs, in their own processes: this one stays
    small, see run_process), and the draws in diffusers' order from one seeded generator."""
    from svd_trt.families.ltx import latents as lat
    from svd_trt.manifest import load_manifest

    snapshot, engines = work.parent / f"ltx-{case.size}-snapshot", work.parent / f"ltx-{case.size}-onnx"
    export = command("svd-export", "svd_trt.engines.cli")
    if not (snapshot / "model_index.json").exists():
        log.info("writing a random %s LTX checkpoint to %s", case.size, snapshot)
        run_process(
            export + ["make-checkpoint", "--family", "ltx", "--size", case.size, "--out", str(snapshot)]
        )
    run_process(export + ["build-engines", "--model", str(snapshot), "--out", str(engines)])  # reuses
    cfg = load_manifest(engines).model
    shape = lat.latent_shape(
        1, cfg.latent_channels, case.frames, case.height, case.width, cfg.temporal_ratio, cfg.spatial_ratio
    )
    draws = lat.draw(np.random.default_rng(seed), lat.draw_shapes(shape, 0, cfg.vae.timestep_conditioning))
    if "decode_noise" not in draws:
        raise SystemExit(
            f"the {case.size} VAE has no timestep-conditioned decoder: nothing to benchmark it on"
        )
    for name, array in draws.items():
        np.save(work / f"{name}.npy", array)
    return snapshot, engines


def run_one(contender: str, case: Case, work: Path, snapshot: Path, engines: Path) -> dict:
    """One whole process of `contender`: wall, peak RSS, the pipeline call and its stages."""
    out = work / f"frames-{contender}.npy"
    out.unlink(missing_ok=True)  # svd-trt infer refuses nothing here, but a stale file must not be compared
    if contender == "ours-ort":
        run = run_process(ours_command(case, engines, work, out))
        parsed = parse_summary(run.stdout)
        stages = {k: parsed.get(k, 0.0) for k in STAGES}
        result = {"call": parsed["total"], "stages": stages, "step": parsed.get("transformer/step", 0.0)}
    else:
        handle = Path(tempfile.mkstemp(dir=work, suffix=".json")[1])
        cmd = [sys.executable, __file__, "diffusers", "--case", json.dumps(dataclasses.asdict(case))]
        cmd += ["--work", str(work), "--snapshot", str(snapshot), "--out", str(out), "--result", str(handle)]
        run = run_process(cmd)
        child = json.loads(handle.read_text())
        handle.unlink()
        steps = child["steps"]
        result = {"call": child["phases"]["call"], "stages": child["stages"], "phases": child["phases"]}
        result["step"] = float(np.mean(steps)) if steps else 0.0
    return {**result, **_outside(run)}


def _outside(run: ProcessRun) -> dict:
    return {"wall": run.wall_s, "peak_rss_mb": run.peak_rss_mb, "load": os.getloadavg()[0]}


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per contender: stats over rounds of the process, the call, each stage and what lies outside them."""
    out = {}
    for c, runs in results.items():
        s = {k: stats([r[k] for r in runs]) for k in ("wall", "call", "step", "peak_rss_mb")}
        for k in STAGES:
            s[k] = stats([r["stages"][k] for r in runs])
        s["overhead"] = stats([r["call"] - sum(r["stages"].values()) for r in runs])
        s["overhead_pct"] = stats([100 * (r["call"] - sum(r["stages"].values())) / r["call"] for r in runs])
        s["outside_call"] = stats([r["wall"] - r["call"] for r in runs])
        s["load"] = stats([r["load"] for r in runs])
        s["runs"] = len(runs)
        out[c] = s
    return out


def markdown(case: Case, summary: dict, errors: dict, env: dict, command: str, parent_mb: float) -> str:
    """The section of docs/benchmarks.md for one case."""
    ref = summary["diffusers"]
    load = stats([x for s in summary.values() for x in (s["load"]["min"], s["load"]["max"])])
    lines = [
        f"Case `{case.name}`: text to video, {case.frames} frames {case.height}x{case.width}, {case.steps} steps, "
        f"CFG {case.guidance_scale:g} (transformer at batch 2), decode timestep and noise {case.decode_timestep:g}, "
        f"random `{case.size}` LTX checkpoint (`svd-export make-checkpoint --family ltx --size {case.size}`).",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in env.items()),
        "",
        "Max abs frame error vs diffusers over every round (frames in [0, 1]): "
        + ", ".join(f"{c} {e:.2e}" for c, e in errors.items())
        + f" (tolerance {FRAME_MAX_ABS['fp32']:g}).",
        "",
        "Seconds, median (min-max) over rounds. process: spawn to exit, measured by the parent; call: the "
        "pipeline call; outside: process minus call (interpreter, imports, loading, writing the .npy); "
        "overhead: the call minus its model stages; peak RSS: the process's own (wait4), MB.",
        "",
        "| contender | rounds | process | vs diffusers | call | vs diffusers | T5 | transformer per step | "
        "decode | overhead | outside | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, s in summary.items():
        lines.append(
            f"| {c} | {s['runs']} | {cell(s['wall'])} | {s['wall']['median'] / ref['wall']['median']:.2f}x | "
            f"{cell(s['call'])} | {s['call']['median'] / ref['call']['median']:.2f}x | {cell(s['T5'])} | "
            f"{cell(s['step'])} | {cell(s['decode'])} | {cell(s['overhead'])} "
            f"({s['overhead_pct']['median']:.1f}%) | {cell(s['outside_call'])} | {s['peak_rss_mb']['max']:.0f} |"
        )
    lines += [
        "",
        f"Time as a fraction of diffusers' (median; the target is at most 0.7). Load average after each "
        f"process (other jobs share this machine): {cell(load)}. The parent held "
        f"{parent_mb:.0f} MB when it started the children: a floor of every peak RSS above (wait4 counts "
        f"what a child inherits at fork).",
    ]
    return "\n".join(lines) + "\n"


def run_parent(args: argparse.Namespace) -> int:
    case = Case(
        args.size, args.frames, args.height, args.width, args.steps, args.guidance_scale, args.decode_timestep
    )
    work = Path(args.work) / case.name
    work.mkdir(parents=True, exist_ok=True)
    snapshot, engines = prepare(case, work)
    errors: dict[str, float] = {}

    def one(contender: str, round_: int) -> dict:
        result = run_one(contender, case, work, snapshot, engines)
        if contender == CONTENDERS[-1]:  # every contender of this round has written its frames
            for c, err in frame_errors(work, list(CONTENDERS)).items():
                errors[c] = float(np.max([errors.get(c, 0.0), err]))  # NaN propagates
        log.info(
            "round %d %s: process %.2f s, call %.2f s", round_ + 1, contender, result["wall"], result["call"]
        )
        return result

    results = interleaved(CONTENDERS, args.rounds, one)
    parent_mb = peak_mb()  # before environment() imports torch here
    summary = summarise(results)
    invoked = "python scripts/bench_ltx.py " + " ".join(sys.argv[1:])
    report = {"case": dataclasses.asdict(case), "command": invoked, "errors": errors, "summary": summary}
    report.update(raw=results, environment=environment(), parent_peak_rss_mb=parent_mb)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    bad = disagreeing(errors, FRAME_MAX_ABS["fp32"])
    if bad:
        log.error(
            "outputs disagree with diffusers (tolerance %g): %s; no times reported",
            FRAME_MAX_ABS["fp32"],
            bad,
        )
        return 1
    text = markdown(case, summary, errors, report["environment"], invoked, parent_mb)
    print(text)
    if args.docs:
        update_section(Path(args.docs), case.name, text)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="bench", choices=["bench", "diffusers"])
    default = Case()
    ap.add_argument("--size", default=default.size, choices=["tiny-32x8", "small", "full"])
    ap.add_argument("--frames", type=int, default=default.frames)
    ap.add_argument("--height", type=int, default=default.height)
    ap.add_argument("--width", type=int, default=default.width)
    ap.add_argument("--steps", type=int, default=default.steps)
    ap.add_argument("--guidance-scale", type=float, default=default.guidance_scale)
    ap.add_argument("--decode-timestep", type=float, default=default.decode_timestep)
    ap.add_argument("--rounds", type=int, default=5, help="processes per contender, interleaved")
    add_output_args(ap)
    # the diffusers child
    ap.add_argument("--case", default=None)
    ap.add_argument("--snapshot", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--result", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    start_logging()
    args = parse_args(argv)
    if args.mode == "diffusers":
        run_diffusers(args)
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
