"""The monitor of a training run: what counts as not learning, and what does not."""

from __future__ import annotations

import math

import pytest

from tomofield.train.monitor import CHANCE_TOL, CONSTANT_STD, Monitor

LN2 = math.log(2)


def feed(monitor: Monitor, losses, spread=0.5, every=10):
    """Steps with these losses, a checkpoint every ``every`` steps; the problems raised."""
    raised = []
    for i, loss in enumerate(losses, start=1):
        monitor.step(loss, spread)
        if (p := monitor.diverged(i, loss)) is not None:
            raised.append(p)
        if i % every == 0:
            raised += monitor.checkpoint(i)
    return raised


def test_a_loss_at_chance_after_the_first_quarter_is_flagged_with_advice():
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    raised = feed(m, [LN2 * (1 + CHANCE_TOL / 2)] * 100)
    assert [p.kind for p in raised] == ["loss-at-chance"]  # once, not at every checkpoint
    assert raised[0].iteration == 30  # the first checkpoint at or past a quarter of the run
    assert "--lr" in raised[0].message and "0.6931" in raised[0].message
    assert not m.learned and m.record()["unresolved"] == ["loss-at-chance"]


def test_an_early_plateau_that_ends_is_recorded_but_the_run_learned():
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    raised = feed(m, [LN2] * 40 + [0.4] * 60)
    assert [p.kind for p in raised] == ["loss-at-chance"]
    assert m.learned
    assert m.record() == {"learned": True, "unresolved": [], "problems": [vars(raised[0])]}


def test_a_loss_just_off_chance_is_not_flagged():
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    assert feed(m, [LN2 * (1 - 2 * CHANCE_TOL)] * 100) == []
    assert m.learned


def test_regression_has_no_chance_loss_but_constant_outputs_are_flagged():
    m = Monitor.for_loss("regression", "mse", iterations=50, lr=1e-3)
    raised = feed(m, [0.7] * 50, spread=CONSTANT_STD / 2)
    assert [p.kind for p in raised] == ["constant-output"]
    assert raised[0].iteration == 10  # constant outputs are wrong from the start, no grace
    assert not m.learned


def test_a_loss_that_is_not_finite_is_divergence():
    m = Monitor.for_loss("classification", "bce", iterations=50, lr=10.0)
    raised = feed(m, [0.9, 2.0, float("nan")])
    assert [(p.kind, p.iteration) for p in raised] == [("diverged", 3)]
    assert "lower --lr (now 10)" in raised[0].message


@pytest.mark.parametrize(
    ("metrics", "flagged"),
    [
        ({"val_balanced_accuracy": 0.5, "val_auc": 0.5}, True),
        ({"val_balanced_accuracy": 0.625, "val_auc": 0.58}, True),  # a lucky threshold on scores at chance
        ({"val_balanced_accuracy": 0.55}, True),  # no AUC: the accuracy decides
        ({"val_balanced_accuracy": 0.6}, False),
        ({"val_balanced_accuracy": float("nan")}, True),
        ({"val_balanced_accuracy": 0.5, "val_auc": 0.95}, False),  # separates; the threshold did not transfer
        ({"val_balanced_accuracy": 0.8, "val_auc": 0.9}, False),
        ({"val_pearson": 0.05}, True),
        ({"val_pearson": 0.7}, False),
    ],
)
def test_validation_at_chance(metrics, flagged):
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    assert m.validation(40, metrics) == []  # within the first half nothing is judged
    raised = m.validation(50, metrics)
    assert [p.kind for p in raised] == (["val-at-chance"] if flagged else [])
    assert m.learned is not flagged


def test_a_later_good_validation_clears_it_and_restore_continues_a_record():
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    m.validation(50, {"val_balanced_accuracy": 0.5, "val_auc": 0.5})
    saved = m.record()
    again = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    again.restore(saved)
    assert again.record() == saved and not again.learned
    again.validation(80, {"val_balanced_accuracy": 0.9, "val_auc": 0.95})
    assert again.learned and len(again.record()["problems"]) == 1


def test_a_loss_worse_than_a_constant_guess_points_at_the_learning_rate():
    m = Monitor.for_loss("classification", "bce", iterations=40, lr=1.0)
    raised = feed(m, [3.0, 0.1, 8.0, 0.2] * 10)
    assert [p.kind for p in raised] == ["worse-than-chance"]
    assert "--lr 0.1 (now 1)" in raised[0].message
