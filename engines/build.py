"""`svd-export build-engines`: one options object, one entry point, either backend.

ONNX Runtime: the ONNX files themselves are the engines (fp32 for the CPU; an int8 UNet is
quantized from its fp32 export in the same stage, before the directory is swapped in).
TensorRT: engines/tensorrt_build.py. Both record the request sizes the directory serves
(engines/profiles.served_limits) in its manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from svd_trt.engines.profiles import ProfileRequest, served_limits
from svd_trt.errors import UserError
from svd_trt.manifest import Manifest
from svd_trt.spec import (
    ENGINE_BACKENDS,
    FLOAT_PRECISIONS,
    QUANTIZED_PRECISIONS,
    ComponentSpec,
    component_specs,
)

OnComponent = Callable[[str, str, float], None]


class BuildError(UserError, ValueError):
    """A build request that cannot be met: one line."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything `build-engines` takes besides MODEL and OUT."""

    backend: str = "onnxruntime"
    request: ProfileRequest = field(default_factory=ProfileRequest)
    precisions: dict[str, str] = field(default_factory=dict)  # overrides of each spec's precision
    variant: str | None = "auto"
    calibration: Path | None = None  # int8 / fp8 UNet: the directory svd-export calibrate wrote
    timing_cache: Path | None = None  # TensorRT: default one per TensorRT + GPU in the user cache dir
    onnx_dir: Path | None = None  # TensorRT: where its ONNX files go; default OUT-onnx beside OUT
    force: bool = False  # replace an engine directory of ours whose manifest cannot be read

    @property
    def quantized(self) -> str | None:
        """The UNet's int8 / fp8, or None for a float UNet."""
        unet = self.precisions.get("unet")
        return unet if unet in QUANTIZED_PRECISIONS else None

    def check(self) -> None:
        """BuildError (one line) for options that contradict each other, before any work."""
        if self.calibration is not None and self.quantized is None:
            raise BuildError("--calibration applies to --unet-precision int8 or fp8 only")
        if self.quantized and self.calibration is None:
            raise BuildError(f"--unet-precision {self.quantized} needs --calibration DIR (svd-export calibrate)")


def component_precisions(
    specs: dict[str, ComponentSpec], overrides: dict[str, str], backend: str
) -> dict[str, str]:
    """Each spec's precision on the backend, with the user's overrides checked."""
    for name, precision in overrides.items():
        if name not in specs:
            raise BuildError(f"--precision {name}={precision}: unknown component; choose {', '.join(specs)}")
        if precision in QUANTIZED_PRECISIONS and name == "unet":
            continue
        if precision not in FLOAT_PRECISIONS:
            raise BuildError(
                f"--precision {name}={precision}: engines here are fp32 or fp16 (int8 / fp8 for the UNet only)"
            )
    return {**{name: spec.precision_on(backend) for name, spec in specs.items()}, **overrides}


def export_onnx(
    snapshot: str | Path,
    out: str | Path,
    target: str,
    precisions: dict[str, str] | None = None,
    variant: str | None = "auto",
    on_component: OnComponent | None = None,
    force: bool = False,
    calibration: Path | None = None,
) -> Manifest:
    """The ONNX files made for `target` (for TensorRT: exactly what its engines build from, an int8 /
    fp8 UNet included: `calibration` is the directory svd-export calibrate wrote)."""
    from svd_trt.export.checkpoint import read_config
    from svd_trt.export.onnx_export import build_onnx_dir

    if target not in ENGINE_BACKENDS:
        raise BuildError(f"unknown target {target!r}: choose {' or '.join(ENGINE_BACKENDS)}")
    options = BuildOptions(target, precisions=dict(precisions or {}), calibration=calibration)
    options.check()
    if options.quantized and target != "tensorrt":
        raise BuildError(
            f"--unet-precision {options.quantized}: export-onnx quantizes for --target tensorrt; "
            "the ONNX Runtime engine directory is build-engines' (--unet-precision int8 --calibration DIR)"
        )
    cfg = read_config(snapshot)
    chosen = component_precisions(component_specs(cfg), options.precisions, target)
    finish, protect = (None, ())
    if options.quantized:
        chosen["unet"] = "fp32"  # Model Optimizer quantizes the fp32 graph (tensorrt_quantize_step)
        finish, protect = tensorrt_quantize_step(
            cfg, snapshot, options.calibration, options.quantized, variant, on_component
        )
    return build_onnx_dir(
        snapshot, out, target, chosen, variant, on_component, force=force, finish=finish, protect=protect
    )


def tensorrt_quantize_step(cfg, snapshot, calibration: Path, precision: str, variant, on_component):
    """(finish, protect) for build_onnx_dir: the TensorRT ONNX directory's UNet becomes its Q/DQ file
    in the directory's own stage; what TensorRT then builds from.

    NVIDIA Model Optimizer places the Q/DQ where TensorRT's fusions expect them and calibrates at
    the recorded (full) shape; the unquantized remainder takes the fp16 export's types, fp32
    islands included (calibration/modelopt_quantize.py). ONNX Runtime's quantizer stays the ONNX
    Runtime build's: its layout serves ORT's CPU kernels.
    """
    from svd_trt.calibration.modelopt_quantize import check_modelopt_request, modelopt_quantizer
    from svd_trt.calibration.quantize import quantize_step

    calibration = Path(calibration)
    check_modelopt_request(precision, calibration)  # one line before the export
    quantizer = modelopt_quantizer(calibration, precision, cfg, snapshot, variant)
    return quantize_step(calibration, quantizer, on_component), (calibration,)


def build_engines(
    snapshot: str | Path, out: str | Path, options: BuildOptions, on_component: OnComponent | None = None
) -> Manifest:
    """Build (or reuse) every component of `snapshot` into `out` for `options.backend`."""
    if options.backend not in ENGINE_BACKENDS:
        raise BuildError(f"unknown backend {options.backend!r}: choose {' or '.join(ENGINE_BACKENDS)}")
    if options.backend == "tensorrt":
        from svd_trt.engines.tensorrt_build import build_tensorrt_dir

        return build_tensorrt_dir(snapshot, out, options, on_component)
    return build_onnxruntime_dir(snapshot, out, options, on_component)


def build_onnxruntime_dir(
    snapshot: str | Path, out: str | Path, options: BuildOptions, on_component: OnComponent | None = None
) -> Manifest:
    """ONNX files for ONNX Runtime; an int8 UNet is quantized from its fp32 export in the same stage."""
    from svd_trt.calibration.dataset import load_index
    from svd_trt.calibration.quantize import ort_quantizer, quant_options, quantize_step
    from svd_trt.export.checkpoint import read_config
    from svd_trt.export.onnx_export import build_onnx_dir

    options.check()
    cfg = read_config(snapshot)
    limits = served_limits(cfg, options.request, bounded=False)
    precisions = component_precisions(component_specs(cfg), options.precisions, "onnxruntime")
    finish, protect = None, ()
    if options.quantized:
        opts = quant_options(options.quantized)  # fp8: a one-line QuantizeError before the export
        calib = Path(options.calibration)
        load_index(calib)  # not calibration data: one line before the export
        finish = quantize_step(calib, ort_quantizer(calib, opts), on_component)
        protect = (calib,)
        precisions["unet"] = "fp32"  # Q/DQ nodes go into the fp32 graph
    return build_onnx_dir(
        snapshot, out, "onnxruntime", precisions, options.variant, on_component, limits, options.force,
        finish=finish, protect=protect,
    )  # fmt: skip
