"""The torch backend: the port behind the Runner interface, and its GPU fast path.

`TorchRunner` wraps one port module as `run(dict[str, ndarray]) -> dict[str, ndarray]`: the
accuracy check uses these runners as its fp32 reference, and the runtime's `--backend torch`
drives the whole pipeline with them, so an engine and the port it came from are compared
through exactly the same calls.

What runs: the PyTorch port of the snapshot an engine directory was exported from (the
manifest's `source`); the directory's engine files are not read, only its manifest (model
config, snapshot path). `snapshot=PATH` points at a snapshot that moved; its config must
equal the manifest's. Device: the first CUDA GPU when torch sees one, else the CPU
(`device="cpu"`, `"cuda:1"` to choose). Python: `SVDPipeline.from_engine_dir(dir,
backend="torch", device=..., fast=..., snapshot=...)`; the CLI takes the defaults.

- CPU (or `fast=False`): the fp32 port, the math the ONNX export traces, TF32 off.
- CUDA: each spec's `torch-cuda` precision (svd_trt/spec.py: diffusers' fp16 pipeline, the
  reference it is timed against: CLIP, UNet and VAE decoder in fp16, the VAE encoder in
  fp32, force_upcast). On top of the
  port, without changing its math:
  - self-attention projects q, k and v with one GEMM (one read of the activations);
  - (the port itself already answers cross-attention to SVD's single image token with
    `to_out(to_v(context))` once per batch item: layers.cross_attend);
  - SDPA picks flash attention for the UNet (fp16, head dim 64) and memory-efficient
    attention (or math) for the VAE's one 512-wide head; softmax accumulates in fp32;
  - the UNet's step is captured once per input-shape set as a CUDA graph, so its ~1,600
    operator launches (counted at SVD-XT shapes) cost one replay; inputs are copied into
    the graph's static buffers.

Import only when the torch backend is chosen: the runtime never imports torch otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from svd_trt.export.checkpoint import component_module
from svd_trt.family import Family, family_named, family_of_snapshot
from svd_trt.manifest import ManifestError, load_manifest

log = logging.getLogger(__name__)

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
        self.placement = f"torch {self.device} {str(dtype).removeprefix('torch.')}"

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
    cfg: Any = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    loaded: nn.Module | None = None,
    family: Family | None = None,
) -> TorchRunner:
    """The port runner of one component; pass `loaded` to share one loaded port module between the
    components it serves (a VAE's encoder and decoder halves)."""
    family = family or family_of_snapshot(snapshot)
    cfg = cfg or family.read_config(snapshot)
    spec = family.component_specs(cfg)[name]
    source = loaded if loaded is not None else family.load_component(snapshot, spec.source, cfg, dtype)
    module = component_module(source, spec).to(device).eval()
    fixed = {t.name: getattr(torch, t.fixed_dtype) for t in spec.inputs if t.fixed_dtype}
    return TorchRunner(module, spec.input_names, spec.output_names, device, dtype, fixed, name=name)


def torch_runners(
    snapshot: str | Path,
    cfg: Any = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    family: Family | None = None,
) -> dict[str, TorchRunner]:
    """Every component runner of the port, each snapshot folder loaded once (a VAE for both halves)."""
    family = family or family_of_snapshot(snapshot)
    cfg = cfg or family.read_config(snapshot)
    specs = family.component_specs(cfg)
    loaded = {source: family.load_component(snapshot, source, cfg, dtype) for source in {s.source for s in specs.values()}}
    return {
        name: torch_runner(snapshot, name, cfg, device, dtype, loaded[spec.source], family)
        for name, spec in specs.items()
    }


class TorchBackendError(ManifestError):
    """The torch backend cannot run this engine directory here: one line."""


class CudaGraphRunner:
    """A TorchRunner whose module is replayed from one CUDA graph per input-shape set."""

    def __init__(self, runner: TorchRunner, warmup: int = 2) -> None:
        self.runner, self.name, self.warmup = runner, runner.name, warmup
        self.placement = f"{runner.placement}, CUDA graphs"
        self.input_names, self.output_names = runner.input_names, runner.output_names
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple]] = {}

    def capture(self, args: list[torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple]:
        """(graph, static inputs, static outputs): copy into the inputs, replay, read the outputs."""
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
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        log.info("%s: captured a CUDA graph for %s", self.name, [tuple(a.shape) for a in args])
        return graph, static, outs

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = self.runner.tensors(inputs)
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        if key not in self.graphs:
            self.graphs[key] = self.capture(args)
        graph, static, outs = self.graphs[key]
        for dst, src in zip(static, args):
            dst.copy_(src)
        graph.replay()
        return self.runner.numpy_outputs(outs)


def fast_runners(
    snapshot: str | Path,
    cfg: Any = None,
    device: str = "cuda",
    cuda_graphs: bool = True,
    fast_attention: bool = True,
    dtypes: dict[str, torch.dtype] | None = None,
) -> dict[str, TorchRunner | CudaGraphRunner]:
    """Every component runner of the port, set up for speed on `device`."""
    family = family_of_snapshot(snapshot)
    cfg = cfg or family.read_config(snapshot)
    specs = family.component_specs(cfg)
    dtypes = {**{name: cuda_dtype(spec) for name, spec in specs.items()}, **(dtypes or {})}
    return {
        name: _fast(torch_runner(snapshot, name, cfg, device, dtypes[name], family=family), family, fast_attention, cuda_graphs)
        for name in specs
    }


def cuda_dtype(spec) -> torch.dtype:
    """The component's precision on the torch CUDA target (svd_trt/spec.py)."""
    return torch.float16 if spec.precision_on("torch-cuda") == "fp16" else torch.float32


def _fast(runner: TorchRunner, family: Family, fast_attention: bool = True, cuda_graphs: bool = True):
    if fast_attention:
        family.speed_up(runner.module)
    if runner.device.type != "cuda":
        return runner
    torch.backends.cudnn.benchmark = True  # fixed shapes per run: let cuDNN pick its fastest conv
    # Graphs only for the denoiser: called once per step at one shape. The encoders and the VAE
    # run once (or per decode chunk, whose tail has its own shape) and are kernel-bound.
    return CudaGraphRunner(runner) if cuda_graphs and runner.name == family.denoiser else runner


# One port module per (snapshot, folder, dtype, device) while a runner holds it: a VAE's encoder
# and decoder halves are opened one by one through the runtime's per-component interface, yet
# load it once.
_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _shared(family: Family, snapshot: str, source: str, cfg: Any, dtype: torch.dtype, device: torch.device):
    key = (snapshot, source, dtype, str(device))
    module = _SHARED.get(key)
    if module is None:
        module = family.load_component(snapshot, source, cfg, dtype).to(device)
        _SHARED[key] = module
    return module


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TorchBackendError(f"device {device}: torch {torch.__version__} sees no CUDA GPU here")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise TorchBackendError(f"device {device}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type != "cpu":
        raise TorchBackendError(f"device {device}: the torch backend runs on cpu or cuda")
    return dev


def open_torch_runner(
    engine_dir: str | Path,
    name: str,
    device: str | None = None,
    fast: bool | None = None,
    snapshot: str | Path | None = None,
    cuda_graphs: bool = True,
) -> TorchRunner | CudaGraphRunner:
    """The runtime's `--backend torch` runner of component `name` (see the module docstring)."""
    manifest = load_manifest(engine_dir)
    source = Path(snapshot or manifest.source)
    if not str(source) or not (source / "model_index.json").is_file():
        raise TorchBackendError(
            f"{engine_dir}: the snapshot it was exported from ({str(source)!r}) is gone; "
            "pass snapshot=PATH to the pipeline's from_engine_dir, or re-export"
        )
    family = family_named(manifest.family)
    if snapshot is not None and family.read_config(source) != manifest.model:
        raise TorchBackendError(f"{source}: not the model {engine_dir} was built from (configs differ)")
    dev = _device(device)
    fast = dev.type == "cuda" if fast is None else fast
    spec = manifest.specs()[name]
    dtype = cuda_dtype(spec) if fast and dev.type == "cuda" else torch.float32
    shared = sum(s.source == spec.source for s in manifest.specs().values()) > 1
    loaded = _shared(family, str(source), spec.source, manifest.model, dtype, dev) if shared else None
    runner = torch_runner(source, name, manifest.model, dev, dtype, loaded, family)
    log.info("torch backend: %s from %s on %s in %s%s", name, source, dev, dtype, " (fast)" if fast else "")
    return _fast(runner, family, cuda_graphs=cuda_graphs) if fast else runner
