"""Optimization profiles: range parsing and validation, and the per-input shapes the specs give."""

from __future__ import annotations

import pytest

from svd_trt.engines.profiles import LEVELS, component_profiles
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.spec import component_specs, served_limits, size_multiple
from svd_trt.limits import RangeError, Request, parse_range
from svd_trt.spec import Span

SMALL = preset("small")  # 8 frames by default


def profiles(request: Request) -> dict:
    return component_profiles(SVD, SMALL, served_limits(SMALL, request, bounded=True))


def spans(request: Request) -> dict[str, Span]:
    return served_limits(SMALL, request, bounded=True)


def mmm(lo: tuple, opt: tuple, hi: tuple) -> dict[str, tuple]:
    return {"min": lo, "opt": opt, "max": hi}


@pytest.mark.parametrize(
    "text, pair", [("14", (14, 14)), ("8:25", (8, 25)), (" 8:25 ", (8, 25)), ("3:3", (3, 3))]
)
def test_parse_range(text, pair):
    assert parse_range(text, "--num-frames") == pair


@pytest.mark.parametrize(
    "text, words",
    [
        ("abc", "expected N or MIN:MAX"),
        ("8:", "expected N or MIN:MAX"),
        (":8", "expected N or MIN:MAX"),
        ("1:2:3", "expected N or MIN:MAX"),
        ("0", "positive"),
        ("-4:8", "positive"),
        ("25:8", "min 25 is larger than max 8"),
    ],
)
def test_parse_range_errors_are_one_line_naming_the_option(text, words):
    with pytest.raises(RangeError) as e:
        parse_range(text, "--num-frames")
    message = str(e.value)
    assert "\n" not in message and message.startswith("--num-frames") and words in message


def test_size_multiple_is_diffusers_8_and_whole_latents():
    assert size_multiple(SMALL) == size_multiple(preset("full")) == 8  # VAE scale factor 8
    assert size_multiple(preset("tiny")) == 8  # scale factor 2: diffusers' 8 still applies


def test_unbounded_limits_for_onnxruntime():
    """No range given: ONNX Runtime serves any size (the graph is fully dynamic)."""
    limits = served_limits(SMALL, {}, bounded=False)
    assert limits["num_frames"] == Span(1, 8, None) and limits["decode_chunk_size"] == Span(1, 8, None)
    assert limits["height"] == Span(8, 576, None) and limits["width"] == Span(8, 1024, None)
    assert limits["height"].contains(4096) and not limits["height"].contains(0)
    given = served_limits(SMALL, dict(num_frames=(2, 14)), bounded=False)
    assert given["num_frames"] == Span(2, 8, 14) and given["decode_chunk_size"] == Span(1, 14, 14)


def test_small_defaults_concrete_shapes():
    """Default request: the model's 8 frames, 576x1024; UNet batch 1..2 opt 2."""
    p = profiles({})
    assert p["unet"]["sample"] == mmm((1, 8, 8, 72, 128), (2, 8, 8, 72, 128), (2, 8, 8, 72, 128))
    assert p["unet"]["timestep"] == mmm((1,), (2,), (2,))
    assert p["unet"]["encoder_hidden_states"] == mmm((1, 1, 64), (2, 1, 64), (2, 1, 64))
    assert p["unet"]["added_time_ids"] == mmm((1, 3), (2, 3), (2, 3))
    assert p["image_encoder"]["pixel_values"] == mmm((1, 3, 224, 224), (1, 3, 224, 224), (2, 3, 224, 224))
    assert p["vae_encoder"]["image"] == mmm((1, 3, 576, 1024), (1, 3, 576, 1024), (2, 3, 576, 1024))
    # Every chunk length from 1 (a tail chunk) to the largest must run.
    assert p["vae_decoder"]["latents"] == mmm((1, 4, 72, 128), (8, 4, 72, 128), (8, 4, 72, 128))


def test_small_ranges_concrete_shapes():
    request = dict(num_frames=(4, 12), height=(256, 576), width=(512, 1024), decode_chunk_size=6)
    p = profiles(request)
    assert p["unet"]["sample"] == mmm((1, 4, 8, 32, 64), (2, 8, 8, 72, 128), (2, 12, 8, 72, 128))
    assert p["vae_encoder"]["image"] == mmm((1, 3, 256, 512), (1, 3, 576, 1024), (2, 3, 576, 1024))
    assert p["vae_decoder"]["latents"] == mmm((1, 4, 32, 64), (6, 4, 72, 128), (6, 4, 72, 128))


def test_every_input_has_an_ordered_profile():
    request = dict(num_frames=(2, 25), height=(128, 1024), width=(128, 1024), decode_chunk_size=8)
    p = profiles(request)
    for name, spec in component_specs(SMALL).items():
        assert set(p[name]) == set(spec.input_names)
        for shapes in p[name].values():
            assert all(a <= b <= c for a, b, c in zip(*(shapes[level] for level in LEVELS)))


@pytest.mark.parametrize(
    "pair, default_opt",
    [((10, 25), 10), ((2, 6), 6), ((4, 12), 8)],
    ids=["clamp-up", "clamp-down", "inside"],
)
def test_frame_opt_is_model_default_clamped(pair, default_opt):
    assert spans(dict(num_frames=pair))["num_frames"].opt == default_opt


def test_size_opt_is_576x1024_clamped():
    limits = spans(dict(height=(128, 320), width=(1088, 2048)))
    assert (limits["height"].opt, limits["width"].opt) == (320, 1088)


def test_decode_chunk_defaults_to_max_frames_and_is_capped():
    chunk = spans(dict(num_frames=(4, 12)))["decode_chunk_size"]
    assert (chunk.min, chunk.opt, chunk.max) == (1, 12, 12)
    capped = spans(dict(num_frames=(4, 12), decode_chunk_size=99))["decode_chunk_size"]
    assert capped == chunk


@pytest.mark.parametrize(
    "request_, words",
    [
        (dict(height=(100, 576)), "--height 100:576: this model needs multiples of 8"),
        (dict(width=(1024, 1000)), "--width 1024:1000: min 1024 is larger than max 1000"),
        (dict(width=(512, 1002)), "--width 512:1002: this model needs multiples of 8"),
        (dict(num_frames=(0, 4)), "--num-frames 0:4: values must be positive"),
        (dict(decode_chunk_size=0), "--decode-chunk-size 0: must be positive"),
    ],
)
def test_invalid_requests_are_one_line(request_, words):
    with pytest.raises(RangeError) as e:
        profiles(request_)
    assert str(e.value) == words or str(e.value).startswith(words)
    assert "\n" not in str(e.value)
