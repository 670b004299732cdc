"""Load test of `svd-trt serve`: concurrent clients against one server, vs `svd-trt infer` processes.

Starts tritonserver on loopback (free ports) with the engine directory, takes one
single-request result per seed, then for each client count sends `--requests` requests
(distinct seeds) from that many threads, checks every result against the single-request
result of its seed (uint8, within one level), and reports requests/second and p50/p95
latency. The baseline runs `svd-trt infer` processes one after another on the same
requests (each process loads the engines: what a CLI-per-video deployment pays).
Stops the server at the end. Traffic goes to 127.0.0.1 only.

    python scripts/load_test.py --engines out/engines-svd-small --clients 1 2 4 --requests 8
    python scripts/load_test.py --engines out/engines-ltx --prompt "A fox in snow" --num-frames 9

The inputs are the engines' family's: --image (SVD's default: the sample photograph) and/or
--prompt (LTX-Video).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from svd_trt.runtime.serving.client import generate
from svd_trt.runtime.serving.repository import RepositoryOptions, write_repository
from svd_trt.runtime.serving.server import ServerConfig, TritonServer
from svd_trt.runtime.video import to_uint8

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
# Frames may differ by one uint8 level between runs that sum in another order (thread counts).
ONE_LEVEL = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def level_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def run_clients(
    url: str, inputs: dict, request: dict, seeds: list[int], clients: int, expected: dict
) -> dict:
    """`len(seeds)` requests from `clients` threads; latency per request and the worst frame difference."""

    def one(seed: int) -> tuple[float, int]:
        start = time.perf_counter()
        frames = generate(url, **inputs, **request, seed=seed)["frames"]
        return time.perf_counter() - start, level_diff(frames, expected[seed])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, seeds))
    wall = time.perf_counter() - start
    latencies = [r[0] for r in results]
    return {
        "clients": clients,
        "requests": len(seeds),
        "wall_s": wall,
        "rps": len(seeds) / wall,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "max_level_diff": max(r[1] for r in results),
    }


def run_cli(engines: Path, flags: list[str], request: dict, seeds: list[int], expected: dict) -> dict:
    """`svd-trt infer` processes one after another, one per seed; `flags`: the input flags."""
    latencies, diffs = [], []
    cli = [sys.executable, "-m", "svd_trt.runtime.cli", "infer", "--engines", str(engines), *flags]
    options = [f"--{k.replace('_', '-')}={v}" for k, v in request.items()]
    with tempfile.TemporaryDirectory(prefix="svd-load-") as tmp:
        start = time.perf_counter()
        for seed in seeds:
            out = Path(tmp) / f"{seed}.npy"
            t = time.perf_counter()
            subprocess.run([*cli, "--out", str(out), *options, f"--seed={seed}", "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            latencies.append(time.perf_counter() - t)
            diffs.append(level_diff(to_uint8(np.load(out)), expected[seed]))
        wall = time.perf_counter() - start
    return {
        "clients": "svd-trt infer, sequential",
        "requests": len(seeds),
        "wall_s": wall,
        "rps": len(seeds) / wall,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "max_level_diff": max(diffs),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| clients | requests | wall s | requests/s | p50 latency s | p95 latency s | max frame diff (levels) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['wall_s']:.1f} | {r['rps']:.3f} | "
            f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['max_level_diff']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument(
        "--image", type=Path, help="Conditioning image. [default: coffee.jpg without --prompt]"
    )
    parser.add_argument("--prompt", help="Text prompt (LTX-Video).")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=8, help="Requests per client count.")
    parser.add_argument("--instances", type=int, default=2, help="Model instances (pipelines) in the server.")
    parser.add_argument("--num-frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-cli", action="store_true", help="Skip the `svd-trt infer` baseline.")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()

    request = {"num_frames": args.num_frames, "height": args.height, "width": args.width,
               "num_inference_steps": args.steps}  # fmt: skip
    seeds = list(range(args.requests))
    image = args.image or (None if args.prompt else ROOT / "runtime" / "assets" / "coffee.jpg")
    inputs, flags = {}, []
    if image is not None:
        inputs["image"], flags = image.read_bytes(), ["--image", str(image)]
    if args.prompt is not None:
        inputs["prompt"], flags = args.prompt, [*flags, "--prompt", args.prompt]
    rows = []
    with tempfile.TemporaryDirectory(prefix="svd-load-") as tmp, open(Path(tmp) / "server.log", "wb") as log:
        repo_opts = RepositoryOptions(
            instances=args.instances, max_queue=max(args.clients) + 1, state_dir=Path(tmp) / "state"
        )
        repo = write_repository(args.engines, Path(tmp) / "models", repo_opts)
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        config = ServerConfig(repository=repo, address=LOOPBACK, **ports)
        with TritonServer(config, workdir=Path(tmp), log_file=log) as server:
            server.start()
            url = f"{LOOPBACK}:{ports['http_port']}"
            expected = {s: generate(url, **inputs, **request, seed=s)["frames"] for s in seeds}
            for clients in args.clients:
                rows.append(run_clients(url, inputs, request, seeds, clients, expected))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    if not args.no_cli:
        rows.append(run_cli(args.engines, flags, request, seeds, expected))
    print(f"\n{os.cpu_count()} CPUs, instances {args.instances}, request {request}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"request": request, "instances": args.instances, "rows": rows}, indent=2)
        )
    worst = max(r["max_level_diff"] for r in rows)
    if worst > ONE_LEVEL:
        print(f"FAILED: a result differs from its single-request result by {worst} levels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
