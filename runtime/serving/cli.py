"""`svd-trt serve` and `svd-export triton-repo`: thin commands over serve.py and repository.py.

Registered on the two command groups by runtime/cli.py and engines/cli.py. Expected
failures (UserError) are one line on stderr and exit code 2 (svd_trt/cli.py), as in the
other commands.
"""

from __future__ import annotations

import click

from svd_trt.cli import one_line_errors


def _repository_options(
    instances, max_queue, threads, queue_timeout, max_steps, max_frames, max_pixels, memory_limit, device
):
    from svd_trt.memory import GIB
    from svd_trt.runtime.serving.caps import RequestCaps
    from svd_trt.runtime.serving.repository import RepositoryOptions

    return RepositoryOptions(
        instances=instances,
        max_queue=max_queue,
        threads=threads,
        queue_timeout_s=queue_timeout,
        caps=RequestCaps(max_steps, max_frames, max_pixels),
        memory_limit=round(memory_limit * GIB),
        device=device,
    )


def _serving_options(command):
    """The options `serve` and `triton-repo` share: how many pipelines, the queue, the caps, memory."""
    from svd_trt.runtime.serving.caps import RequestCaps

    caps = RequestCaps()
    options = [
        click.option(
            "--instances",
            type=int,
            default=1,
            show_default=True,
            help="Pipelines in the server (on TensorRT engines: per visible GPU); both models share them.",
        ),
        click.option(
            "--max-queue",
            type=int,
            default=8,
            show_default=True,
            help="Requests that may wait for a busy pipeline, per model; more are refused at once (503). "
            "0: no limit.",
        ),
        click.option(
            "--queue-timeout",
            type=float,
            default=600.0,
            show_default=True,
            help="Seconds a request may wait for a pipeline; then it is refused (503). 0: no limit.",
        ),
        click.option(
            "--threads",
            type=int,
            default=0,
            help="ONNX Runtime threads per pipeline; default cores / instances.",
        ),
        click.option(
            "--max-steps",
            type=int,
            default=caps.max_steps,
            show_default=True,
            help="Cap on num_inference_steps.",
        ),
        click.option(
            "--max-frames", type=int, default=caps.max_frames, show_default=True, help="Cap on num_frames."
        ),
        click.option(
            "--max-pixels",
            type=int,
            default=caps.max_pixels,
            show_default=True,
            help="Cap on height x width. Requests over a cap are refused before they run (400); 0: no cap.",
        ),
        click.option(
            "--device",
            type=click.Choice(["cpu", "cuda"]),
            default=None,
            help="Where the engines run; cuda makes the instances Triton GPU instances (instance k on GPU k). "
            "Default: the engines' own (onnxruntime cpu, tensorrt cuda).",
        ),
        click.option(
            "--memory-limit",
            type=float,
            default=0.0,
            help="GiB the requests in flight may need together (their estimates); more are refused (503). "
            "Free host memory is always checked. [default: no limit]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_ENGINES = click.option("--engines", "engine_dir", required=True, type=click.Path(), help="Engine directory.")


@click.command("triton-repo")
@_ENGINES
@click.option("--out", required=True, type=click.Path(), help="New model repository directory.")
@_serving_options
@one_line_errors
def triton_repo(engine_dir: str, out: str, **options) -> None:
    """Write a Triton model repository (models generate, generate_stream) serving ENGINES."""
    from svd_trt.runtime.serving.contract import MODEL, STREAM_MODEL
    from svd_trt.runtime.serving.repository import write_repository

    path = write_repository(engine_dir, out, _repository_options(**options))
    click.echo(f"wrote Triton model repository {path} (models {MODEL}, {STREAM_MODEL})")


@click.command("serve")
@_ENGINES
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option(
    "--address", default="127.0.0.1", show_default=True, help="Listen address; 0.0.0.0 for every interface."
)
@_serving_options
@click.option(
    "--exit-timeout", type=int, default=10, show_default=True, help="Seconds in-flight requests get at stop."
)
@one_line_errors
def serve(engine_dir, http_port, grpc_port, metrics_port, address, exit_timeout, **options) -> None:
    """Serve ENGINES with Triton Inference Server until SIGINT or SIGTERM."""
    from svd_trt.runtime.serving.contract import MODEL, STREAM_MODEL
    from svd_trt.runtime.serving.serve import serve as run
    from svd_trt.runtime.serving.server import ServerConfig

    config = ServerConfig(
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        address=address,
        exit_timeout_s=exit_timeout,
    )

    def ready(server) -> None:
        click.echo(
            f"serving {engine_dir}: HTTP {server.url}, gRPC {address}:{grpc_port}, "
            f"metrics http://{address}:{metrics_port}/metrics (models {MODEL}, {STREAM_MODEL}); Ctrl-C stops",
            err=True,
        )

    run(engine_dir, config, _repository_options(**options), on_ready=ready)
    click.echo("stopped", err=True)
