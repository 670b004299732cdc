"""Server-wide memory admission: a request is admitted against what the requests in flight in
every pipeline instance will still need, not against free memory alone.

Each instance is its own process, and a request's memory is allocated gradually as its
components run, so free memory read at admission does not yet show the requests admitted a
moment earlier: checked alone, requests arriving together are all admitted. Here every admitted
request is written to a ledger in the server's shared directory (state.py), and admission runs
under one lock on it:

    pending  = for every other request in flight: its estimate less what its process has grown
               since its pipeline loaded (its share already allocated), at least 0
    admitted if  estimate - what this process may reuse  <=  host memory available - pending
         and (with a limit)  estimate + the estimates in flight  <=  limit

The first test is MemoryPlan.check with `pending` (svd_trt/memory.py: estimates, what a
pipeline's arenas let it reuse); the limit (`svd-trt serve --memory-limit`) caps the requests in
flight together whatever the host has. Both refusals are capacity (503 / UNAVAILABLE).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svd_trt.errors import CapacityError
from svd_trt.memory import GIB, Estimate, MemoryPlan, resident_bytes

log = logging.getLogger(__name__)


class AdmissionError(CapacityError):
    """The server's memory limit has no room for the request now: one line."""


@dataclass(frozen=True)
class InFlight:
    """One admitted request: its process, its estimate, its process's RSS once its pipeline loaded."""

    pid: int
    bytes: int
    loaded_rss: int | None

    def pending(self) -> int:
        """What it will still allocate: its estimate less what its process has grown since loading."""
        now = resident_bytes(self.pid)
        if now is None or self.loaded_rss is None:
            return self.bytes
        return max(0, self.loaded_rss + self.bytes - now)


class Admission:
    """The ledger of the requests in flight in one server; `limit` bytes in all (0: no limit)."""

    def __init__(self, root: Path, limit: int = 0) -> None:
        self.dir = Path(root) / "in_flight"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock_path = Path(root) / "admission.lock"
        self.limit = limit

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def in_flight(self) -> list[InFlight]:
        """Every other process's admitted request; entries of processes that died are removed."""
        out = []
        for path in self.dir.glob("*.json"):
            entry = InFlight(**json.loads(path.read_text()))
            if entry.pid == os.getpid():
                continue
            if not _alive(entry.pid):
                path.unlink(missing_ok=True)
                continue
            out.append(entry)
        return out

    @contextmanager
    def admit(self, plan: MemoryPlan, cfg: Any, opts: Any) -> Iterator[Estimate]:
        """Hold a place for the request while the block runs; CapacityError (one line) if there is none.

        `cfg`: the engines' model config; `opts`: the family's resolved options (the plan's family
        estimates them)."""
        own = self.dir / f"{os.getpid()}.json"
        with self._locked():
            others = self.in_flight()
            est = plan.estimate(cfg, opts)
            held = sum(e.bytes for e in others)
            if self.limit and est.total + held > self.limit:
                raise AdmissionError(
                    f"this request needs about {est.total / GIB:.2f} GiB of memory and the {len(others)} "
                    f"in flight hold about {held / GIB:.2f} GiB of this server's {self.limit / GIB:.2f} GiB "
                    "(svd-trt serve --memory-limit); retry later"
                )
            plan.check(cfg, opts, pending=sum(e.pending() for e in others))
            own.write_text(
                json.dumps({"pid": os.getpid(), "bytes": est.total, "loaded_rss": plan.loaded_rss})
            )
        log.info("admitted: %.3f GiB, %d other requests in flight", est.total / GIB, len(others))
        try:
            yield est
        finally:
            own.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
