"""Behaviour kept: every method's first two steps and the main job's metrics, as recorded.

``tests/goldens/goldens.json`` holds, for every method config and the options that change
the episode or the losses (``tests/goldens/record.py``: ``CASES``, ``TABLE_CASES``), the
loss terms of the first two steps and a digest of the state after them (CPU, float32,
seed 0), and the main job's evaluated metrics (``experiment=digits_simclr`` shortened to
30 steps). A change meant to keep behaviour must keep them.

On the machine that recorded them (``machine`` in the file: CPU model and torch version)
the values must be identical, bit for bit. Elsewhere, float32 kernels of another
instruction set (AVX2 vs AVX-512) add in another order: steps then agree within 1e-4
relative, and each accuracy within 0.01 (a test image or two whose nearest neighbours
tie up to rounding). MetAug's step differentiates through its first gradient, which
amplifies that reordering: its state digest agrees within 1e-3 (measured: 1.3e-4 between
the recording Xeon and an AMD EPYC, both AVX-512, on the same commit).
"""

from __future__ import annotations

import json

import pytest

from .goldens import record

RECORDED = json.loads(record.GOLDENS.read_text())
SAME_MACHINE = RECORDED["machine"] == record.machine()


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    return record.colour_npz(tmp_path_factory.mktemp("goldens"))


SECOND_ORDER = ("metaug", "metaug_only_oucl")


@pytest.mark.parametrize("name", [*record.CASES, *record.TABLE_CASES])
def test_the_first_two_steps_are_the_recorded_ones(name, colour_data, tmp_path):
    measured = record.first_two_steps(record.case_overrides(name, colour_data), tmp_path)
    rel = 0.0 if SAME_MACHINE else 1e-3 if name in SECOND_ORDER else 1e-4
    diff = record.differences(RECORDED["steps"][name], measured, name, rel=rel)
    assert diff == [], "\n".join(diff)


def test_the_main_job_evaluates_as_recorded(tmp_path):
    measured = record.main_job(tmp_path)
    recorded = RECORDED["main_job"]
    assert measured.keys() == recorded.keys()
    if SAME_MACHINE:
        assert measured == recorded
    else:
        assert all(abs(measured[k] - recorded[k]) <= 0.01 for k in recorded), (measured, recorded)


def test_a_changed_value_is_named():
    recorded = {"steps": {"simclr": {"terms": [{"nt_xent": 1.0}], "state": {"sum": 2.0}}}}
    measured = {"steps": {"simclr": {"terms": [{"nt_xent": 1.0 + 1e-7}], "state": {"sum": 2.0}}}}
    assert record.differences(recorded, measured) == ["/steps/simclr/terms[0]/nt_xent: 1.0000001, recorded 1.0"]
    assert record.differences(recorded, measured, rel=1e-6) == []
