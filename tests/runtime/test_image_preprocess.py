"""VAE-path preprocessing, added time ids and postprocessing against diffusers' own code."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.utils import load_image as diffusers_load_image
from diffusers.video_processor import VideoProcessor
from PIL import Image

from svd_trt.runtime import image_preprocess as ip


def _image(h: int, w: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 55, w))[..., None]
    pixels = np.clip(ramp + rng.integers(0, 56, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize(
    "size, target",
    [
        ((1024, 576), (576, 1024)),  # already the size: PIL still resamples (a no-op)
        ((2000, 1500), (576, 1024)),  # down, aspect changes
        ((300, 200), (576, 1024)),  # up
        ((640, 480), (320, 512)),
        ((333, 251), (577, 1030)),  # not multiples of 8: diffusers rounds down to 576 x 1024
    ],
)
def test_vae_pixel_values_match_video_processor(size, target):
    image = _image(size[1], size[0])
    ref = VideoProcessor(vae_scale_factor=8).preprocess(image, height=target[0], width=target[1]).numpy()
    ours = ip.vae_pixel_values(image, *target)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_vae_pixel_values_of_a_grey_image_are_rgb():
    grey = _image(200, 300, mode="L")
    ref = VideoProcessor(vae_scale_factor=8).preprocess(grey.convert("RGB"), height=96, width=160).numpy()
    np.testing.assert_array_equal(ip.vae_pixel_values(grey, 96, 160), ref)


def test_vae_pixel_values_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="at least 8"):
        ip.vae_pixel_values(_image(20, 20), 7, 64)


def _save_with_orientation(path, image: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    image.save(path, exif=exif)


@pytest.mark.parametrize("name, orientation", [("a.png", None), ("b.jpg", 6), ("c.jpg", 3)])
def test_load_image_matches_diffusers(tmp_path, name, orientation):
    path = tmp_path / name
    image = _image(40, 64, mode="RGBA" if name.endswith("png") else "RGB")
    if orientation is None:
        image.save(path)
    else:
        _save_with_orientation(path, image, orientation)
    ours = ip.load_image(path)
    assert ours.mode == "RGB"
    assert ours.size == (image.size[::-1] if orientation == 6 else image.size)  # 6: rotated 90 degrees
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(diffusers_load_image(str(path))))


@pytest.mark.parametrize("content", [None, b"", b"not an image at all", "dir"])
def test_load_image_errors_are_one_line_value_errors(tmp_path, content):
    path = tmp_path / "input.png"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        ip.load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _pipeline_time_ids(fps, motion_bucket_id, noise_aug_strength, batch, cfg):
    """StableVideoDiffusionPipeline: __call__'s `fps - 1`, then _get_add_time_ids on a stand-in UNet."""
    unet = SimpleNamespace(
        config=SimpleNamespace(addition_time_embed_dim=256),
        add_embedding=SimpleNamespace(linear_1=SimpleNamespace(in_features=768)),
    )
    stub = SimpleNamespace(unet=unet)
    get = StableVideoDiffusionPipeline._get_add_time_ids
    return get(stub, fps - 1, motion_bucket_id, noise_aug_strength, torch.float32, batch, 1, cfg).numpy()


@pytest.mark.parametrize(
    "fps, motion, aug", [(7, 127, 0.02), (6, 180, 0.1), (25, 1, 0.0), (7.5, 127.0, 1 / 3)]
)
@pytest.mark.parametrize("batch, cfg", [(1, False), (1, True), (2, True)])
def test_added_time_ids_match_pipeline(fps, motion, aug, batch, cfg):
    ref = _pipeline_time_ids(fps, motion, aug, batch, cfg)
    ours = ip.added_time_ids(fps, motion, aug, batch * (2 if cfg else 1))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("frames", [1, 8])
def test_postprocess_matches_video_processor(frames):
    rng = np.random.default_rng(frames)
    decoded = (rng.standard_normal((frames, 3, 16, 24)) * 0.8).astype(np.float32)  # some beyond [-1, 1]
    decoded[0, 0, 0, :3] = [-1.0, 1.0, 0.0]
    # decode_latents returns [B, C, F, H, W]; postprocess_video gives [B, F, H, W, C]
    video = torch.from_numpy(decoded)[None].permute(0, 2, 1, 3, 4)
    ref = VideoProcessor(vae_scale_factor=8).postprocess_video(video=video, output_type="np")[0]
    ours = ip.postprocess(decoded)
    assert ours.dtype == np.float32 and ours.shape == (frames, 16, 24, 3)
    assert ours.min() >= 0 and ours.max() <= 1
    np.testing.assert_array_equal(ours, ref)


def test_postprocess_upcasts_fp16():
    decoded = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float16)
    video = torch.from_numpy(decoded)[None].permute(0, 2, 1, 3, 4).float()  # decode_latents: frames.float()
    ref = VideoProcessor(vae_scale_factor=8).postprocess_video(video=video, output_type="np")[0]
    np.testing.assert_array_equal(ip.postprocess(decoded), ref)
