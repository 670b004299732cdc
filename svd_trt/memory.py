"""How much memory one request needs, and the one-line refusal when it cannot fit.

Every entry point calls `MemoryPlan.check` with the resolved request's shape
(svd_trt/options.request_shape) before any component runs, so the CLI, the Python API
(SVDPipeline) and serving refuse the same requests. The estimate is arithmetic on
the model config and the request's sizes (fp32, ONNX Runtime on the CPU):

    need = weights still to load
         + each component's working memory at the request's sizes: ONNX Runtime keeps every
           session's arena at its peak after a call, so the four add up
         + the pipeline's own arrays at their peak: the decoded frames three times (the decoder's
           chunks, their concatenation, the postprocessed copy), 36 bytes per pixel per frame

Working memory is the tensors alive together at a component's widest point, counted from the
architecture (families/svd/port/unet.py, families/svd/port/vae.py, families/svd/port/layers.py) in units of the widest level's
channels, with ONNX Runtime's planner and arena overhead measured on the small model (see the
constants). Measured against peak RSS: docs/memory.md. numpy-free.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from svd_trt.errors import CapacityError
from svd_trt.families.svd.config import SVDConfig
from svd_trt.options import RequestShape, flag

if TYPE_CHECKING:
    from svd_trt.manifest import Manifest

log = logging.getLogger(__name__)

F32 = 4  # bytes; every runtime array and every CPU activation is float32
GIB = 2**30
SKIP_ENV = "SVD_TRT_SKIP_MEMORY_CHECK"

# UNet, per latent token of each of the B*F frames, in units of the first level's channels C0,
# at the level-0 transformer's feed-forward (its widest point): the transformer's input kept for
# its residual, the stream, the temporal block's transposed copy and its norm (4), GEGLU's value,
# gate and gelu(gate) at 4*C0 each (12), the time mixer's two weighted branches (2), and the
# level's skips (one per layer, one for conv_in): 18 + 1 per layer + 1 derived. ONNX Runtime
# measured 21 C0 on the small model (1 layer at level 0) and 24 C0 on SVD's UNet (2 layers):
# its planner keeps about 2 C0 more per layer than that count. The constants follow the
# measurements: 18 + 3 per layer.
UNET_TRANSFORMER_LIVE, UNET_LIVE_PER_LAYER = 18, 3
# A level 0 without transformers peaks in its SpatioTemporalResBlock: input, norm, conv outputs,
# the temporal branch's permuted copy and the blend (6).
UNET_RESNET_LIVE = 6
# VAE decoder, per output pixel of each frame of a chunk: the last up block's resnets and temporal
# blends at C0 channels (input, norm, conv, permuted copy, two weighted branches: 6 C0), or where
# the upsampler hands C1 channels to that block's first resnet (its input kept for the shortcut,
# GroupNorm, SiLU, the NCHWc reorder of the conv input: 4 C1; the conv's C0 output). Measured:
# 5.2..6.2 C0 on the small model (C0 = C1 = 32), 8.0..9.0 C0 on SVD's VAE (C0 = 128, C1 = 256;
# formula 9).
DECODER_LIVE_C0, DECODER_LIVE_C1 = 6, 4
# VAE encoder (batch 1), per input pixel: conv_in's output and a resnet's input, norm, SiLU and
# conv (5 C0) and the image itself (3). Measured 4.25 C0 on the small model, 3.3..5.0 C0 on
# SVD's VAE (ONNX Runtime's arena grows in doubling regions: single runs scatter by ~25%).
ENCODER_LIVE_C0 = 5
# The frames [F, H, W, 3] float32 exist three times during decode (chunks, concatenation,
# postprocessed copy), and about two latent-sized arrays [F, 4, h, w] beside them.
FRAME_COPIES = 3
LATENT_COPIES = 2


@dataclass(frozen=True)
class Estimate:
    """Bytes of one request, by where they go; `widest` names the largest term for the message."""

    weights: int
    activations: dict[str, int]
    arrays: int
    widest: str

    @property
    def total(self) -> int:
        return self.weights + sum(self.activations.values()) + self.arrays


class InsufficientMemory(CapacityError):
    """A request that needs more memory than is available now: capacity (a server answers 503), one line."""


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, (tuple, list)) else value


def unet_bytes(cfg: SVDConfig, batch: int, frames: int, h: int, w: int, attention: str) -> int:
    """The UNet's working memory for [batch, frames, C, h, w]: its first level's widest point."""
    u = cfg.unet
    c0 = u.block_out_channels[0]
    transformer = u.down_block_types[0].startswith("CrossAttn")
    layers = _first(u.layers_per_block)
    live = (
        UNET_TRANSFORMER_LIVE + UNET_LIVE_PER_LAYER * layers if transformer else UNET_RESNET_LIVE + layers + 1
    )
    total = batch * frames * h * w * c0 * live * F32
    if attention == "standard":
        total += max(_unet_scores(cfg, batch, frames, h, w), default=0)
    return total


def _unet_scores(cfg: SVDConfig, batch: int, frames: int, h: int, w: int) -> list[int]:
    """Standard (unfused) attention: logits and probabilities [B*F, heads, L, L] per level, both alive."""
    u = cfg.unet
    heads = u.num_attention_heads
    out = []
    for i, kind in enumerate(u.down_block_types):
        if not kind.startswith("CrossAttn"):
            continue
        n = heads[i] if isinstance(heads, (tuple, list)) else heads
        tokens = -(-h // 2**i) * -(-w // 2**i)
        spatial = batch * frames * n * tokens * tokens
        temporal = batch * tokens * n * frames * frames
        out.append(2 * max(spatial, temporal) * F32)
    return out


def decoder_bytes(cfg: SVDConfig, chunk: int, height: int, width: int, attention: str) -> int:
    """The VAE decoder's working memory for one chunk: its full-resolution last level."""
    ch = cfg.vae.block_out_channels
    c0, c1 = ch[0], ch[1] if len(ch) > 1 else ch[0]
    per_pixel = max(DECODER_LIVE_C0 * c0, DECODER_LIVE_C1 * c1 + c0)
    total = chunk * height * width * per_pixel * F32
    if attention == "standard" and cfg.vae.layers_per_block >= 2:  # the mid attention runs (vae.py)
        tokens = (height // cfg.vae.scale_factor) * (width // cfg.vae.scale_factor)
        total += 2 * chunk * tokens * tokens * F32
    return total


def encoder_bytes(cfg: SVDConfig, height: int, width: int, attention: str) -> int:
    """The VAE encoder's working memory at batch 1 (the unconditional latent is zeros, not encoded)."""
    total = height * width * (ENCODER_LIVE_C0 * cfg.vae.block_out_channels[0] + 3) * F32
    if attention == "standard":
        tokens = (height // cfg.vae.scale_factor) * (width // cfg.vae.scale_factor)
        total += 2 * tokens * tokens * F32
    return total


def clip_bytes(cfg: SVDConfig) -> int:
    """CLIP at its fixed input size: a few layers' tokens and one layer's scores; batch 1."""
    c = cfg.clip
    tokens = (c.image_size // c.patch_size) ** 2 + 1
    return (8 * tokens * c.intermediate_size + 2 * c.num_attention_heads * tokens * tokens) * F32


def estimate(
    cfg: SVDConfig,
    shape: RequestShape,
    attention: str = "fused",
    weights: int = 0,
    host_activations: bool = True,
) -> Estimate:
    """Bytes one request needs: weights still to load, working memory per component, the pipeline's arrays.

    `shape`: the resolved request's (svd_trt/options.request_shape). `attention`: "fused"
    (ONNX Runtime's MultiHeadAttention, no score matrix) or "standard" (MatMul/Softmax/MatMul,
    the TensorRT-target graphs). host_activations=False: the components run elsewhere (a GPU).
    """
    s = cfg.vae.scale_factor
    h, w = shape.height // s, shape.width // s
    batch, frames, chunk = shape.batch, shape.frames, min(shape.decode_chunk, shape.frames)
    activations = {}
    if host_activations:
        activations = {
            "the UNet": unet_bytes(cfg, batch, frames, h, w, attention),
            "the VAE decoder": decoder_bytes(cfg, chunk, shape.height, shape.width, attention),
            "the VAE encoder": encoder_bytes(cfg, shape.height, shape.width, attention),
            "CLIP": clip_bytes(cfg),
        }
    pixels = frames * shape.height * shape.width
    arrays = FRAME_COPIES * pixels * 3 * F32 + LATENT_COPIES * frames * cfg.vae.latent_channels * h * w * F32
    terms = {**activations, "the frames": arrays}
    widest = max(terms, key=terms.get)
    return Estimate(weights, activations, arrays, widest)


# ----------------------------------------------------------------------------- what is available


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """The container's memory limit minus its working set (usage less inactive file cache); None unlimited."""
    for limit_file, usage_file, stat_key in (
        ("memory.max", "memory.current", "inactive_file"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"),  # v1
    ):
        limit, usage = _read_int(f"{root}/{limit_file}"), _read_int(f"{root}/{usage_file}")
        if limit is None or usage is None or limit >= 2**60:  # "max" or v1's huge "unlimited"
            continue
        stat = f"{root}/memory.stat" if stat_key == "inactive_file" else f"{root}/memory/memory.stat"
        return max(0, limit - (usage - _stat_field(stat, stat_key)))
    return None


def host_available() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit; None off Linux."""
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    if mem is None:
        return None
    cgroup = cgroup_available()
    return mem if cgroup is None else min(mem, cgroup)


def resident_bytes(pid: int | str = "self") -> int | None:
    """A process's resident memory (VmRSS), this one's by default; None off Linux or when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- the check


@dataclass
class MemoryPlan:
    """Where one pipeline's requests put their memory, and the check `resolve` runs.

    backend/device: activations are checked on the host for ONNX Runtime on the CPU only.
    TensorRT reserves each engine's activation memory for its profile's largest shapes when
    the execution context is created (static allocation), so once the engines are loaded a
    request inside the profile (refused otherwise by `resolve`) needs no more device memory;
    ONNX Runtime's CUDA provider and the torch backend allocate on the GPU with caching
    allocators this model was not measured against. For those only the host arrays are checked.

    `loaded_rss`: this process's RSS once the runners were loaded. Memory it gained since
    (ONNX Runtime's arenas after earlier calls) is reused by the next call, so it counts as
    available.
    """

    backend: str = "onnxruntime"
    device: str = "cpu"
    attention: str = "fused"
    weights: int = 0  # engine bytes still to load (0 once the runners are open)
    loaded_rss: int | None = None
    available: Callable[[], int | None] = field(default=lambda: host_available(), repr=False)

    @property
    def host_activations(self) -> bool:
        return self.backend == "onnxruntime" and self.device == "cpu"

    def estimate(self, cfg: SVDConfig, shape: RequestShape) -> Estimate:
        weights = self.weights if self.host_activations else 0
        return estimate(cfg, shape, self.attention, weights, self.host_activations)

    def check(self, cfg: SVDConfig, shape: RequestShape, pending: int = 0) -> Estimate | None:
        """Refuse, in one line, a request whose estimate exceeds what is available; None when unchecked.

        `pending`: memory other processes' requests in flight will still take (a server's admission,
        runtime/serving/admission.py); it is not available to this one.
        """
        if os.environ.get(SKIP_ENV, "") not in ("", "0"):
            return None
        available = self.available()
        if available is None:
            return None  # no /proc/meminfo: not Linux, nothing to measure against
        reusable = 0
        now = resident_bytes() if self.loaded_rss is not None else None
        if now is not None:
            reusable = max(0, now - self.loaded_rss)
        est = self.estimate(cfg, shape)
        free = max(0, available + reusable - pending)
        log.info("memory: need about %.2f GiB, %.2f GiB available", est.total / GIB, free / GIB)
        if est.total > free:
            raise InsufficientMemory(refusal(est, free, shape))
        return est


def refusal(est: Estimate, available: int, shape: RequestShape) -> str:
    """The refusal's one line: the estimate, its largest part, what is available, what to lower."""
    widest = est.activations.get(est.widest, est.arrays)
    return (
        f"this request needs about {est.total / GIB:.1f} GiB of memory ({est.widest}: {widest / GIB:.1f} GiB at "
        f"{shape.frames} frames of {shape.height}x{shape.width}, decode chunk {shape.decode_chunk}) but "
        f"{available / GIB:.1f} GiB is available; lower {flag('height')}/{flag('width')}, {flag('num_frames')} or "
        f"{flag('decode_chunk_size')} (or set {SKIP_ENV}=1 to run anyway)"
    )


def plan_for(
    engine_dir: str | Path, manifest: Manifest, backend: str, device: str = "cpu", loaded: bool = False
) -> MemoryPlan:
    """The plan of an engine directory run by `backend`; `loaded`: its runners are open already."""
    attention = "standard" if manifest.target == "tensorrt" else "fused"
    weights = 0
    if not loaded:
        root = Path(engine_dir)
        for name in manifest.specs():  # what the pipeline opens (a quantized directory keeps more)
            entry = manifest.components[name]
            for name in entry.file_names(root):
                if (root / name).is_file():
                    weights += (root / name).stat().st_size
    return MemoryPlan(backend, device, attention, weights, resident_bytes() if loaded else None)
