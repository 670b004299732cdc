"""`svd-export build-engines`: one options object, one entry point, either backend.

ONNX Runtime: the ONNX files themselves are the engines (fp32 for the CPU; an int8 UNet is
quantized from its fp32 export in the same stage, before the directory is swapped in).
TensorRT: engines/tensorrt_build.py. Both record the request sizes the directory serves (the
family's served_limits) in its manifest. The snapshot's model_index.json names its family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from svd_trt.errors import UserError
from svd_trt.family import Family, family_of_snapshot
from svd_trt.limits import Request
from svd_trt.manifest import Manifest
from svd_trt.spec import ENGINE_BACKENDS, FLOAT_PRECISIONS, QUANTIZED_PRECISIONS, ComponentSpec

OnComponent = Callable[[str, str, float], None]


class BuildError(UserError, ValueError):
    """A build request that cannot be met: one line."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything `build-engines` takes besides MODEL and OUT."""

    backend: str = "onnxruntime"
    request: Request = field(default_factory=dict)  # the family's limit names -> range
    precisions: dict[str, str] = field(default_factory=dict)  # overrides of each spec's precision
    variant: str | None = "auto"
    calibration: Path | None = None  # an int8 / fp8 component: the directory svd-export calibrate wrote
    timing_cache: Path | None = None  # TensorRT: default one per TensorRT + GPU in the user cache dir
    onnx_dir: Path | None = None  # TensorRT: where its ONNX files go; default OUT-onnx beside OUT
    force: bool = False  # replace an engine directory of ours whose manifest cannot be read

    @property
    def quantized(self) -> str | None:
        """The int8 / fp8 asked for (of the family's quantizable component), or None."""
        return next((p for p in self.precisions.values() if p in QUANTIZED_PRECISIONS), None)

    def check(self, family: Family) -> None:
        """BuildError (one line) for options that contradict each other, before any work."""
        for name, precision in self.precisions.items():
            if precision in QUANTIZED_PRECISIONS and name != family.quantizable:
                what = f"int8 / fp8 for {family.quantizable} only" if family.quantizable else "no int8 / fp8"
                raise BuildError(f"--precision {name}={precision}: {family.title} engines are fp32 or fp16 ({what})")
        if self.calibration is not None and self.quantized is None:
            raise BuildError("--calibration applies to an int8 or fp8 precision only")
        if self.quantized and self.calibration is None:
            raise BuildError(
                f"--precision {family.quantizable}={self.quantized} needs --calibration DIR (svd-export calibrate)"
            )


def component_precisions(
    specs: dict[str, ComponentSpec], overrides: dict[str, str], backend: str, quantizable: str | None = None
) -> dict[str, str]:
    """Each spec's precision on the backend, with the user's overrides checked."""
    for name, precision in overrides.items():
        if name not in specs:
            raise BuildError(f"--precision {name}={precision}: unknown component; choose {', '.join(specs)}")
        if precision in QUANTIZED_PRECISIONS and name == quantizable:
            continue
        if precision not in FLOAT_PRECISIONS:
            only = f" (int8 / fp8 for {quantizable} only)" if quantizable else ""
            raise BuildError(f"--precision {name}={precision}: engines here are fp32 or fp16{only}")
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
    from svd_trt.export.onnx_export import build_onnx_dir

    if target not in ENGINE_BACKENDS:
        raise BuildError(f"unknown target {target!r}: choose {' or '.join(ENGINE_BACKENDS)}")
    family = family_of_snapshot(snapshot)
    options = BuildOptions(target, precisions=dict(precisions or {}), calibration=calibration)
    options.check(family)
    if options.quantized and target != "tensorrt":
        raise BuildError(
            f"{options.quantized}: export-onnx quantizes for --target tensorrt; "
            "the ONNX Runtime engine directory is build-engines' (--precision ...=int8 --calibration DIR)"
        )
    cfg = family.read_config(snapshot)
    chosen = component_precisions(family.component_specs(cfg), options.precisions, target, family.quantizable)
    finish, protect = (None, ())
    if options.quantized:
        chosen[family.quantizable] = "fp32"  # Model Optimizer quantizes the fp32 graph (tensorrt_quantize_step)
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
    from svd_trt.export.onnx_export import build_onnx_dir

    family = family_of_snapshot(snapshot)
    options.check(family)
    cfg = family.read_config(snapshot)
    limits = family.served_limits(cfg, options.request, bounded=False)
    specs = family.component_specs(cfg)
    precisions = component_precisions(specs, options.precisions, "onnxruntime", family.quantizable)
    finish, protect = None, ()
    if options.quantized:
        opts = quant_options(options.quantized)  # fp8: a one-line QuantizeError before the export
        calib = Path(options.calibration)
        load_index(calib)  # not calibration data: one line before the export
        finish = quantize_step(calib, ort_quantizer(calib, opts), on_component)
        protect = (calib,)
        precisions[family.quantizable] = "fp32"  # Q/DQ nodes go into the fp32 graph
    return build_onnx_dir(
        snapshot, out, "onnxruntime", precisions, options.variant, on_component, limits, options.force,
        finish=finish, protect=protect,
    )  # fmt: skip
