"""The request contract, request parsing and result tensors, without a server."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import av
import numpy as np
import pytest

from svd_trt.families.svd.options import GenerationOptions
from svd_trt.runtime.serving import contract
from svd_trt.runtime.serving.client import request_arrays
from svd_trt.runtime.serving.request import (
    RequestError,
    mp4_bytes,
    parse_request,
    progress_tensors,
    result_tensors,
)

ROOT = Path(__file__).resolve().parents[3]
IMAGE = (ROOT / "runtime" / "assets" / "coffee.jpg").read_bytes()
CLI_OPTIONS = {
    "num_frames": "INT32",
    "height": "INT32",
    "width": "INT32",
    "num_inference_steps": "INT32",
    "fps": "INT32",
    "motion_bucket_id": "INT32",
    "decode_chunk_size": "INT32",
    "noise_aug_strength": "FP32",
    "min_guidance_scale": "FP32",
    "max_guidance_scale": "FP32",
    "seed": "INT64",
}


def test_optional_scalars_are_the_generation_options():
    inputs = {t.name: t for t in contract.INPUTS}
    assert inputs["image"] == contract.TensorSpec("image", "BYTES", (1,), doc=inputs["image"].doc)
    assert not inputs["image"].optional
    options = {n: t.datatype for n, t in inputs.items() if n not in ("image", "output_format")}
    assert options == CLI_OPTIONS
    assert [f.name for f in dataclasses.fields(GenerationOptions)] == list(options)
    assert all(inputs[n].optional and inputs[n].dims == (1,) for n in options)
    assert {t.name: t.datatype for t in contract.OUTPUTS} == {"frames": "UINT8", "video": "BYTES"}
    assert {t.name for t in contract.outputs_of(contract.STREAM_MODEL)} == {
        "frames",
        "video",
        "step",
        "total",
    }


def test_docs_table_matches_the_contract():
    """docs/serving.md's input table: every input, its datatype and GenerationOptions' default."""
    text = (ROOT / "docs" / "serving.md").read_text()
    text = text[text.index("| input | datatype |") :].split("\n\n")[0]  # the input table only
    rows = dict(
        (m.group(1), (m.group(2), m.group(3).strip()))
        for m in re.finditer(r"^\| `(\w+)` \| (\w+) \[1\] \| ([^|]*) \|", text, re.M)
    )
    assert list(rows) == [t.name for t in contract.INPUTS]
    assert {n: r[0] for n, r in rows.items()} == {t.name: t.datatype for t in contract.INPUTS}
    for f in contract.option_fields():
        expected = "unset" if f.default is None else str(f.default)
        assert rows[f.name][1].startswith(expected), (f.name, rows[f.name][1])


def test_parse_request_defaults_and_values():
    parsed = parse_request(request_arrays(IMAGE))
    assert parsed.options == GenerationOptions()
    assert parsed.output_format is None
    assert parsed.image.mode == "RGB" and parsed.image.size == (600, 400)

    values = dict(num_frames=3, height=64, width=96, noise_aug_strength=0.5, seed=2**40)
    parsed = parse_request(request_arrays(IMAGE, output_format="mp4", **values))
    assert parsed.options == GenerationOptions(**values)
    assert type(parsed.options.num_frames) is int and type(parsed.options.noise_aug_strength) is float
    assert parsed.output_format == "mp4"


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({}, "image: missing; send an encoded PNG, JPEG or WebP file as BYTES [1]"),
        (
            {"image": np.array([b"junk"], dtype=object)},
            "image: not a readable image (UnidentifiedImageError)",
        ),
        ({"image": np.array([IMAGE, IMAGE], dtype=object)}, "image must hold one value, got shape [2]"),
        ({"image": np.array([IMAGE], dtype=object), "seed": np.array([1, 2])}, "seed must hold one value"),
        ({"image": np.array([3], dtype=np.int32)}, "image must be BYTES, got int32"),
        (
            {"image": np.array([IMAGE], dtype=object), "output_format": np.array([b"gif"], dtype=object)},
            "output_format must be one of: mp4; got 'gif'",
        ),
    ],
    ids=["missing", "junk", "two-images", "two-seeds", "int-image", "gif"],
)
def test_bad_requests_are_one_line_value_errors(arrays, message):
    with pytest.raises(ValueError) as e:
        parse_request(arrays)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_result_tensors_frames_and_mp4():
    frames = np.random.default_rng(0).random((3, 32, 48, 3), dtype=np.float32)
    parsed = parse_request(request_arrays(IMAGE))
    out = result_tensors(frames, parsed)
    assert (
        list(out) == ["frames"] and out["frames"].dtype == np.uint8 and out["frames"].shape == (3, 32, 48, 3)
    )

    parsed = parse_request(request_arrays(IMAGE, output_format="mp4", fps=5))
    out = result_tensors(frames, parsed)
    assert out["video"].shape == (1,) and out["video"].dtype == object
    with av.open(io.BytesIO(out["video"][0])) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 5.0  # the file plays at the conditioning fps, as `infer`
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert mp4_bytes(frames, 7.0)[4:8] == b"ftyp"


def test_zero_frames_are_never_an_output():
    parsed = parse_request(request_arrays(IMAGE))
    with pytest.raises(RequestError, match="no frames"):
        result_tensors(np.zeros((0, 32, 48, 3), np.float32), parsed)


def test_progress_tensors():
    out = progress_tensors(3, 25)
    assert {k: (v.dtype, v.tolist()) for k, v in out.items()} == {
        "step": (np.dtype(np.int32), [3]),
        "total": (np.dtype(np.int32), [25]),
    }


def test_request_arrays_refuses_unknown_inputs():
    with pytest.raises(ValueError, match="guidance: not an input"):
        request_arrays(IMAGE, guidance=3.0)
