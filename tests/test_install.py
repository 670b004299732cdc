"""Installs as users do them: the wheel builds without setuptools warnings and ships the sample
images; installed WITHOUT extras into a fresh venv (no torch, onnx, safetensors or polygraphy) it
renders a video, and every svd-export command then names the extra to install, in one line.

The three that install are marked `install` (deselect with -m "not install"): ~40 s, most of it pip installing numpy,
Pillow, PyAV and ONNX Runtime into the new venv (from pip's cache or the package index).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import size_args

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "runtime" / "assets" / "coffee.jpg"
EXPORT_ONLY = ("torch", "onnx", "safetensors", "polygraphy")
# What a checkout holds besides the source: environments, build outputs, caches, user outputs.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "out", "work", ".whl")


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """The wheel pip builds from this checkout, and the build's log."""
    dist = tmp_path_factory.mktemp("dist")
    isolation = []
    try:  # without build isolation the build needs no index (setuptools is in the test env)
        import setuptools  # noqa: F401

        isolation = ["--no-build-isolation"]
    except ImportError:
        pass
    # Built from a copy: an in-tree build leaves build/ in the checkout, and a stale build/lib
    # (a module since deleted) would end up in the next wheel.
    source = tmp_path_factory.mktemp("source") / "svd-trt"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    built = _run(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", *isolation, "-w", dist, source)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (path,) = dist.glob("svd_trt-*.whl")
    return path, built.stdout + built.stderr


@pytest.fixture(scope="module")
def runtime_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and its runtime dependencies only; its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv") / "runtime"
    _run(sys.executable, "-m", "venv", venv, check=True)
    installed = _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel[0])
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv / "bin"


@pytest.mark.install
def test_wheel_builds_without_setuptools_warnings_and_ships_the_assets(wheel):
    path, log = wheel
    assert not re.search(r"absent from the `packages`|SetuptoolsDeprecationWarning|_Warning:", log), log[
        -3000:
    ]
    names = zipfile.ZipFile(path).namelist()
    assets = {n.rsplit("/", 1)[-1] for n in names if n.startswith("svd_trt/runtime/assets/")}
    assert assets == {p.name for p in (REPO / "runtime" / "assets").iterdir()}
    assert not [
        n for n in names if n.split("/")[0] in ("export", "runtime", "engines", "calibration", "tests")
    ]


@pytest.mark.install
def test_runtime_install_renders_a_video_without_torch(runtime_venv, tiny_engines, tmp_path):
    listed = _run(runtime_venv / "python", "-m", "pip", "list", "--format=freeze").stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert not installed & set(EXPORT_ONLY), installed
    out = tmp_path / "v.mp4"
    args = [*size_args(), "--no-progress"]
    rendered = _run(
        runtime_venv / "svd-trt", "infer", "--engines", tiny_engines, "--image", IMAGE, "--out", out, *args
    )
    assert rendered.returncode == 0, rendered.stderr
    assert out.stat().st_size > 0


@pytest.mark.install
def test_runtime_install_renders_an_ltx_video_without_torch(runtime_venv, ltx_tiny_engines, tmp_path):
    """LTX-Video's runtime (its tokenizer included: the `tokenizers` library) needs no torch either."""
    out = tmp_path / "v.npy"
    sizes = ["--num-frames", "9", "--height", "32", "--width", "48", "--num-inference-steps", "2"]
    rendered = _run(
        runtime_venv / "svd-trt", "infer", "--engines", ltx_tiny_engines, "--prompt", "a fox", "--image", IMAGE,
        "--out", out, *sizes, "--no-progress",
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert out.stat().st_size > 0


@pytest.mark.install
@pytest.mark.parametrize(
    "command",
    [
        ["make-checkpoint", "--out", "{tmp}/ckpt"],
        ["export-onnx", "--model", "{tmp}/snapshot", "--out", "{tmp}/onnx"],
        ["build-engines", "--model", "{tmp}/snapshot", "--out", "{tmp}/engines"],
        ["check", "--engines", "{engines}", "--model", "{tmp}/snapshot"],
        ["calibrate", "--model", "{tmp}/snapshot", "--out", "{tmp}/calib"],
        ["quantize", "--engines", "{engines}", "--calibration", "{tmp}/calib"],
    ],
    ids=lambda c: c[0],
)
def test_export_commands_name_the_extra_in_one_line(runtime_venv, tiny_engines, tmp_path, command):
    args = [a.format(tmp=tmp_path, engines=tiny_engines) for a in command]
    done = _run(runtime_venv / "svd-export", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("Error: ") and "pip install 'svd-trt[export]'" in lines[0]
    ), lines
    assert list(tmp_path.iterdir()) == []  # nothing half-made


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _lowest_python() -> tuple[int, int]:
    """requires-python's lower bound, the one statement of the supported versions (">=3.X")."""
    spec = _pyproject()["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec)
    assert match, f"requires-python {spec!r}: expected a plain lower bound"
    return int(match.group(1)), int(match.group(2))


def test_the_supported_pythons_are_stated_once_and_tested():
    """This interpreter is the lowest supported one in CI (and at least inside the range anywhere);
    ruff follows requires-python: no target-version of its own that could disagree."""
    assert sys.version_info[:2] >= _lowest_python()
    assert "target-version" not in _pyproject()["tool"]["ruff"]


def _interpreter(major: int, minor: int) -> str | None:
    """A working python{major}.{minor}: on PATH, or among pyenv's versions (its shims run only the
    versions a user selected)."""
    name = f"python{major}.{minor}"
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in [shutil.which(name), *sorted(root.glob(f"versions/{major}.{minor}.*/bin/{name}"))]:
        if candidate and _run(candidate, "-c", "import sys").returncode == 0:
            return str(candidate)
    return None


@pytest.mark.install
def test_an_older_python_refuses_the_wheel(wheel):
    """pip on the newest Python below the range does not install the wheel (where one is at hand)."""
    major, minor = _lowest_python()
    older = _interpreter(major, minor - 1)
    if older is None:
        pytest.skip(f"no python{major}.{minor - 1} on this machine")
    done = _run(older, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", wheel[0])
    assert done.returncode != 0 and "requires a different Python" in done.stderr, done.stderr


def test_readme_gpu_recipe_lists_the_runtime_dependencies():
    """README's onnxruntime-gpu recipe installs pyproject's dependencies with onnxruntime swapped."""
    declared = _pyproject()["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in declared}
    recipe = re.search(r"^pip install onnxruntime-gpu (.+?)\s+#", (REPO / "README.md").read_text(), re.M)
    assert recipe, "README lost the onnxruntime-gpu recipe"
    assert {"onnxruntime-gpu", *recipe.group(1).split()} == names - {"onnxruntime"} | {"onnxruntime-gpu"}
