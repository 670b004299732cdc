"""The tables of one `bash scripts/gpu_check.sh` run, written into a generated section of the docs.

    python scripts/gpu_check_report.py --work WORK --docs docs/benchmarks_gpu.md

Reads what the script's parts left in WORK; any of them may be missing (a part that failed or
ran out of time says so in parts.tsv, and its table says "not produced"):

- parts.tsv: one line per part: name, limit s, seconds, status (written by gpu_check.sh; a part
  this machine cannot run says "not run: why", never "ok");
- e2e.json: scripts/bench.py --json (diffusers' pipeline vs ours-torch, frame agreement);
- bench_gpu.json: scripts/bench_gpu.py --out (UNet variants per step, decode sweep);
- onnx_check/report.md (svd-export check), or onnx_check.skipped (one line: why not run);
- gpu_tests.xml: pytest --junitxml of the GPU and TensorRT tests.

Each table comes from the renderer of the script that measured it (bench.markdown,
bench_gpu.markdown, svd-export check's report.md); this module only puts them together and
replaces the text between <!-- bench:gpu-check --> markers (bench.update_section), so a rerun
replaces its section and never appends a second one.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (sibling scripts; scripts/ is not a package)
import bench_common  # noqa: E402
import bench_gpu  # noqa: E402

SECTION = "gpu-check"


def parts_table(work: Path) -> list[str]:
    path = work / "parts.tsv"
    if not path.exists():
        return ["No part ran (parts.tsv missing)."]
    lines = ["| part | limit s | seconds | status |", "|---|---|---|---|"]
    for row in path.read_text().splitlines():
        name, limit, seconds, status = row.split("\t")
        lines.append(f"| {name} | {limit} | {seconds} | {status} |")
    return lines


def e2e_section(work: Path) -> list[str]:
    """bench.py's own table, or the agreement alone when the frames disagree (bench.py's rule:
    no time is reported for outputs that differ from diffusers')."""
    path = work / "e2e.json"
    if not path.exists():
        return ["Not produced (see the part's status above and the log)."]
    r = json.loads(path.read_text())
    case = bench.Case(**r["case"])
    tol = bench.TOLERANCE[case.dtype]
    bad = {c: e for c, e in r["errors"].items() if not e <= tol}
    if bad:
        worst = ", ".join(f"{c} max abs {e:.3g}" for c, e in bad.items())
        psnr = ", ".join(f"{c} {bench_common.psnr_text(db)}" for c, db in r.get("psnr_db", {}).items())
        return [
            f"Case `{case.name}`: frames DISAGREE with diffusers' beyond the tolerance {tol:g} "
            f"({worst}; PSNR {psnr}), so no time is reported (scripts/bench.py's rule); "
            "every number is in e2e.json."
        ]
    text = bench.markdown(
        case, r["summary"], r["errors"], r["decode_memory"], r["environment"], r["command"], r.get("psnr_db")
    )
    return text.rstrip("\n").splitlines()


def microbench_section(work: Path) -> list[str]:
    path = work / "bench_gpu.json"
    if not path.exists():
        return ["Not produced (see the part's status above and the log)."]
    return bench_gpu.markdown(json.loads(path.read_text())).rstrip("\n").splitlines()


def onnx_section(work: Path) -> list[str]:
    skipped = work / "onnx_check.skipped"
    if skipped.exists():
        return [skipped.read_text().strip()]
    report = work / "onnx_check" / "report.md"
    if not report.exists():
        return ["Not produced (see the parts' status above and the log)."]
    where = work / "onnx_check.where"
    lines = [where.read_text().strip(), ""] if where.exists() else []
    # check's own report, its headings moved under this section's
    for line in report.read_text().rstrip("\n").splitlines():
        lines.append("###" + line if line.startswith("#") else line)  # "# check" -> "#### check"
    return lines


def tests_section(work: Path) -> list[str]:
    path = work / "gpu_tests.xml"
    if not path.exists():
        return ["Not produced (see the part's status above and the log)."]
    cases = ET.parse(path).getroot().iter("testcase")
    lines = ["| test | outcome | seconds | message |", "|---|---|---|---|"]
    for case in cases:
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = (
                    {"failure": "FAILED", "error": "ERROR"}.get(kind, kind),
                    found.get("message", ""),
                )
                break
        message = " ".join(message.split()).replace("|", "\\|")[:200]
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        lines.append(f"| `{name}` | {outcome} | {float(case.get('time', 'nan')):.1f} | {message} |")
    if len(lines) == 2:
        lines.append("| (none selected) | | | |")
    return lines


def tests_outcome(xml: Path) -> str | None:
    """The tests part's status from its JUnit XML where "ok" would overstate it: "not run: ..." when
    every test skipped, "ok: N passed; not run: M skipped (...)" when some did; None when all ran
    or one failed."""
    if not xml.exists():
        return None
    cases = list(ET.parse(xml).getroot().iter("testcase"))
    skipped = [c.find("skipped") for c in cases if c.find("skipped") is not None]
    bad = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    passed = len(cases) - len(skipped) - len(bad)
    why = sorted({" ".join(s.get("message", "").split())[:120] for s in skipped})
    reasons = "; ".join(why[:3]) + (f"; and {len(why) - 3} more reasons" if len(why) > 3 else "")
    if not cases:
        return "not run: no test selected"
    if bad:
        return None  # pytest failed: the part's own "failed (exit N)" stands
    if passed == 0:
        return f"not run: all {len(cases)} tests skipped ({reasons})"
    if skipped:
        return f"ok: {passed} passed; not run: {len(skipped)} skipped ({reasons})"
    return None


def retag_tests(work: Path) -> str | None:
    """Rewrite the tests part's "ok" in parts.tsv with `tests_outcome`; the new status, if any."""
    status, parts = tests_outcome(work / "gpu_tests.xml"), work / "parts.tsv"
    if status is None or not parts.exists():
        return None
    rows = parts.read_text().splitlines()
    for i, row in enumerate(rows):
        name, limit, seconds, old = row.split("\t")
        if name == "tests" and old == "ok":
            rows[i] = "\t".join((name, limit, seconds, status))
    parts.write_text("\n".join(rows) + "\n")
    return status


def render(work: Path, title: str) -> str:
    blocks = [
        [title, "", "Time per part (each under a hard limit; `gpu_check.log` has everything):", ""]
        + parts_table(work),
        ["### 1. End to end: diffusers' pipeline vs our runtime (torch backend), same latents and noise", ""]
        + e2e_section(work),
        ["### 1b. UNet per step and VAE decode, one process (scripts/bench_gpu.py)", ""]
        + microbench_section(work),
        ["### 2. fp16 ONNX graphs (`export-onnx --target tensorrt`) against the fp32 port", ""]
        + onnx_section(work),
        ['### 3. GPU and TensorRT tests (`pytest -m "gpu or tensorrt"`)', ""] + tests_section(work),
    ]
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="the folder gpu_check.sh's parts wrote")
    ap.add_argument("--docs", type=Path, help="markdown file whose gpu-check section to replace")
    ap.add_argument("--title", default="Run of `bash scripts/gpu_check.sh`.")
    ap.add_argument(
        "--tests-outcome", action="store_true", help="only restate the tests part's status in parts.tsv"
    )
    args = ap.parse_args(argv)
    if args.tests_outcome:
        status = retag_tests(args.work)
        if status:
            print(f"=== tests: {status}")
        return 0
    if args.docs is None:
        ap.error("--docs is required")
    text = render(args.work, args.title)
    bench_common.update_section(args.docs, SECTION, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
