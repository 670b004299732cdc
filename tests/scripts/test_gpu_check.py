"""scripts/gpu_check.sh: its CPU smoke run end to end, and its report's rules on crafted inputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check_report  # noqa: E402  (scripts/ is not a package)

DOCS = ROOT / "docs" / "benchmarks_gpu.md"
START, END = "<!-- bench:gpu-check -->", "<!-- /bench:gpu-check -->"
NUMBER = r"[0-9][0-9.e+-]*"


def _section(text: str) -> str:
    assert text.count(START) == 1 and text.count(END) == 1, "exactly one generated section"
    return text.split(START, 1)[1].split(END, 1)[0]


def tables(section: str) -> dict[str, list[dict[str, str]]]:
    """Every markdown table of the section, by its first header cell: a list of rows by header."""
    out: dict[str, list[dict[str, str]]] = {}
    block: list[list[str]] = []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])  # not \|
            continue
        if len(block) >= 2:
            header, rows = block[0], block[2:]
            out.setdefault(header[0], []).extend(dict(zip(header, r)) for r in rows)
        block = []
    return out


def first(value: str) -> float:
    """The median of a "median (min-max)" cell, or the number a cell holds."""
    return float(value.split()[0])


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_table_with_numbers(tmp_path):
    """Every part at tiny shapes on the CPU; the tables land in a copy of the docs, never the real file.

    Slow: about 1 min on an idle 2-core machine, 4 min when other jobs share it (measured
    2026-11-30, load average 7-9). GPU_CHECK_TIME_SCALE=4 widens the script's limits for such
    a machine: this checks function; the GPU run's limits are the script's own.
    """
    docs = tmp_path / "benchmarks_gpu.md"
    shutil.copy(DOCS, docs)
    real_before = hashlib.sha256(DOCS.read_bytes()).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_SIZE": "tiny",
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_CHECK_DOCS": str(docs),
        "GPU_CHECK_WHEELS": "",
        "GPU_CHECK_TIME_SCALE": "4",
        "PYTHON": sys.executable,
        "OUT": str(out),
    }
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(f"smoke run: {time.perf_counter() - start:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert hashlib.sha256(DOCS.read_bytes()).hexdigest() == real_before, "the real docs were touched"

    section = _section(docs.read_text())
    t = tables(section)
    status = {r["part"]: r["status"] for r in t["part"]}
    for name in ("setup", "checkpoint", "e2e", "unet-decode", "onnx-export", "onnx-check"):
        assert status.get(name) == "ok", status
    # what a CPU cannot run is "not run: why", never "ok", and does not fail the run
    assert status["tests"].startswith("not run: all ") and "tests skipped (" in status["tests"], status
    assert status["tensorrt"].startswith("not run: TensorRT is not importable here ("), status
    tail = proc.stdout.strip().splitlines()[-8:]
    assert "failed: none" in tail and any(line.startswith("not run: tests: all ") for line in tail), tail
    assert any(line.startswith("passed: ") and " e2e" in line and " tests" not in line for line in tail), tail

    # 1. end to end: fp32 on the CPU, so the frames agree within FRAME_MAX_ABS["fp32"] = 1e-3
    m = re.search(rf"ours-torch ({NUMBER}) \(tolerance 0\.001\)\. PSNR: ours-torch ({NUMBER}) dB", section)
    assert m, section
    assert float(m.group(1)) <= 1e-3 and float(m.group(2)) >= 60.0  # max abs <= 1e-3 means PSNR >= 60 dB
    ours = {r["contender"]: r for r in t["contender"]}["ours-torch"]
    assert first(ours["total"]) > 0 and first(ours["UNet per step"]) > 0 and first(ours["decode"]) > 0

    # 1b. UNet variants and the decode sweep: times, and errors against diffusers in fp32
    unet = {r["variant"]: r for r in t["variant"]}
    assert set(unet) == {"diffusers", "port", "port+fast-attention"}  # no CUDA graph on a CPU
    for row in unet.values():
        assert row["F"] == "3" and first(row["ms / step"]) > 0, row
        assert float(row["rel. err vs fp32 port"]) < 1e-4, row  # fp32 vs fp32: summation order only
    decode = t["decode chunk"]
    assert sorted((r["decode chunk"], r["implementation"]) for r in decode) == [
        ("1", "diffusers"),
        ("1", "port+fast-attention"),
        ("3", "diffusers"),
        ("3", "port+fast-attention"),
    ]
    assert all(first(r["s"]) > 0 for r in decode)

    # 2. the fp16 ONNX graphs (the CPU provider in a smoke run): every component checked, passed
    assert "#### svd-export check: PASSED" in section
    checked = {r["component"]: r for r in t["component"] if "output" in r}
    assert set(checked) == {"image_encoder", "vae_encoder", "unet", "vae_decoder"}
    assert all(r["status"] == "PASS" and re.fullmatch(NUMBER, r["max abs"]) for r in checked.values())

    # 3. the GPU and TensorRT tests: none can run here, and each says why
    tests = t["test"]
    assert len(tests) >= 3 and all(r["outcome"] == "skipped" and r["message"] for r in tests), tests

    # what the device tool brings back: at most 8 plain files directly under $OUT
    files = {p.name for p in out.iterdir()}
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert {"gpu_check.log", "benchmarks_gpu.md", "e2e.json", "bench_gpu.json", "parts.tsv"} <= files
    assert _section((out / "benchmarks_gpu.md").read_text()) == section
    assert json.loads((out / "e2e.json").read_text())["psnr_db"]["ours-torch"] >= 60.0

    # the report again on the same run, twice: its section is replaced, nothing else changes
    before, runs = docs.read_text(), []
    for _ in range(2):
        gpu_check_report.main(["--work", str(tmp_path / "work"), "--docs", str(docs), "--title", "again"])
        runs.append(docs.read_text())
        assert runs[-1].split(START)[0] == before.split(START)[0]
        assert runs[-1].split(END)[1] == before.split(END)[1]
        assert _section(runs[-1]).lstrip("\n").startswith("again\n")
    assert runs[0] == runs[1]


def _junit(path: Path, cases: list[str]) -> Path:
    path.write_text(f'<testsuites><testsuite name="pytest">{"".join(cases)}</testsuite></testsuites>')
    return path


PASS = '<testcase classname="t" name="a"/>'
SKIP = '<testcase classname="t" name="{}"><skipped message="{}"/></testcase>'
FAIL = '<testcase classname="t" name="f"><failure message="boom"/></testcase>'


def test_tests_part_is_ok_only_where_a_test_ran(tmp_path):
    """All skipped (no TensorRT, no CUDA): "not run"; some skipped: ok with what did not run; all run or
    a failure: the part's own status (pytest's exit code) stands."""
    no_trt = SKIP.format("b", "tensorrt is not importable here")
    xml = tmp_path / "gpu_tests.xml"
    _junit(xml, [no_trt, SKIP.format("c", "no CUDA GPU"), SKIP.format("d", "no CUDA GPU")])
    assert gpu_check_report.tests_outcome(xml) == (
        "not run: all 3 tests skipped (no CUDA GPU; tensorrt is not importable here)"
    )
    _junit(xml, [PASS, no_trt])
    assert gpu_check_report.tests_outcome(xml) == (
        "ok: 1 passed; not run: 1 skipped (tensorrt is not importable here)"
    )
    assert gpu_check_report.tests_outcome(_junit(xml, [PASS])) is None
    assert gpu_check_report.tests_outcome(_junit(xml, [FAIL, no_trt])) is None
    assert gpu_check_report.tests_outcome(_junit(xml, [])) == "not run: no test selected"
    assert gpu_check_report.tests_outcome(tmp_path / "missing.xml") is None

    (tmp_path / "parts.tsv").write_text("setup\t-\t9\tok\ntests\t120\t3.0\tok\n")
    _junit(xml, [no_trt])
    assert gpu_check_report.main(["--work", str(tmp_path), "--tests-outcome"]) == 0
    assert (tmp_path / "parts.tsv").read_text() == (
        "setup\t-\t9\tok\ntests\t120\t3.0\tnot run: all 1 tests skipped (tensorrt is not importable here)\n"
    )


def test_report_of_a_run_whose_parts_failed(tmp_path):
    """Missing outputs say so; frames beyond tolerance withhold the e2e times (bench.py's rule);
    a skipped ONNX check gives its reason; failed tests show as FAILED with their message."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "parts.tsv").write_text(
        "setup\t-\t9\tok\nunet-decode\t150\t150.1\ttimed out after 150 s\n"
        "tensorrt\t0\t0\tnot run: TensorRT is not importable here (No module named 'tensorrt')\n"
    )
    case = {"size": "full", "frames": 25, "height": 576, "width": 1024, "steps": 25, "chunk": 8}
    e2e = {
        "case": {**case, "device": "cuda", "dtype": "fp16"},
        "errors": {"ours-torch": 0.25},  # above FRAME_MAX_ABS["fp16"] = 3e-2
        "psnr_db": {"ours-torch": 21.5},
        "summary": {"ours-torch": {"total": {"median": 9.87654, "min": 9.8, "max": 9.9}}},
    }
    (work / "e2e.json").write_text(json.dumps(e2e))
    (work / "onnx_check.skipped").write_text(
        "skipped: no CUDA execution provider (onnxruntime here has: X)\n"
    )
    (work / "gpu_tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="test_ok" time="1.5"/>'
        '<testcase classname="tests.a" name="test_bad" time="2.0"><failure message="assert 1 | 2">tb</failure>'
        "</testcase></testsuite></testsuites>"
    )
    docs = tmp_path / "doc.md"
    docs.write_text(f"# Doc\n\nbefore\n\n{START}\nNot run on a GPU yet.\n{END}\n\nafter\n")
    gpu_check_report.main(["--work", str(work), "--docs", str(docs), "--title", "Run X."])
    text = docs.read_text()
    section = _section(text)
    assert text.startswith("# Doc\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    t = tables(section)
    parts = {r["part"]: r["status"] for r in t["part"]}
    assert parts["unet-decode"] == "timed out after 150 s"
    assert parts["tensorrt"] == "not run: TensorRT is not importable here (No module named 'tensorrt')"
    assert "DISAGREE" in section and "ours-torch max abs 0.25" in section and "21.50 dB" in section
    assert "9.876" not in section  # no time from a run whose frames disagree
    assert section.count("Not produced") == 1  # bench_gpu.json is missing
    assert "skipped: no CUDA execution provider (onnxruntime here has: X)" in section
    outcomes = {r["test"]: (r["outcome"], r["message"]) for r in t["test"]}
    assert outcomes == {
        "`tests.a::test_ok`": ("passed", ""),
        "`tests.a::test_bad`": ("FAILED", "assert 1 \\| 2"),
    }
