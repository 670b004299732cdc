"""Non-finite results are refused, never written as a video: a runner that produces NaN (as an fp16
overflow does on a GPU) fails the run in one line naming the component; NaN in a given noise
file is the request's fault, refused before any component runs."""

from __future__ import annotations

import numpy as np
import pytest
from test_infer_cli import assert_one_line_error, infer

from svd_trt.errors import EngineError
from svd_trt.families.svd.options import GenerationOptions
from svd_trt.families.svd.pipeline import SVDPipeline
from svd_trt.options import PipelineError
from svd_trt.runtime import runners

SIZE = GenerationOptions(num_frames=2, height=32, width=48, num_inference_steps=2, seed=0)


class Poisoned:
    """A real runner whose output gets `value` in one element from call `after` on (one bad
    element is what an overflow in a single attention row leaves)."""

    def __init__(self, runner, value: float, after: int = 0) -> None:
        self.runner, self.value, self.after, self.calls = runner, value, after, 0
        self.name, self.placement = runner.name, runner.placement

    def run(self, inputs):
        out = self.runner.run(inputs)
        self.calls += 1
        if self.calls > self.after:
            for array in out.values():
                array.reshape(-1)[array.size // 2] = self.value
        return out


@pytest.mark.parametrize(
    "component, value, message",
    [
        ("unet", np.nan, "unet: the denoised latents are not finite (1 of"),
        ("vae_decoder", np.inf, "vae_decoder: the decoded frames are not finite (1 of"),
    ],
)
def test_a_non_finite_result_names_its_component(tiny_engines, component, value, message):
    with SVDPipeline.from_engine_dir(tiny_engines) as pipe:
        # the UNet's NaN from its last step only: earlier ones would spread through the steps anyway
        after = SIZE.num_inference_steps - 1 if component == "unet" else 0
        pipe.runners[component] = Poisoned(pipe.runners[component], value, after)
        with pytest.raises(EngineError) as e:
            pipe(np.zeros((32, 48, 3), np.uint8), SIZE)
    assert str(e.value).startswith(message) and "nothing was written" in str(e.value)


def test_infer_writes_nothing_for_a_nan_unet(tiny_engines, tmp_path, monkeypatch):
    real = runners.open_runner

    def poisoned(engine_dir, name, entry, backend, **options):
        runner = real(engine_dir, name, entry, backend, **options)
        return Poisoned(runner, np.nan) if name == "unet" else runner

    monkeypatch.setattr("svd_trt.runtime.engine_pipeline.open_runner", poisoned)
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    assert_one_line_error(infer(tiny_engines, out), "unet: the denoised latents are not finite", out)


@pytest.mark.parametrize("flag, shape", [("--latents", (1, 2, 4, 16, 24)), ("--image-noise", (1, 3, 32, 48))])
def test_a_noise_file_with_nan_is_refused_when_loaded(tiny_engines, tmp_path, monkeypatch, flag, shape):
    opened = []
    monkeypatch.setattr("svd_trt.runtime.engine_pipeline.open_runner", lambda *a, **k: opened.append(a))
    noise = np.zeros(shape, np.float32)
    noise[0, 0, 0, 0] = np.inf if flag == "--latents" else np.nan
    np.save(tmp_path / "noise.npy", noise)
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    result = infer(tiny_engines, out, flag, str(tmp_path / "noise.npy"))
    assert_one_line_error(result, f"{flag} {tmp_path / 'noise.npy'}: holds NaN or inf values", out)
    assert opened == []  # refused before any component was opened


def test_a_nan_array_given_to_the_pipeline_is_the_requests_fault(tiny_engines):
    with SVDPipeline.from_engine_dir(tiny_engines) as pipe:
        latents = np.full(pipe.latent_shape(pipe.resolve(SIZE)), np.nan, np.float32)
        with pytest.raises(PipelineError, match="^--latents: holds NaN or inf values; pass finite noise$"):
            pipe(np.zeros((32, 48, 3), np.uint8), SIZE, latents=latents)
