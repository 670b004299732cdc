"""SchedulerConfig reads a scheduler_config.json as diffusers' EulerDiscreteScheduler.from_config does."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
from diffusers import EulerDiscreteScheduler
from scheduler_configs import SCHEDULER_CONFIGS, SVD_SCHEDULER_JSON, scheduler_config

from svd_trt.families.svd.config import EULER_DEFAULTS, SchedulerConfig

FIELDS = [f.name for f in dataclasses.fields(SchedulerConfig)]


def _fields_of(config) -> dict:
    """A config's SchedulerConfig fields, lists as tuples (diffusers keeps JSON lists)."""
    return {k: tuple(config[k]) if isinstance(config[k], list) else config[k] for k in FIELDS}


def test_defaults_are_diffusers_signature():
    params = inspect.signature(EulerDiscreteScheduler.__init__).parameters
    assert EULER_DEFAULTS == {k: p.default for k, p in params.items() if k != "self"}
    assert FIELDS == list(EULER_DEFAULTS)  # every diffusers argument is a field, in its order


def test_dataclass_defaults_are_svds_file():
    """Presets and to_dict rely on SchedulerConfig() being SVD's scheduler."""
    assert SchedulerConfig.from_dict(SVD_SCHEDULER_JSON) == SchedulerConfig()


JSON_CASES = {
    "svd": SVD_SCHEDULER_JSON,
    "empty": {},
    "svd_without_karras_and_prediction": {
        k: v for k, v in SVD_SCHEDULER_JSON.items() if k not in ("use_karras_sigmas", "prediction_type")
    },
    "null_range": {**SVD_SCHEDULER_JSON, "sigma_min": None, "sigma_max": None},
    "trained_betas": {"trained_betas": [0.001, 0.002, 0.004], "num_train_timesteps": 3},
    "every_key": {**EULER_DEFAULTS, "rescale_betas_zero_snr": True, "final_sigmas_type": "sigma_min"},
}


@pytest.mark.parametrize("name", JSON_CASES)
def test_from_dict_reads_what_diffusers_reads(name):
    """Missing keys take diffusers' class defaults (not SVD's), explicit nulls stay null."""
    d = json.loads(json.dumps(JSON_CASES[name]))  # as read from disk
    ours = SchedulerConfig.from_dict(d)
    assert dataclasses.asdict(ours) == _fields_of(EulerDiscreteScheduler.from_config(d).config)


def test_missing_keys_are_not_svds_values():
    """The parity bug this guards: a file without these keys is NOT SVD's v-prediction Karras schedule."""
    cfg = SchedulerConfig.from_dict({"beta_schedule": "scaled_linear"})
    assert cfg.prediction_type == "epsilon" and cfg.use_karras_sigmas is False
    assert cfg.sigma_min is None and cfg.sigma_max is None
    assert cfg.timestep_type == "discrete" and cfg.timestep_spacing == "linspace" and cfg.steps_offset == 0
    assert SchedulerConfig.from_dict({**SVD_SCHEDULER_JSON, "sigma_max": None}).sigma_max is None


@pytest.mark.parametrize("name", SCHEDULER_CONFIGS)
def test_to_dict_round_trips_through_diffusers(name):
    cfg = scheduler_config(name)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert _fields_of(EulerDiscreteScheduler.from_config(d).config) == dataclasses.asdict(cfg)
    assert SchedulerConfig.from_dict(d) == cfg


def test_trained_betas_round_trip_as_a_tuple():
    cfg = dataclasses.replace(SchedulerConfig(), trained_betas=(0.001, 0.002))
    back = SchedulerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.trained_betas, tuple)
    hash(back)  # frozen configs stay hashable
