"""Peak memory of LTX-Video requests against the estimate (families/ltx/memory.py; docs/memory.md, LTX).

    .venv/bin/python scripts/ltx_memory.py --work /tmp/ltx-mem --json ltx_memory.json

runs: each request in a fresh process, as `svd-trt infer` renders it (runtime/infer.py infer_to_file,
output to .npy); measured = the process's peak (VmHWM) minus its RSS when the memory check ran, against
the estimate that check made (weights at their file size).
components: one component's session in a fresh process (the runtime's OrtRunner), one call on inputs of
the request's shapes; its working memory = VmHWM minus RSS after the session opened, and what loading
took, against the estimate's term for that component.

Engine directories: the `small` preset, and `wide` (small with an 8 x 64 transformer and decoder widths
(64, 128, 256)), so the per-unit constants are seen at two widths of each. Each child is run with
scripts/bench_common.py's run_process; memory is not noisy the way time is (one run each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, run_process, start_logging  # noqa: E402  (scripts/ is not a package)

log = logging.getLogger("ltx-memory")
MIB = 2**20
PROMPT = "A red fox trots through fresh snow at dawn."
MODELS = ("small", "wide")


@dataclass(frozen=True)
class Request:
    """One request's sizes and the options that change memory."""

    frames: int
    height: int
    width: int
    cfg: bool = True
    tiling: bool = False

    def options(self) -> dict:
        return {
            "num_frames": self.frames,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": 2,  # shift_terminal needs two; memory does not depend on the count
            "guidance_scale": 3.0 if self.cfg else 1.0,
            "decode_timestep": 0.05,
            "decode_tiling": self.tiling,
            "seed": 0,
        }

    @property
    def label(self) -> str:
        extra = ("CFG" if self.cfg else "no CFG") + (", tiled" if self.tiling else "")
        return f"{self.frames} x {self.height}x{self.width}, {extra}"


RUNS = {
    "small": [
        Request(25, 256, 384),
        Request(49, 256, 384),
        Request(49, 256, 384, cfg=False),
        Request(97, 512, 512),
        Request(97, 512, 512, tiling=True),
        Request(25, 512, 768),
        Request(49, 768, 1024),
        Request(49, 768, 1024, tiling=True),
        Request(161, 512, 704, tiling=True),
    ],
    "wide": [
        Request(49, 256, 384),
        Request(49, 512, 512),
        Request(49, 512, 512, tiling=True),
        Request(161, 512, 704, tiling=True),
    ],
}
# LTX-Video's real VAE (0.9.5, random weights; scripts/ltx_real_shapes.py exports it): the decoder's
# finest level is 8x the small preset's per pixel. Small sizes: one call takes 2..25 s here.
REAL = [
    ("vae_decoder", Request(9, 128, 128)),
    ("vae_decoder", Request(9, 256, 384)),
    ("vae_encoder", Request(1, 512, 704)),
]
# (component, request): one session, one call at the request's shapes (B 2 where CFG batches).
COMPONENTS = [
    ("vae_decoder", Request(25, 256, 384)),
    ("vae_decoder", Request(49, 512, 512)),
    ("vae_decoder", Request(17, 512, 512)),
    ("transformer", Request(49, 256, 384)),
    ("transformer", Request(97, 512, 512)),
    ("transformer", Request(161, 512, 704)),
    ("transformer", Request(161, 512, 704, cfg=False)),
    ("transformer", Request(161, 704, 1024)),
    ("text_encoder", Request(9, 256, 256)),
    ("vae_encoder", Request(1, 512, 704)),
]


