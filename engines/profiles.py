"""TensorRT optimization profiles from the request sizes an engine directory serves.

Each component's per-input (min, opt, max) shapes are `ComponentSpec.input_shapes` at the
family's symbolic sizes for the served limits at each level, so no shape is spelled here.
numpy only: no TensorRT needed to compute or test a profile.
"""

from __future__ import annotations

from typing import Any

from svd_trt.spec import Span

Shape = tuple[int, ...]
# input name -> {"min": shape, "opt": shape, "max": shape}; JSON-friendly, recorded in the manifest.
Profile = dict[str, dict[str, Shape]]

LEVELS = ("min", "opt", "max")


def component_sizes(family: Any, cfg: Any, limits: dict[str, Span]) -> dict[str, dict[str, dict[str, int]]]:
    """Per component, the family's symbolic sizes at min, opt and max."""
    out = {}
    for name, spec in family.component_specs(cfg).items():
        out[name] = {
            level: family.sizes(cfg, spec, {k: span.at(level) for k, span in limits.items()}, spec.batch.at(level))
            for level in LEVELS
        }
    return out


def component_profiles(family: Any, cfg: Any, limits: dict[str, Span]) -> dict[str, Profile]:
    """Per component and input, the (min, opt, max) shapes; all through spec.input_shapes."""
    sizes = component_sizes(family, cfg, limits)
    profiles = {}
    for name, spec in family.component_specs(cfg).items():
        shapes = {level: spec.input_shapes(sizes[name][level]) for level in LEVELS}
        profiles[name] = {inp: {level: shapes[level][inp] for level in LEVELS} for inp in spec.input_names}
    return profiles
