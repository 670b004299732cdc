"""The numeric parity tests, rerun under the math paths other CPUs take: a tolerance tuned to one CPU fails here.

torch, MKL and numpy each pick their float32 kernels by CPU, and each can be told to take an older path:
- ATen's vectorized kernels: ATEN_CPU_CAPABILITY (default = no AVX2, avx2, avx512). Its default kernel
  does not fuse torch.linspace's multiply-add.
- MKL's VML, behind torch's sqrt/exp/log on arrays: MKL_ENABLE_INSTRUCTIONS (SSE4_2, AVX2, AVX512).
  Each path rounds its 1-ulp results differently; a CPU MKL does not treat as Intel's (AMD's) gets a
  non-AVX-512 one. Forcing SSE4_2 reproduces issue 22 on any x86 machine.
- numpy's SIMD loops: NPY_DISABLE_CPU_FEATURES, which refuses (numpy 2) or warns about (numpy 1) a
  feature the CPU lacks, so the list is this CPU's own dispatched features.
Each variant runs FILES in a subprocess (~10-20 s each). The machine's native path is the normal run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# diffusers' Euler schedule and loop (torch's sqrt/exp/log, linspace), the guidance scale (linspace), the CLIP
# resize (exp, conv2d, bicubic)
FILES = [
    "tests/families/svd/test_euler.py",
    "tests/families/svd/test_guidance.py",
    "tests/families/svd/test_clip_preprocess.py",
    "tests/families/ltx/test_ltx_flow_match.py",
    "tests/families/ltx/test_ltx_rope.py",
]
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _numpy_simd_features() -> list[str]:
    """numpy's dispatched SIMD features this CPU has (the ones NPY_DISABLE_CPU_FEATURES may name)."""
    try:
        from numpy._core import _multiarray_umath as umath  # numpy >= 2
    except ImportError:
        from numpy.core import _multiarray_umath as umath
    return [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]


def _variants() -> dict[str, dict[str, str]]:
    simd = _numpy_simd_features()
    oldest = {"ATEN_CPU_CAPABILITY": "default", "NPY_DISABLE_CPU_FEATURES": " ".join(simd)}
    if not X86:  # ARM: no MKL, and ATen's only other path is SVE
        return {"no_simd": oldest}
    return {
        # a CPU without AVX2 (and MKL's path on CPUs it does not recognise)
        "no_avx2": {**oldest, "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
        # an AVX2 CPU without AVX-512 (e.g. AMD Zen 2/3)
        "avx2": {
            "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "NPY_DISABLE_CPU_FEATURES": " ".join(f for f in simd if f.startswith("AVX512")),
        },
    }


# Prints the paths the subprocess took, then runs pytest there (one interpreter: torch imports once).
RUN = """
import sys, numpy, pytest, torch
print("torch capability:", torch.backends.cpu.get_cpu_capability(), "| numpy:", numpy.__version__)
sys.exit(pytest.main(["-q", "-m", "not slow", "-p", "no:cacheprovider", *sys.argv[1:]]))
"""


@pytest.mark.math_paths
@pytest.mark.parametrize("variant", list(_variants()))
def test_parity_tests_pass_on_other_cpus_math_paths(variant):
    env = {**os.environ, **_variants()[variant]}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-c", RUN, *FILES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{variant} {_variants()[variant]}:\n{out[-6000:]}"
    if variant != "avx2":  # the subprocess really took ATen's default kernels
        assert "torch capability: DEFAULT" in out, out[:500]
