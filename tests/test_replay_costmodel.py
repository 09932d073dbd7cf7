"""The GPU cost model: formulas, token scaling, and clear errors for bad coefficient files."""

from __future__ import annotations

import json

import pytest

from cachewise.replay.costmodel import CostModel, CostModelError, load_cost_model

COEFFS = {"prefill": {"a0": 0.01, "a_tok": 1e-4, "a_ctx": 1e-8}, "decode": {"b0": 0.02, "b_seq": 1e-3, "b_ctx": 1e-6}}


@pytest.fixture
def model(tmp_path) -> CostModel:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"measured_on": "test", "shapes": {"s": COEFFS}}))
    return load_cost_model(path, "s")


def test_formulas(model: CostModel) -> None:
    assert model.prefill_time(1000, 3000) == pytest.approx(0.01 + 0.1 + 1e-8 * 1000 * 3500)
    assert model.decode_step(8, 10000) == pytest.approx(0.02 + 0.008 + 0.01)
    assert model.prefill_time(0, 100) == 0.0 and model.decode_step(0, 0) == 0.0


def test_step_time_sums_chunks_and_scales_tokens(model: CostModel) -> None:
    step = model.step_time([(10, 0), (5, 20)], [100, 300], 4, 64, [])
    expected = model.prefill_time(40, 0) + model.prefill_time(20, 80) + 4 * model.decode_step(2, 1600)
    assert step == pytest.approx(expected)


def test_scaled_step_costs_the_real_steps_it_stands_for(model: CostModel) -> None:
    """At token_scale 4 with a real budget of 16 tokens, a 10-replay-token chunk is 40 trace tokens: 3 real
    chunks (3 x a0, the context term as one chunk's); the request it completes samples 4 trace tokens, 3
    of them in decode steps it joins beside the 2 decoding requests."""
    step = model.step_time([(10, 20)], [100, 300], 4, 16, [30])
    prefill = model.prefill_time(40, 80) + 2 * model.a0
    decode = 4 * model.decode_step(2, 1600) + 3 * (model.decode_step(3, 4 * 430) - model.decode_step(2, 1600))
    assert step == pytest.approx(prefill + decode)
    by_hand = 3 * 0.01 + 1e-4 * 40 + 1e-8 * 40 * 100 + 4 * (0.02 + 2e-3 + 1.6e-3) + 3 * (1e-3 + 4 * 30 * 1e-6)
    assert step == pytest.approx(by_hand)
    # token_scale 1: the formulas as they stand (one chunk, nothing joins)
    assert model.step_time([(10, 20)], [100, 300], 1, 16, [30]) == pytest.approx(
        model.prefill_time(10, 20) + model.decode_step(2, 400)
    )


def test_shipped_coefficients_load() -> None:
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "replay" / "cost_coefficients.json"
    assert load_cost_model(shipped, "llama-3.1-8b-bf16").prefill_time(1024, 0) > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"c\.json:1: not valid JSON"),
        (json.dumps({"shapes": {}}), r"no shape 's'"),
        (json.dumps({"shapes": {"s": {"prefill": COEFFS["prefill"], "decode": {"b0": 1}}}}), r"decode lacks 'b_seq'"),
        (
            json.dumps({"shapes": {"s": {**COEFFS, "prefill": {**COEFFS["prefill"], "a0": -1}}}}),
            r"a0 = -1.0 is not >= 0",
        ),
    ],
)
def test_bad_files_name_the_problem(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(CostModelError, match=message):
        load_cost_model(path, "s")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CostModelError, match="not found"):
        load_cost_model(tmp_path / "absent.json", "s")
