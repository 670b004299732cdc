"""The family registry and interface: every registered family implements svd_trt.family.Family, and
snapshots are told apart by their model_index.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from svd_trt.family import Family, FamilyError, all_families, family_named, family_of_snapshot

MEMBERS = [n for n in dir(Family) if not n.startswith("_")] + list(Family.__annotations__)


@pytest.mark.parametrize("family", all_families(), ids=lambda f: f.name)
def test_every_family_implements_the_interface(family):
    missing = [m for m in MEMBERS if not hasattr(family, m)]
    assert not missing, f"{family.name} lacks {missing}"
    assert family_named(family.name) is family
    assert set(family.limit_names) <= {f for f in family.options.__dataclass_fields__}
    assert family.denoiser in family.component_specs(family.preset(family.presets[0]))


def test_snapshots_are_told_apart_by_their_pipeline_class(tmp_path):
    for family in all_families():
        for cls in family.pipelines:
            (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": cls}))
            assert family_of_snapshot(tmp_path) is family
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(FamilyError, match="'StableDiffusionPipeline' is none this svd-trt exports"):
        family_of_snapshot(tmp_path)
    with pytest.raises(FamilyError, match="unknown model family 'sd'"):
        family_named("sd")


def test_the_numpy_side_of_every_family_imports_without_torch():
    """The runtime runs where torch is not installed: a family's options, specs, memory and pipeline too."""
    code = (
        "import sys\n"
        "from svd_trt.family import all_families\n"
        "for f in all_families():\n"
        "    f.pipeline_class(); f.component_specs(f.preset(f.presets[0]))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
