"""The monitor of a training run: what counts as not learning, and what does not."""

from __future__ import annotations

import math

import pytest
import torch

from tomofield.train.monitor import CONSTANT_STD, SEPARATION_WINDOW, TRAIN_CHANCE_AUC, Monitor, auc

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


def feed_draws(monitor: Monitor, scores, labels, every=10, spread=0.5, loss=0.9):
    """One step per pair of draws, a checkpoint every ``every`` steps; the problems raised."""
    raised = []
    for i in range(len(scores) // 2):
        monitor.step(loss, spread, scores[2 * i : 2 * i + 2], labels[2 * i : 2 * i + 2])
        if (i + 1) % every == 0:
            raised += monitor.checkpoint(i + 1)
    return raised


def draws(n, separation, seed=0):
    """``n`` pairs of (positive, negative) scores: normal noise, the positives shifted by ``separation``."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * n, generator=gen)
    labels = [1.0, 0.0] * n
    return [float(v) + separation * y for v, y in zip(z, labels, strict=True)], labels


def test_the_auc_counts_ties_as_half():
    assert auc([1.0, 1.0], [1, 0]) == 0.5
    assert auc([2.0, 1.0, 0.0], [1, 0, 0]) == 1.0
    assert math.isnan(auc([1.0, 2.0], [1, 1]))


def test_training_volumes_that_do_not_separate_are_flagged_once_past_half_the_run():
    m = Monitor.for_loss("classification", "bce", iterations=400, lr=1e-3, chance=0.95)
    raised = feed_draws(m, *draws(400, 0.0))
    assert [(p.kind, p.iteration) for p in raised] == [("train-at-chance", 300)]  # not before 3/4, once
    assert f"of the last {SEPARATION_WINDOW} training volumes" in raised[0].message
    assert not m.learned and m.record()["unresolved"] == ["train-at-chance"]


def test_training_volumes_that_separate_are_a_run_that_learns_whatever_its_loss():
    m = Monitor.for_loss("classification", "bce", iterations=400, lr=1e-3)
    assert feed_draws(m, *draws(400, 1.5), loss=math.log(2)) == []  # a loss at ln 2 is no verdict
    assert m.learned and m.separation() > TRAIN_CHANCE_AUC


def test_a_run_that_separates_late_clears_the_problem_but_it_stays_recorded():
    m = Monitor.for_loss("classification", "bce", iterations=400, lr=1e-3)
    s0, y0 = draws(320, 0.0)
    s1, y1 = draws(80, 3.0, seed=1)
    raised = feed_draws(m, s0 + s1, y0 + y1)
    assert [p.kind for p in raised] == ["train-at-chance"]
    assert m.learned and m.record()["problems"] == [vars(raised[0])]


def test_with_a_validation_set_the_training_volumes_are_not_the_judge():
    m = Monitor.for_loss("classification", "bce", iterations=400, lr=1e-3, validated=True)
    assert feed_draws(m, *draws(400, 0.0)) == []
    assert m.learned


def test_a_run_from_before_keeps_its_record_but_a_kind_no_longer_judged_cannot_hold():
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    old = {"problems": [{"iteration": 30, "kind": "loss-at-chance", "message": "m"}], "unresolved": ["loss-at-chance"]}
    m.restore(old)
    assert m.learned and m.record()["problems"] == old["problems"]


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
    assert m.validation(74, metrics) == []  # within the first three quarters nothing is judged
    raised = m.validation(75, metrics)
    assert [p.kind for p in raised] == (["val-at-chance"] if flagged else [])
    assert m.learned is not flagged


def test_a_later_good_validation_clears_it_and_restore_continues_a_record():
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    m.validation(75, {"val_balanced_accuracy": 0.5, "val_auc": 0.5})
    saved = m.record()
    again = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3)
    again.restore(saved)
    assert again.record() == saved and not again.learned
    again.validation(90, {"val_balanced_accuracy": 0.9, "val_auc": 0.95})
    assert again.learned and len(again.record()["problems"]) == 1


def test_a_loss_worse_than_a_constant_guess_points_at_the_learning_rate():
    m = Monitor.for_loss("classification", "bce", iterations=40, lr=1.0, validated=True)
    raised = feed(m, [3.0, 0.1, 8.0, 0.2] * 10)
    assert [p.kind for p in raised] == ["worse-than-chance"]
    assert "--lr 0.1 (now 1)" in raised[0].message
