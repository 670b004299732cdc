"""Optimization profiles: range parsing and validation, and the per-input shapes the specs give."""

from __future__ import annotations

import pytest

from svd_trt.config import preset
from svd_trt.engines.profiles import (
    LEVELS,
    ProfileRequest,
    RangeError,
    component_profiles,
    dim_spans,
    parse_range,
    size_unit,
)
from svd_trt.spec import component_specs

SMALL = preset("small")  # 8 frames by default; size unit 8 (VAE) * 8 (UNet) = 64


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


def test_size_unit():
    assert size_unit(SMALL) == 64
    assert size_unit(preset("tiny")) == 4
    assert size_unit(preset("full")) == 64


def test_small_defaults_concrete_shapes():
    """Default request: the model's 8 frames, 576x1024; UNet batch 1..2 opt 2."""
    p = component_profiles(SMALL, ProfileRequest())
    assert p["unet"]["sample"] == mmm((1, 8, 8, 72, 128), (2, 8, 8, 72, 128), (2, 8, 8, 72, 128))
    assert p["unet"]["timestep"] == mmm((1,), (2,), (2,))
    assert p["unet"]["encoder_hidden_states"] == mmm((1, 1, 64), (2, 1, 64), (2, 1, 64))
    assert p["unet"]["added_time_ids"] == mmm((1, 3), (2, 3), (2, 3))
    assert p["image_encoder"]["pixel_values"] == mmm((1, 3, 224, 224), (1, 3, 224, 224), (2, 3, 224, 224))
    assert p["vae_encoder"]["image"] == mmm((1, 3, 576, 1024), (1, 3, 576, 1024), (2, 3, 576, 1024))
    # Every chunk length from 1 (a tail chunk) to the largest must run.
    assert p["vae_decoder"]["latents"] == mmm((1, 4, 72, 128), (8, 4, 72, 128), (8, 4, 72, 128))


def test_small_ranges_concrete_shapes():
    request = ProfileRequest(num_frames=(4, 12), height=(256, 576), width=(512, 1024), decode_chunk_size=6)
    p = component_profiles(SMALL, request)
    assert p["unet"]["sample"] == mmm((1, 4, 8, 32, 64), (2, 8, 8, 72, 128), (2, 12, 8, 72, 128))
    assert p["vae_encoder"]["image"] == mmm((1, 3, 256, 512), (1, 3, 576, 1024), (2, 3, 576, 1024))
    assert p["vae_decoder"]["latents"] == mmm((1, 4, 32, 64), (6, 4, 72, 128), (6, 4, 72, 128))


def test_every_input_has_an_ordered_profile():
    request = ProfileRequest(num_frames=(2, 25), height=(128, 1024), width=(128, 1024), decode_chunk_size=8)
    p = component_profiles(SMALL, request)
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
    assert dim_spans(SMALL, ProfileRequest(num_frames=pair))["F"].opt == default_opt


def test_size_opt_is_576x1024_clamped():
    spans = dim_spans(SMALL, ProfileRequest(height=(128, 320), width=(1088, 2048)))
    assert (spans["H"].opt, spans["W"].opt) == (320, 1088)


def test_decode_chunk_defaults_to_max_frames_and_is_capped():
    chunk = dim_spans(SMALL, ProfileRequest(num_frames=(4, 12)))["chunk"]
    assert (chunk.min, chunk.opt, chunk.max) == (1, 12, 12)
    capped = dim_spans(SMALL, ProfileRequest(num_frames=(4, 12), decode_chunk_size=99))["chunk"]
    assert capped == chunk


@pytest.mark.parametrize(
    "request_, words",
    [
        (ProfileRequest(height=(100, 576)), "--height 100:576: this model needs multiples of 64"),
        (ProfileRequest(width=(1024, 1000)), "--width 1024:1000: min 1024 is larger than max 1000"),
        (ProfileRequest(width=(512, 1000)), "--width 512:1000: this model needs multiples of 64"),
        (ProfileRequest(num_frames=(0, 4)), "--num-frames 0:4: values must be positive"),
        (ProfileRequest(decode_chunk_size=0), "--decode-chunk-size 0: must be positive"),
    ],
)
def test_invalid_requests_are_one_line(request_, words):
    with pytest.raises(RangeError) as e:
        component_profiles(SMALL, request_)
    assert str(e.value) == words or str(e.value).startswith(words)
    assert "\n" not in str(e.value)
