"""The request contract of each family, request parsing and result tensors, without a server."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import av
import numpy as np
import pytest

from svd_trt.families.ltx.family import LTX
from svd_trt.families.ltx.options import LTXOptions
from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.options import GenerationOptions
from svd_trt.runtime.serving import contract
from svd_trt.runtime.serving.client import request_arrays
from svd_trt.runtime.serving.contract import contract_for
from svd_trt.runtime.serving.request import (
    RequestError,
    mp4_bytes,
    parse_request,
    progress_tensors,
    result_tensors,
)

ROOT = Path(__file__).resolve().parents[3]
IMAGE = (ROOT / "runtime" / "assets" / "coffee.jpg").read_bytes()
SVD_CONTRACT, LTX_CONTRACT = contract_for(SVD), contract_for(LTX)
# Written out, not derived: the datatypes a client must send (the options' types, seeds 64-bit).
SVD_OPTIONS = {
    "num_frames": "INT32",
    "height": "INT32",
    "width": "INT32",
    "num_inference_steps": "INT32",
    "min_guidance_scale": "FP32",
    "max_guidance_scale": "FP32",
    "fps": "INT32",
    "motion_bucket_id": "INT32",
    "noise_aug_strength": "FP32",
    "decode_chunk_size": "INT32",
    "seed": "INT64",
}
LTX_OPTIONS = {
    "num_frames": "INT32",
    "height": "INT32",
    "width": "INT32",
    "frame_rate": "INT32",
    "num_inference_steps": "INT32",
    "guidance_scale": "FP32",
    "guidance_rescale": "FP32",
    "decode_timestep": "FP32",
    "decode_noise_scale": "FP32",
    "max_sequence_length": "INT32",
    "decode_tiling": "BOOL",
    "seed": "INT64",
}
# (contract, its conditioning inputs: name -> required, its options dataclass, SVD_/LTX_OPTIONS)
FAMILIES = {
    "svd": (SVD_CONTRACT, {"image": True}, GenerationOptions, SVD_OPTIONS),
    "ltx": (
        LTX_CONTRACT,
        {"prompt": True, "negative_prompt": False, "image": False},
        LTXOptions,
        LTX_OPTIONS,
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_are_the_family_inputs_and_options(family):
    requests, conditioning, options_class, options = FAMILIES[family]
    inputs = {t.name: t for t in requests.inputs}
    assert list(inputs) == [*conditioning, *options, "output_format"]
    for name, required in conditioning.items():
        assert (inputs[name].datatype, inputs[name].dims, inputs[name].optional) == (
            "BYTES",
            (1,),
            not required,
        )
    assert {n: inputs[n].datatype for n in options} == options
    assert [f.name for f in dataclasses.fields(options_class)] == list(options)
    assert all(inputs[n].optional and inputs[n].dims == (1,) for n in [*options, "output_format"])
    assert requests.datatypes() == {n: t.datatype for n, t in inputs.items()}
    assert {t.name: t.datatype for t in contract.OUTPUTS} == {"frames": "UINT8", "video": "BYTES"}
    assert {t.name for t in contract.outputs_of(contract.STREAM_MODEL)} == {
        "frames",
        "video",
        "step",
        "total",
    }
    assert (contract.MODEL, contract.STREAM_MODEL) == ("generate", "generate_stream")


@pytest.mark.parametrize("family", FAMILIES)
def test_docs_table_matches_the_contract(family):
    """docs/serving.md's input table of each family: every input, its datatype and the options' defaults."""
    requests = FAMILIES[family][0]
    text = (ROOT / "docs" / "serving.md").read_text()
    header = f"| {requests.family.title} input | datatype |"
    text = text[text.index(header) :].split("\n\n")[0]  # this family's input table only
    rows = dict(
        (m.group(1), (m.group(2), m.group(3).strip()))
        for m in re.finditer(r"^\| `(\w+)` \| (\w+) \[1\] \| ([^|]*) \|", text, re.M)
    )
    assert list(rows) == [t.name for t in requests.inputs]
    assert {n: r[0] for n, r in rows.items()} == requests.datatypes()
    for t in requests.conditioning:
        assert rows[t.name][1].startswith("optional" if t.optional else "required"), (t.name, rows[t.name][1])
    for f in requests.options:
        expected = (
            "unset"
            if f.default is None
            else str(f.default).lower()
            if f.python_type is bool
            else str(f.default)
        )
        assert rows[f.name][1].startswith(expected), (f.name, rows[f.name][1])


def arrays(requests, **values):
    return request_arrays(requests.datatypes(), **values)


def test_parse_svd_request_defaults_and_values():
    parsed = parse_request(SVD_CONTRACT, arrays(SVD_CONTRACT, image=IMAGE))
    assert parsed.options == GenerationOptions()
    assert parsed.output_format is None
    assert list(parsed.inputs) == ["image"]
    assert parsed.inputs["image"].mode == "RGB" and parsed.inputs["image"].size == (600, 400)

    values = dict(num_frames=3, height=64, width=96, noise_aug_strength=0.5, seed=2**40)
    parsed = parse_request(SVD_CONTRACT, arrays(SVD_CONTRACT, image=IMAGE, output_format="mp4", **values))
    assert parsed.options == GenerationOptions(**values)
    assert type(parsed.options.num_frames) is int and type(parsed.options.noise_aug_strength) is float
    assert parsed.output_format == "mp4"


def test_parse_ltx_request_text_image_and_options():
    parsed = parse_request(LTX_CONTRACT, arrays(LTX_CONTRACT, prompt="a fox, in snow"))
    assert parsed.options == LTXOptions()
    assert parsed.inputs == {"prompt": "a fox, in snow", "negative_prompt": ""}  # the family's default

    values = dict(num_frames=9, guidance_scale=1.0, decode_tiling=True, decode_noise_scale=0.25, seed=3)
    text = "un renard, \u00e9t\u00e9 \u2603"  # UTF-8 on the wire
    parsed = parse_request(
        LTX_CONTRACT, arrays(LTX_CONTRACT, prompt=text, negative_prompt="blurry", image=IMAGE, **values)
    )
    assert parsed.options == LTXOptions(**values)
    assert type(parsed.options.decode_tiling) is bool and type(parsed.options.guidance_scale) is float
    assert parsed.inputs["prompt"] == text and parsed.inputs["negative_prompt"] == "blurry"
    assert parsed.inputs["image"].size == (600, 400)


def _svd(**tensors):
    return SVD_CONTRACT, tensors


def _ltx(**tensors):
    return LTX_CONTRACT, tensors


PROMPT = np.array([b"a fox"], dtype=object)


@pytest.mark.parametrize(
    "request_, message",
    [
        (_svd(), "image: missing; send an encoded PNG, JPEG or WebP file as BYTES [1]"),
        (_svd(image=np.array([b"junk"], dtype=object)), "image: not a readable image (UnidentifiedImageError)"),
        (_svd(image=np.array([IMAGE, IMAGE], dtype=object)), "image must hold one value, got shape [2]"),
        (_svd(image=np.array([IMAGE], dtype=object), seed=np.array([1, 2])), "seed must hold one value"),
        (_svd(image=np.array([3], dtype=np.int32)), "image must be BYTES, got int32"),
        (
            _svd(image=np.array([IMAGE], dtype=object), output_format=np.array([b"gif"], dtype=object)),
            "output_format must be one of: mp4; got 'gif'",
        ),
        (_ltx(), "prompt: missing; send UTF-8 text as BYTES [1]"),
        (_ltx(image=np.array([IMAGE], dtype=object)), "prompt: missing; send UTF-8 text as BYTES [1]"),
        (
            _ltx(prompt=PROMPT, image=np.array([b"junk"], dtype=object)),
            "image: not a readable image (UnidentifiedImageError)",
        ),
        (_ltx(prompt=np.array([7], dtype=np.int32)), "prompt must be BYTES, got int32"),
    ],
    ids=["missing", "junk", "two-images", "two-seeds", "int-image", "gif", "ltx-no-prompt", "ltx-image-only",
         "ltx-junk-image", "ltx-int-prompt"],
)  # fmt: skip
def test_bad_requests_are_one_line_value_errors(request_, message):
    requests, tensors = request_
    with pytest.raises(ValueError) as e:
        parse_request(requests, tensors)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_result_tensors_frames_and_mp4():
    frames = np.random.default_rng(0).random((3, 32, 48, 3), dtype=np.float32)
    out = result_tensors(frames, None, 7.0)
    assert (
        list(out) == ["frames"] and out["frames"].dtype == np.uint8 and out["frames"].shape == (3, 32, 48, 3)
    )

    out = result_tensors(frames, "mp4", 5.0)
    assert out["video"].shape == (1,) and out["video"].dtype == object
    with av.open(io.BytesIO(out["video"][0])) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 5.0  # the file plays at the family's output fps, as `infer`
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert mp4_bytes(frames, 7.0)[4:8] == b"ftyp"


def test_zero_frames_are_never_an_output():
    with pytest.raises(RequestError, match="no frames"):
        result_tensors(np.zeros((0, 32, 48, 3), np.float32), None, 7.0)


def test_progress_tensors():
    out = progress_tensors(3, 25)
    assert {k: (v.dtype, v.tolist()) for k, v in out.items()} == {
        "step": (np.dtype(np.int32), [3]),
        "total": (np.dtype(np.int32), [25]),
    }


def test_request_arrays_refuses_unknown_inputs():
    with pytest.raises(ValueError, match="guidance: not an input"):
        arrays(SVD_CONTRACT, image=IMAGE, guidance=3.0)
    with pytest.raises(ValueError, match="motion_bucket_id: not an input"):
        arrays(LTX_CONTRACT, prompt="a fox", motion_bucket_id=127)  # SVD's option, not LTX-Video's
