"""Server-side caps on what one request may ask for: steps, frames, pixels per frame.

A request's time grows with each of them; without a cap one request can hold an instance for
days (a million steps). The engines' own limits (the manifest's, svd_trt/options.py) say what
they can run; these say what this server is willing to run, and are refused (400 /
INVALID_ARGUMENT) before anything runs. Memory is admission's concern (admission.py), not a cap's.
Every family's options have these four fields (num_inference_steps, num_frames, height, width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from svd_trt.errors import UserError

SERVE = "svd-trt serve"


class CapError(UserError, ValueError):
    """A request over a cap of this server: one line naming the cap and its flag."""


@dataclass(frozen=True)
class RequestCaps:
    """The defaults are documented in docs/serving.md; 0 turns a cap off."""

    max_steps: int = 200  # 4-8x the default step counts of video diffusion pipelines (25-50)
    max_frames: int = 256
    max_pixels: int = 4096 * 4096  # per frame; memory admission refuses what does not fit long before

    def check(self, opts: Any) -> None:
        """`opts`: a family's resolved options (num_frames filled); CapError for the first value over its cap."""
        values = (
            ("num_inference_steps", opts.num_inference_steps, self.max_steps, "--max-steps"),
            ("num_frames", opts.num_frames, self.max_frames, "--max-frames"),
            ("height x width", opts.height * opts.width, self.max_pixels, "--max-pixels"),
        )
        for name, value, cap, flag in values:
            if cap and value > cap:
                raise CapError(f"{name} {value} is over this server's cap of {cap} ({SERVE} {flag})")

    def parameters(self) -> dict[str, str]:
        """As the pipeline model's config parameters."""
        return {
            "max_steps": str(self.max_steps),
            "max_frames": str(self.max_frames),
            "max_pixels": str(self.max_pixels),
        }

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> RequestCaps:
        default = cls()
        return cls(
            **{k: int(params.get(k, getattr(default, k))) for k in ("max_steps", "max_frames", "max_pixels")}
        )
