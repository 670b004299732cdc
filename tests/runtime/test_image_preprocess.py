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

from svd_trt.families.svd.pipeline import added_time_ids
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
    ours = added_time_ids(fps, motion, aug, batch * (2 if cfg else 1))
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


# --- image files of every depth and mode: 8 bits per channel out, nothing clipped to white


def _png16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA by the channel count), written by hand:
    Pillow writes only 16-bit grayscale."""
    import struct
    import zlib

    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.reshape(h, w * channels).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _ramp16(h: int = 8, w: int = 32) -> np.ndarray:
    return np.linspace(0, 65535, h * w).reshape(h, w).round().astype(np.uint16)


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = _ramp16()
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")  # what makes convert("RGB") clip
    ours = np.asarray(ip.load_image(tmp_path / "g16.png"))
    expected = np.rint(values / 257.0).astype(np.uint8)  # 16-bit full scale 65535 = 255 * 257
    np.testing.assert_array_equal(ours, np.repeat(expected[..., None], 3, axis=2))
    assert ours.mean() == pytest.approx(127.5, abs=1.0)  # a full ramp averages mid-gray


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_color_and_alpha_pngs_keep_their_range(tmp_path, channels):
    """Pillow decodes 16-bit LA/RGB/RGBA PNGs to 8 bits itself (the high byte): within one level of /257."""
    ramp = _ramp16()
    planes = [ramp, ramp[:, ::-1], np.full_like(ramp, 40000), np.full_like(ramp, 65535)]
    pixels = np.stack(planes[:channels] if channels != 2 else [ramp, planes[3]], axis=-1)
    _png16(tmp_path / "c16.png", pixels)
    ours = np.asarray(ip.load_image(tmp_path / "c16.png")).astype(int)
    color = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    # the high byte is floor(x / 256); rounding x / 257 differs from it by at most one level
    assert np.abs(ours - np.rint(color / 257.0)).max() <= 1
    assert ours.mean() < 200  # not clipped to white


def test_float_tiff_is_read_as_zero_to_one(tmp_path):
    values = np.linspace(0.0, 1.0, 8 * 32, dtype=np.float32).reshape(8, 32)
    values[0, 0], values[0, 1] = -0.5, 2.0  # out of range: clipped
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    ours = np.asarray(ip.load_image(tmp_path / "f.tif"))[..., 0]
    expected = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(ours, expected)


def test_32_bit_integer_tiff_is_scaled_by_the_16_bit_range(tmp_path):
    values = _ramp16().astype(np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    ours = np.asarray(ip.load_image(tmp_path / "i.tif"))[..., 0]
    np.testing.assert_array_equal(ours, np.rint(values / 257.0).astype(np.uint8))


def test_16_bit_png_keeps_exif_orientation(tmp_path):
    values = _ramp16(8, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.fromarray(values).save(tmp_path / "r.png", exif=exif)
    ours = ip.load_image(tmp_path / "r.png")
    assert ours.size == (8, 32)  # rotated: width and height swapped
    assert np.asarray(ours).mean() == pytest.approx(127.5, abs=1.0)


@pytest.mark.parametrize(
    "mode, name", [("P", "p.png"), ("LA", "la.png"), ("RGBA", "rgba.png"), ("CMYK", "cmyk.jpg"), ("L", "l.jpg")]
)
def test_eight_bit_modes_convert_as_diffusers(tmp_path, mode, name):
    """8-bit modes keep diffusers' load_image conversion exactly (alpha dropped, CMYK as Pillow converts)."""
    image = _image(40, 64, mode=mode)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    ours = ip.load_image(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(diffusers_load_image(str(tmp_path / name))))


@pytest.mark.parametrize("factor", [1.5, 4.0], ids=["warning-range", "error-range"])
def test_decompression_bombs_are_one_line_with_count_and_limit(tmp_path, monkeypatch, recwarn, factor):
    """Past PIL.Image.MAX_IMAGE_PIXELS Pillow warns (up to twice the limit) or raises; both are the
    same one-line refusal, and no warning text is left for the terminal."""
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")  # 1,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1600 / factor))
    with pytest.raises(ip.ImageError) as info:
        ip.load_image(tmp_path / "big.png")
    message = str(info.value)
    assert "1,600 pixels" in message and f"{int(1600 / factor):,}" in message and "\n" not in message
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_images_at_the_limit_load(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    assert ip.load_image(tmp_path / "ok.png").size == (40, 40)