# ----------------------------------------------------------------------------- children


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def child_run(engines: Path, request: Request) -> dict:
    """One request through infer_to_file; RSS at the memory check, the estimate it made, the peak."""
    from svd_trt import memory
    from svd_trt.families.ltx.options import LTXOptions
    from svd_trt.runtime.infer import infer_to_file

    seen = {}
    check = memory.MemoryPlan.check

    def recording(plan, cfg, opts, pending=0):
        est = check(plan, cfg, opts, pending)
        seen.setdefault("rss", _status("VmRSS"))  # the first check: before any session opened
        seen.setdefault(
            "estimate", {"total": est.total, "weights": est.weights, "arrays": est.arrays, **est.activations}
        )
        return est

    memory.MemoryPlan.check = recording
    with tempfile.TemporaryDirectory() as tmp:
        result = infer_to_file(
            engines, Path(tmp) / "frames.npy", {"prompt": PROMPT}, LTXOptions(**request.options())
        )
    return {
        "rss_at_check": seen["rss"],
        "peak": _status("VmHWM"),
        "estimate": seen["estimate"],
        "stages": result.timings.stages,
    }


def child_component(engines: Path, name: str, request: Request) -> dict:
    """One session, one call at the request's shapes; what loading took and the call's working memory.

    `engines`: an engine directory, or a folder of scripts/ltx_real_shapes.py (<name>-fp32/<name>.onnx
    at LTX-Video's real shapes, no manifest: preset("full")). Working memory is the peak above the
    loaded session, less the file pages the call touched: external weights are mapped and count in
    RSS once read, which the estimate counts as weights, not work.
    """
    import numpy as np

    from svd_trt.families.ltx.config import preset
    from svd_trt.family import family_named
    from svd_trt.manifest import load_manifest
    from svd_trt.runtime.runners import OrtRunner

    family = family_named("ltx")
    if (engines / "manifest.json").exists():
        manifest = load_manifest(engines)
        cfg, path = manifest.model, engines / manifest.components[name].file
    else:
        cfg, path = preset("full"), engines / f"{name}-fp32" / f"{name}.onnx"
    spec = family.component_specs(cfg)[name]
    batch = 2 if request.cfg and name in ("transformer", "text_encoder") else 1
    values = {"num_frames": request.frames, "height": request.height, "width": request.width}
    sizes = family.sizes(cfg, spec, {**values, "max_sequence_length": 128}, batch)
    inputs = spec.sample_inputs(sizes, np.random.default_rng(0))
    before = _status("VmRSS")
    runner = OrtRunner(path, name=name)
    loaded, files = _status("VmRSS"), _status("RssFile")
    runner.run(inputs)
    touched = _status("RssFile") - files
    peak = _status("VmHWM") - touched
    return {
        "sizes": sizes,
        "before": before,
        "loaded": loaded,
        "peak": peak,
        "estimate": _term(cfg, name, sizes),
    }


def _term(cfg, name: str, sizes: dict) -> int:
    """The estimate's term for one component at these sizes (families/ltx/memory.py)."""
    from svd_trt.families.ltx import memory

    if name == "vae_decoder":
        return memory.decoder_bytes(cfg, sizes["F"], sizes["H"], sizes["W"])
    if name == "vae_encoder":
        return memory.encoder_bytes(cfg, sizes["H"], sizes["W"])
    if name == "transformer":
        return memory.transformer_bytes(cfg, sizes["B"], sizes["S"], sizes["L"], "fused")
    return memory.t5_bytes(cfg, sizes["B"], sizes["L"], "fused")


# ----------------------------------------------------------------------------- parent


def _export_cli() -> list[str]:
    script = Path(sys.executable).with_name("svd-export")
    return [str(script)] if script.exists() else [sys.executable, "-m", "svd_trt.engines.cli"]


def prepare(work: Path, model: str) -> Path:
    """The model's random snapshot and ONNX engines (reused when present)."""
    snapshot, engines = work / f"{model}-snapshot", work / f"{model}-onnx"
    if not (snapshot / "model_index.json").exists():
        run_process([sys.executable, __file__, "make", "--model", model, "--out", str(snapshot)])
    run_process(_export_cli() + ["build-engines", "--model", str(snapshot), "--out", str(engines)])
    return engines


def model_config(model: str):
    from svd_trt.families.ltx.config import preset

    small = preset("small")
    if model == "small":
        return small
    transformer = dataclasses.replace(
        small.transformer, num_attention_heads=8, attention_head_dim=64, cross_attention_dim=512
    )
    vae = dataclasses.replace(small.vae, decoder_block_out_channels=(64, 128, 256))
    return dataclasses.replace(small, transformer=transformer, vae=vae)


