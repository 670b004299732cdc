"""Server-wide admission, caps and the status format, without a server: admission across real
processes sharing a ledger, as a server's pipeline instances do."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from svd_trt.errors import CapacityError
from svd_trt.families.ltx import config as ltx_config
from svd_trt.families.ltx.family import LTX
from svd_trt.families.ltx.options import LTXOptions
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.options import GenerationOptions, resolve
from svd_trt.memory import InsufficientMemory, MemoryPlan, resident_bytes
from svd_trt.runtime.serving.admission import Admission, AdmissionError
from svd_trt.runtime.serving.caps import CapError, RequestCaps
from svd_trt.runtime.serving.failures import (
    CANCELLED,
    INTERNAL,
    UNAVAILABLE,
    Cancelled,
    describe,
    tagged,
    untag,
)

CFG = preset("tiny")
OPTS = resolve(GenerationOptions(num_frames=2, height=256, width=256), CFG)
NEED = MemoryPlan(SVD).estimate(CFG, OPTS).total  # ~0.38 GiB of activations and arrays, never allocated here


def plan(available: int, family=SVD) -> MemoryPlan:
    """A loaded pipeline's plan that sees `available` bytes free on the host."""
    return MemoryPlan(family, loaded_rss=resident_bytes(), available=lambda: available)


def hold(root, available, admitted, release) -> None:
    """In another process: admit one request and keep it in flight until told."""
    with Admission(root).admit(plan(available), CFG, OPTS):
        admitted.set()
        release.wait(60)


def start_holder(root):
    """A process holding one admitted request: (process, release event)."""
    ctx = multiprocessing.get_context("fork")
    admitted, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=hold, args=(root, 3 * NEED, admitted, release))
    proc.start()
    assert admitted.wait(30), "the first request was not admitted"
    return proc, release


@pytest.fixture
def holder(tmp_path):
    proc, release = start_holder(tmp_path)
    yield proc, release
    release.set()
    proc.join(30)


def test_a_request_in_flight_in_another_process_takes_its_memory(tmp_path, holder):
    proc, release = holder
    # 1.5 requests' worth free: either fits alone, not both while the first has allocated nothing.
    with pytest.raises(InsufficientMemory) as refused:
        with Admission(tmp_path).admit(plan(int(1.5 * NEED)), CFG, OPTS):
            pass
    assert isinstance(refused.value, CapacityError) and "GiB is available" in str(refused.value)
    release.set()
    proc.join(30)
    with Admission(tmp_path).admit(plan(int(1.5 * NEED)), CFG, OPTS) as est:
        assert est.total == NEED  # admitted once the first left the ledger
    assert not list((tmp_path / "in_flight").iterdir())


def test_the_limit_counts_every_request_in_flight(tmp_path, holder):
    admission = Admission(tmp_path, limit=int(1.5 * NEED))
    with pytest.raises(
        AdmissionError, match=r"the 1 in flight hold about .* \(svd-trt serve --memory-limit\)"
    ):
        with admission.admit(plan(100 * NEED), CFG, OPTS):
            pass
    with Admission(tmp_path, limit=int(2.5 * NEED)).admit(plan(100 * NEED), CFG, OPTS):
        assert len(Admission(tmp_path).in_flight()) == 1  # the other process's, not this one's own


def test_admission_takes_any_family_options(tmp_path, holder):
    """An LTX-Video request is estimated by its family (the plan's) and counted against the same ledger."""
    cfg = ltx_config.preset("tiny")
    opts = LTX.resolve(LTXOptions(num_frames=9, height=256, width=256), cfg)
    need = MemoryPlan(LTX).estimate(cfg, opts).total
    assert need != NEED  # another family's estimate, not SVD's
    with pytest.raises(AdmissionError, match="the 1 in flight"):
        with Admission(tmp_path, limit=NEED + need - 1).admit(plan(100 * NEED, LTX), cfg, opts):
            pass
    with Admission(tmp_path, limit=NEED + need).admit(plan(100 * NEED, LTX), cfg, opts) as est:
        assert est.total == need


def test_a_dead_process_holds_nothing(tmp_path):
    proc, _ = start_holder(tmp_path)  # never released: setting the event would wait for the dead
    os.kill(proc.pid, signal.SIGKILL)  # its entry stays in the ledger
    proc.join(30)
    assert len(list((tmp_path / "in_flight").iterdir())) == 1
    with Admission(tmp_path, limit=int(1.5 * NEED)).admit(plan(int(1.5 * NEED)), CFG, OPTS):
        pass
    assert not list((tmp_path / "in_flight").iterdir())


def test_caps():
    caps = RequestCaps(max_steps=10, max_frames=4, max_pixels=64 * 64)
    caps.check(resolve(GenerationOptions(num_frames=4, height=64, width=64, num_inference_steps=10), CFG))
    for options, message in [
        (
            {"num_inference_steps": 11},
            "num_inference_steps 11 is over this server's cap of 10 (svd-trt serve --max-steps)",
        ),
        ({"num_frames": 5}, "num_frames 5 is over this server's cap of 4 (svd-trt serve --max-frames)"),
        ({"width": 72}, "height x width 4608 is over this server's cap of 4096 (svd-trt serve --max-pixels)"),
    ]:
        base = {"num_frames": 4, "height": 64, "width": 64, "num_inference_steps": 10}
        opts = resolve(GenerationOptions(**{**base, **options}), CFG)
        with pytest.raises(CapError) as e:
            caps.check(opts)
        assert str(e.value) == message
    RequestCaps(0, 0, 0).check(resolve(GenerationOptions(num_inference_steps=10**6), CFG))  # 0: no cap
    assert RequestCaps.from_parameters(caps.parameters()) == caps
    # Every family's options carry the four capped values under the same names.
    ltx_cfg = ltx_config.preset("tiny")
    with pytest.raises(CapError, match=r"^num_inference_steps 50 is over this server's cap of 10 "):
        caps.check(
            LTX.resolve(LTXOptions(num_frames=1, height=64, width=64), ltx_cfg)
        )  # LTX's default 50 steps
    with pytest.raises(CapError, match=r"^num_frames 9 is over this server's cap of 4 "):
        caps.check(
            LTX.resolve(LTXOptions(num_frames=9, height=64, width=64, num_inference_steps=10), ltx_cfg)
        )
    caps.check(LTX.resolve(LTXOptions(num_frames=1, height=64, width=64, num_inference_steps=10), ltx_cfg))


def test_status_in_the_message_round_trips():
    assert describe(CapError("over")) == ("INVALID_ARGUMENT", "over")
    assert describe(CapacityError("full")) == (UNAVAILABLE, "full")
    assert describe(Cancelled("gone")) == (CANCELLED, "gone")
    status, message = describe(KeyError("x"))
    assert (status, message) == (INTERNAL, "internal error: KeyError: 'x'")
    for status, message in [
        ("INVALID_ARGUMENT", "a: b"),
        (UNAVAILABLE, "x"),
        (CANCELLED, "c"),
        (INTERNAL, "d"),
    ]:
        assert untag(tagged(status, message)) == (status, message)
    # Triton's own refusals carry no status: capacity, as a full queue is.
    assert untag("Request timeout expired") == (UNAVAILABLE, "Request timeout expired")
    assert untag("[request id: <id_unknown>] Exceeds maximum queue size")[0] == UNAVAILABLE
    assert untag("something else") == (INTERNAL, "something else")
