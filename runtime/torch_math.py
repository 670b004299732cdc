"""numpy versions of torch's float32 primitives that diffusers' schedules are computed with.

Shared by the families whose reference (diffusers) builds schedules and frequencies with them.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n) in float32: start + i*step up to n/2, end - (n-1-i)*step after.

    torch's x86 CPU build fuses each multiply-add (one rounding), emulated here in float64
    (exact for a float32 product); np.linspace rounds differently in about 1 value in 3.
    """
    start32, end32 = F32(start), F32(end)
    if n == 1:
        return np.array([start32])
    step = np.float64((end32 - start32) / F32(n - 1))
    i = np.arange(n)
    head = (np.float64(start32) + step * i).astype(F32)
    tail = (np.float64(end32) - step * (n - 1 - i)).astype(F32)
    return np.where(i < n // 2, head, tail)
