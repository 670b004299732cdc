"""The torch backend's GPU fast path: fp16, flash attention, exact attention shortcuts, CUDA graphs.

Precisions follow diffusers' fp16 pipeline (the reference it is timed against): CLIP and
UNet in fp16, the VAE encoder in fp32 (force_upcast), the decoder in fp16. On top of the
port (export/torch_runner.py), without changing its math:

- self-attention projects q, k and v with one GEMM (one read of the activations);
- cross-attention to SVD's single image token is `to_out(to_v(context))` for every query:
  softmax over one key is exactly 1, so q, k, QK^T and the softmax are skipped;
- SDPA dispatches to flash attention for fp16 on CUDA (head dims 64..160 here);
- the UNet's step is captured once per input shape as a CUDA graph, so its ~3,000 kernel
  launches cost one replay; inputs are copied into the graph's static buffers.

Import only when the torch backend is chosen: the runtime never imports torch otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from svd_trt.config import SVDConfig
from svd_trt.export.checkpoint import read_config
from svd_trt.export.layers import Attention, ImageSelfAttention
from svd_trt.export.torch_runner import TorchRunner, torch_runner
from svd_trt.spec import component_specs

log = logging.getLogger(__name__)

# diffusers' fp16 pipeline: the VAE encodes upcast to fp32, everything else runs in fp16.
FAST_DTYPES = {
    "image_encoder": torch.float16,
    "vae_encoder": torch.float32,
    "unet": torch.float16,
    "vae_decoder": torch.float16,
}


class FastAttention(Attention):
    """Attention with a fused QKV GEMM and the one-key cross-attention shortcut (same keys, same math)."""

    def fuse(self) -> None:
        """Concatenate q, k, v projections (self-attention only: they all read x)."""
        w = [self.to_q.weight, self.to_k.weight, self.to_v.weight]
        self.register_buffer("qkv_weight", torch.cat(w).detach(), persistent=False)
        b = [self.to_q.bias, self.to_k.bias, self.to_v.bias]
        bias = torch.cat(b).detach() if b[0] is not None else None
        self.register_buffer("qkv_bias", bias, persistent=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, L, C], context [N, S, D] -> [N, L, C]."""
        if context is not None and context.shape[1] == 1:
            # softmax over one key is 1: every query receives v. A stride-0 expand, no copy.
            return self.to_out[0](self.to_v(context)).expand(x.shape[0], x.shape[1], -1)
        if context is not None or getattr(self, "qkv_weight", None) is None:
            return super().forward(x, context)
        q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(self._split_heads(q), self._split_heads(k), self._split_heads(v))
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class FastImageSelfAttention(FastAttention, ImageSelfAttention):
    """The VAE's mid-block attention with the fused QKV GEMM."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.group_norm(x.flatten(2)).transpose(1, 2)
        h = FastAttention.forward(self, h)
        return x + h.transpose(1, 2).reshape(x.shape)


def speed_up_attention(module: torch.nn.Module) -> int:
    """Swap every port Attention of `module` for its fast twin in place; returns how many."""
    n = 0
    for name, m in module.named_modules():
        if type(m) is Attention:
            m.__class__ = FastAttention
        elif type(m) is ImageSelfAttention:
            m.__class__ = FastImageSelfAttention
        else:
            continue
        if name.endswith("attn1") or isinstance(m, ImageSelfAttention):  # the port's self-attentions
            m.fuse()
        n += 1
    return n


class CudaGraphRunner:
    """A TorchRunner whose module is replayed from one CUDA graph per input-shape set."""

    def __init__(self, runner: TorchRunner, warmup: int = 2) -> None:
        self.runner, self.name, self.warmup = runner, runner.name, warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple]] = {}

    def _capture(self, args: list[torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple]:
        static = [a.clone() for a in args]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(self.warmup):  # cuDNN autotuning and lazy inits happen outside the capture
                self.runner.module(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = self.runner.module(*static)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        log.info("%s: captured a CUDA graph for %s", self.name, [tuple(a.shape) for a in args])
        return graph, static, tuple(outs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        r = self.runner
        args = [r._tensor(n, inputs[n]) for n in r.input_names]
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args)
        graph, static, outs = self.graphs[key]
        for dst, src in zip(static, args):
            dst.copy_(src)
        graph.replay()
        return {n: o.cpu().numpy() for n, o in zip(r.output_names, outs)}


def fast_runners(
    snapshot: str | Path,
    cfg: SVDConfig | None = None,
    device: str = "cuda",
    cuda_graphs: bool = True,
    fast_attention: bool = True,
    dtypes: dict[str, torch.dtype] | None = None,
) -> dict[str, TorchRunner | CudaGraphRunner]:
    """The four component runners of the port, set up for speed on `device`."""
    cfg = cfg or read_config(snapshot)
    dtypes = {**FAST_DTYPES, **(dtypes or {})}
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes per run: let cuDNN pick its fastest conv
    runners: dict[str, TorchRunner | CudaGraphRunner] = {}
    for name in component_specs(cfg):
        runner = torch_runner(snapshot, name, cfg, device, dtypes[name])
        if fast_attention:
            speed_up_attention(runner.module)
        # Graphs only for the UNet: called once per step at one shape. CLIP and the VAE run once
        # (or per decode chunk, whose tail has its own shape) and are kernel-bound, not launch-bound.
        graphed = cuda_graphs and name == "unet" and device.startswith("cuda")
        runners[name] = CudaGraphRunner(runner) if graphed else runner
    return runners


def open_torch_runner(engine_dir: str | Path, name: str, device: str = "cpu", fast: bool | None = None, **_):
    """The runtime's `--backend torch`: the port of the snapshot an engine directory was exported from."""
    from svd_trt.manifest import load_manifest

    manifest = load_manifest(engine_dir)
    if not manifest.source or not Path(manifest.source).is_dir():
        raise FileNotFoundError(
            f"{engine_dir}: the snapshot it was exported from ({manifest.source!r}) is gone"
        )
    fast = device.startswith("cuda") if fast is None else fast
    dtype = FAST_DTYPES[name] if fast else torch.float32
    runner = torch_runner(manifest.source, name, manifest.model, device, dtype)
    if fast:
        speed_up_attention(runner.module)
        if name == "unet" and device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
            return CudaGraphRunner(runner)
    return runner
