"""`svd-trt infer`: image in, video out, with diffusers' argument names and defaults.

Thin: parse, build GenerationOptions (its options are declared once, svd_trt/options.py),
call the pipeline, write the file. Every expected failure is one line on stderr and exit
code 2 (svd_trt/cli.py); no partial output is left.
"""

from __future__ import annotations

import logging

import click

from svd_trt.cli import (
    draw_options,
    generation_options,
    input_options,
    one_line_errors,
    pop_draws,
    pop_generation,
    pop_inputs,
)
from svd_trt.runtime.devices import DEVICES
from svd_trt.runtime.runners import BACKENDS

log = logging.getLogger("svd_trt")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """svd-trt: run video diffusion engines built by svd-export."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


@main.command()
@click.option("--engines", "engine_dir", required=True, type=click.Path(), help="Engine directory.")
@input_options
@click.option("--out", required=True, type=click.Path(), help=".mp4, .gif, .npy or a directory of PNGs.")
@generation_options()
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Default: the engines' own. torch: the PyTorch port of the snapshot the engines were "
    "exported from, fp16 on a CUDA GPU if torch sees one, else fp32 on the CPU.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=None,
    help="Where the engines run. Default: the backend's own (onnxruntime cpu, tensorrt cuda, torch cuda "
    "if torch sees one). onnxruntime cuda needs onnxruntime-gpu; its providers are checked, never a "
    "silent CPU run.",
)
@draw_options
@click.option("--output-fps", type=float, default=None, help="Frame rate of the file; default the conditioning one.")
@click.option("--contact-sheet", type=click.Path(), default=None, help="Also write a PNG grid of the frames.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@one_line_errors
def infer(engine_dir, out, output_fps, contact_sheet, backend, device, progress, **kw):
    """Render a video with the engines in ENGINES from the inputs their model family takes (--image,
    --prompt, ...: see each option's help). Options the family does not take are refused."""
    from svd_trt.family import family_named
    from svd_trt.manifest import load_manifest
    from svd_trt.runtime.infer import infer_to_file

    family = family_named(load_manifest(engine_dir).family)
    result = infer_to_file(
        engine_dir=engine_dir,
        out=out,
        inputs=pop_inputs(kw, family),
        options=pop_generation(kw, family),
        draws=pop_draws(kw, family),
        output_fps=output_fps,
        contact_sheet=contact_sheet,
        backend=backend,
        progress=progress,
        device=device,
    )
    click.echo(f"wrote {result.path}")
    if result.contact_sheet:
        click.echo(f"wrote {result.contact_sheet}")
    click.echo(result.timings.summary())


def _register() -> None:
    """The commands that live beside their libraries."""
    from svd_trt.runtime.serving.cli import serve

    main.add_command(serve)


_register()

if __name__ == "__main__":
    main()
