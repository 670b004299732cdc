"""The torch port behind the runtime's Runner interface: `run(dict[str, ndarray]) -> dict[str, ndarray]`.

The accuracy check uses these runners as its fp32 reference, and the runtime's `--backend
torch` drives the whole pipeline with them, so an engine and the port it came from are
compared through exactly the same calls. The VAE is split as in the export:
vae_encoder = `vae.encode`, vae_decoder = `vae.decode`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from svd_trt.config import SVDConfig
from svd_trt.export.checkpoint import load_component, read_config
from svd_trt.export.vae import TemporalVAE, VAEDecoder, VAEEncoder
from svd_trt.spec import component_specs

# Which checkpoint folder feeds each component (as the ONNX export).
SOURCE = {"image_encoder": "image_encoder", "vae_encoder": "vae", "unet": "unet", "vae_decoder": "vae"}


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """No TF32 while the block runs: cuDNN convolutions default to TF32 on Ampere+, which would
    make an "fp32" reference carry ~1e-3 relative error. Restored afterwards (global flags)."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


class TorchRunner:
    """One port module (or any callable of positional tensors) as a Runner.

    Floating inputs are cast to `dtype` except those named in `fixed` (e.g. the UNet's
    timestep stays float32 in fp16, as in the fp16 export). Outputs come back as numpy in
    the module's dtype, like an engine's.
    """

    def __init__(
        self,
        module: torch.nn.Module | Callable[..., torch.Tensor],
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        fixed: dict[str, torch.dtype] | None = None,
        name: str = "",
    ) -> None:
        self.name = name or type(module).__name__
        self.module = module
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = torch.device(device)
        self.dtype = dtype
        self.fixed = dict(fixed or {})

    def _tensor(self, name: str, value: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(value))
        if t.is_floating_point():
            t = t.to(self.fixed.get(name, self.dtype))
        return t.to(self.device)

    def tensors(self, inputs: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """The module's positional arguments, in `input_names` order, on the device."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        return [self._tensor(n, inputs[n]) for n in self.input_names]

    def numpy_outputs(self, out: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self.output_names):
            raise ValueError(f"{self.name}: {len(outs)} outputs, expected {self.output_names}")
        return {n: o.detach().cpu().numpy() for n, o in zip(self.output_names, outs)}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = self.tensors(inputs)
        tf32_guard = strict_fp32() if self.dtype == torch.float32 else contextlib.nullcontext()
        with torch.inference_mode(), tf32_guard:
            return self.numpy_outputs(self.module(*args))


def torch_runner(
    snapshot: str | Path,
    name: str,
    cfg: SVDConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    vae: TemporalVAE | None = None,
) -> TorchRunner:
    """The port runner of one component; pass `vae` to share one loaded VAE between its halves."""
    cfg = cfg or read_config(snapshot)
    spec = component_specs(cfg)[name]
    if SOURCE[name] == "vae":
        vae = vae or load_component(snapshot, "vae", cfg, dtype)
        module = VAEEncoder(vae) if name == "vae_encoder" else VAEDecoder(vae)
    else:
        module = load_component(snapshot, SOURCE[name], cfg, dtype)
    module = module.to(device).eval()
    fixed = {t.name: getattr(torch, t.fixed_dtype) for t in spec.inputs if t.fixed_dtype}
    return TorchRunner(module, spec.input_names, spec.output_names, device, dtype, fixed, name=name)


def torch_runners(
    snapshot: str | Path,
    cfg: SVDConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, TorchRunner]:
    """The four component runners of the port, the VAE loaded once for both halves."""
    cfg = cfg or read_config(snapshot)
    vae = load_component(snapshot, "vae", cfg, dtype)
    return {name: torch_runner(snapshot, name, cfg, device, dtype, vae=vae) for name in component_specs(cfg)}