def make(model: str, out: Path) -> None:
    from svd_trt.families.ltx.port.random_checkpoint import write_random_checkpoint

    write_random_checkpoint(out, model_config(model), None, 0)


def spawn(mode: str, engines: Path, request: Request, component: str = "") -> dict:
    result = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, __file__, mode, "--engines", str(engines), "--request"]
    cmd += [json.dumps(dataclasses.asdict(request)), "--component", component, "--result", str(result)]
    try:
        run_process(cmd)
        return json.loads(result.read_text())
    finally:
        result.unlink(missing_ok=True)


def measure(work: Path, models: list[str], which: list[str]) -> dict:
    out: dict = {"runs": [], "components": []}
    for model in models:
        engines = prepare(work, model)
        if "components" in which:
            for name, request in COMPONENTS:
                r = spawn("component", engines, request, name)
                out["components"].append({"model": model, "component": name, "request": request.label, **r})
                log.info(
                    "%s %s %s: working %.0f MiB", model, name, request.label, (r["peak"] - r["loaded"]) / MIB
                )
        if "runs" in which:
            for request in RUNS[model]:
                r = spawn("run", engines, request)
                measured = r["peak"] - r["rss_at_check"]
                out["runs"].append({"model": model, "request": request.label, "measured": measured, **r})
                log.info(
                    "%s %s: measured %.0f MiB, estimate %.0f MiB (%.2f)",
                    model, request.label, measured / MIB, r["estimate"]["total"] / MIB,
                    r["estimate"]["total"] / measured,
                )  # fmt: skip
    return out


def markdown(results: dict) -> str:
    lines = [
        "| model | request | measured peak | estimate | estimate / measured | largest term |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        est = r["estimate"]
        terms = {
            ("the frames" if k == "arrays" else k): v for k, v in est.items() if k not in ("total", "weights")
        }
        widest = max(terms, key=terms.get)
        lines.append(
            f"| {r['model']} | {r['request']} | {r['measured'] / MIB:.0f} MiB | {est['total'] / MIB:.0f} MiB | "
            f"{est['total'] / r['measured']:.2f} | {widest} ({terms[widest] / MIB:.0f} MiB) |"
        )
    if results["components"]:
        lines += [
            "",
            "| model | component | shape | loading | working memory | its term | term / measured |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in results["components"]:
            work, z = c["peak"] - c["loaded"], c["sizes"]
            shape = f"B {z['B']}, {z['F']} x {z['H']}x{z['W']}" + (
                f", S {z['S']}" if c["component"] == "transformer" else ""
            )
            lines.append(
                f"| {c['model']} | {c['component']} | {shape} | {(c['loaded'] - c['before']) / MIB:.0f} MiB | "
                f"{work / MIB:.0f} MiB | {c['estimate'] / MIB:.0f} MiB | {c['estimate'] / work:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    start_logging()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="measure", choices=["measure", "run", "component", "make"])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ltx-memory"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--only", nargs="+", default=["components", "runs"], choices=["components", "runs"])
    ap.add_argument(
        "--real", default=None, help="also measure scripts/ltx_real_shapes.py's VAE graphs in this folder"
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None, help="print the tables of an earlier --json and stop")
    # children
    ap.add_argument("--engines", default=None)
    ap.add_argument("--request", default=None)
    ap.add_argument("--component", default="")
    ap.add_argument("--model", default="small", choices=MODELS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--result", default=None)
    args = ap.parse_args(argv)
    if args.mode == "make":
        make(args.model, Path(args.out))
        return 0
    if args.mode in ("run", "component"):
        request = Request(**json.loads(args.request))
        engines = Path(args.engines)
        r = (
            child_run(engines, request)
            if args.mode == "run"
            else child_component(engines, args.component, request)
        )
        Path(args.result).write_text(json.dumps(r))
        return 0
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = measure(work, args.models, args.only)
    if args.real:
        for name, request in REAL:
            r = spawn("component", Path(args.real), request, name)
            results["components"].append({"model": "real", "component": name, "request": request.label, **r})
    results["environment"] = environment()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
