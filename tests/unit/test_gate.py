"""The training budget in steps and the quality gate: a run below the floor trains on, then says so."""

import json

import pytest
from shelfsight.train.contrastive import TrainConfig, train
from shelfsight.train.gate import VAL_RECALL, saved_verdict, train_checked
from shelfsight.train.schedule import RECIPE_STEPS, Budget


def _config(catalog_dir, tiny_model_dir, out, **kw):
    return TrainConfig(
        catalog=str(catalog_dir / "catalog.csv"), out=str(out), init=str(tiny_model_dir), batch_size=16, **kw
    )


def test_step_budget_runs_exactly_that_many_steps(catalog_dir, tiny_model_dir, tmp_path):
    # 48 products give 2-3 steps an epoch at batch 16: a step budget crosses epochs and stops mid-way.
    metrics = train(_config(catalog_dir, tiny_model_dir, tmp_path / "m", steps=7), progress=False)
    assert metrics["steps"] == 7


def test_no_budget_means_the_recipes_steps():
    budget = Budget.start(minutes=None, epochs=None, steps_per_epoch=33)
    assert budget.seconds is None and budget.total_steps == RECIPE_STEPS
    assert budget.spent(RECIPE_STEPS // 2) == pytest.approx(0.5, abs=0.01)
    timed = Budget.start(minutes=2.0, epochs=None, steps_per_epoch=33)
    assert timed.seconds == 120 and Budget.start(None, None, 33, steps=5).total_steps == 5


def test_below_the_floor_trains_on_then_says_so(catalog_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "weak"
    verdict = train_checked(_config(catalog_dir, tiny_model_dir, out, steps=3), floor=1.01, progress=False)
    assert not verdict.passed and verdict.steps == 6  # the asked 3, then 3 more from that model
    assert "training on for 3 more steps" in capsys.readouterr().out
    text = verdict.explain()
    assert "BELOW" in text and "after 6 training steps" in text and "3 asked for" in text and "load average" in text
    assert saved_verdict(out) == verdict  # kept with the model, so a cached model still warns
    assert json.loads((out / "training.json").read_text())[VAL_RECALL] == verdict.val_recall
    assert not (tmp_path / "weak.more").exists()


def test_above_the_floor_trains_once(catalog_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "fine"
    verdict = train_checked(_config(catalog_dir, tiny_model_dir, out, steps=3), floor=0.0, progress=False)
    assert verdict.passed and verdict.steps == 3 and "meets the floor" in verdict.explain()
    assert json.loads((out / "shelfsight_model.json").read_text())["quality"]["passed"] is True
