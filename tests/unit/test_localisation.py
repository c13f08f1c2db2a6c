"""Where a run's slice scores rise: the lesion slices of validation positives against the rest (issue 27)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from tomofield.dataset import read_dataset
from tomofield.errors import InputError, NotLearningWarning
from tomofield.io import affine_for_spacing, save_nifti
from tomofield.train import TrainConfig, Trainer, load_cases
from tomofield.train.monitor import LOCALISATION_CHANCE, Monitor
from tomofield.train.validation import localisation, scores_and_localisation, stack_logits


class SliceMax(nn.Module):
    """A slice's logit is ``sign`` times its brightest pixel: on a volume that is its own mask, > 1/2 where it cuts."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign * x.amax(dim=(1, 2, 3))[:, None]


def resolved(**kw) -> object:
    base = dict(slice_size=16, val_directions=3, val_slices=9, geometry="physical", extent="unit")
    return TrainConfig(**{**base, **kw}).resolved([(16, 16, 16)])


@pytest.fixture
def own_mask(tmp_path) -> list:
    """One positive whose image is its lesion mask (a ball), one negative of zeros, loaded with masks."""
    zz, yy, xx = np.mgrid[:16, :16, :16]
    ball = ((zz - 6) ** 2 + (yy - 9) ** 2 + (xx - 7) ** 2 <= 6).astype(np.float32)
    for name, data in (("pos.nii.gz", ball), ("mask.nii.gz", ball), ("neg.nii.gz", 0 * ball)):
        save_nifti(tmp_path / name, torch.as_tensor(data), affine_for_spacing((2, 1, 1)))
    (tmp_path / "v.csv").write_text("image,label,mask\npos.nii.gz,1,mask.nii.gz\nneg.nii.gz,0,\n")
    return load_cases(read_dataset(tmp_path / "v.csv"), "physical", torch.device("cpu"), "none", masks=True)


def test_a_slice_cuts_a_lesion_where_the_mask_sampled_as_the_image_is_exceeds_one_half(own_mask):
    pos, neg = own_mask
    assert pos.mask is not None and neg.mask is None  # a negative's mask is not loaded
    g, weight, cut = stack_logits(SliceMax(), pos, resolved())
    assert g.shape == weight.shape == cut.shape == (3, 9)
    assert torch.equal(cut, g > 0.5)  # the same points sample image and mask
    assert cut.any() and not cut.all()
    assert stack_logits(SliceMax(), neg, resolved())[2] is None


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_localisation_is_one_where_lesion_slices_outscore_the_rest_and_zero_where_they_fall(own_mask, sign, expected):
    scores, loc, n = scores_and_localisation(SliceMax(sign), own_mask, resolved())
    assert loc == expected and n == 1 and scores.shape == (2,)


def test_a_constant_score_localises_as_by_chance_and_a_volume_without_both_kinds_of_slice_is_left_out():
    cut = torch.tensor([[True, False, False, True]])
    assert localisation(torch.zeros(1, 4), cut) == 0.5
    assert np.isnan(localisation(torch.arange(4.0)[None], torch.zeros(1, 4, dtype=torch.bool)))


def test_a_mask_on_another_grid_than_its_image_is_refused(tmp_path):
    save_nifti(tmp_path / "i.nii.gz", torch.zeros(16, 16, 16), affine_for_spacing((1, 1, 1)))
    save_nifti(tmp_path / "m.nii.gz", torch.zeros(16, 16, 8), affine_for_spacing((1, 1, 1)))
    (tmp_path / "v.csv").write_text("image,label,mask\ni.nii.gz,1,m.nii.gz\n")
    with pytest.raises(InputError, match=r"m.nii.gz' has the grid \(8, 16, 16\) \(i, j, k\), its image \(16, 16, 16\)"):
        load_cases(read_dataset(tmp_path / "v.csv"), "physical", torch.device("cpu"), masks=True)


@pytest.mark.parametrize(
    "loc, said",
    [
        (0.2, "score lower than the slices near them (localisation 0.200; 0.5 is chance)"),
        (LOCALISATION_CHANCE, "score no higher than the slices near them"),
    ],
)
def test_slice_scores_that_miss_the_lesions_are_not_learning_whatever_the_volume_auc(loc, said):
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3, validated=True)
    metrics = {"val_auc": 0.85, "val_balanced_accuracy": 0.8, "val_localisation": loc, "val_localised_volumes": 3}
    assert m.validation(50, metrics) == []  # not judged before three quarters
    (problem,) = m.validation(80, metrics)
    assert (
        problem.kind == "not-localising" and said in problem.message and "3 validation positive(s)" in problem.message
    )
    assert "--negative-share 0.5" in problem.message and not m.learned
    record = m.record()
    assert record["localisation"] == "checked"
    again = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3, validated=True)
    again.restore(record)
    assert again.record() == record
    again.validation(90, metrics | {"val_localisation": 0.85})
    assert again.learned and again.record()["localisation"] == "checked"


def test_without_masks_the_verdict_says_the_localisation_was_not_checked():
    m = Monitor.for_loss("classification", "bce", iterations=100, lr=1e-3, validated=True)
    assert m.validation(80, {"val_auc": 0.9, "val_balanced_accuracy": 0.8}) == []
    assert m.learned and m.record()["localisation"] == "unchecked"
    assert "localisation" not in Monitor.for_loss("regression", "mse", iterations=10, lr=1e-3).record()


def test_a_run_validated_on_positives_with_masks_records_where_its_slices_rise(dataset, tmp_path):
    cfg = TrainConfig(
        iterations=8, slices_per_volume=4, slice_size=16, checkpoint_every=4, val_every=4, seed=0, val_directions=2
    )
    cfg = replace(cfg, val_slices=5)
    run = tmp_path / "run"
    with warnings.catch_warnings():  # 8 steps learn nothing; the monitor may say so
        warnings.simplefilter("ignore", NotLearningWarning)
        result = Trainer(dataset, run, cfg, val_csv=dataset, device="cpu").fit()
    validations = result["history"]
    assert [r["val_localised_volumes"] for r in validations] == [3, 3]  # the three positives have masks
    assert all(0.0 <= r["val_localisation"] <= 1.0 for r in validations)
    assert json.loads((run / "config.json").read_text())["diagnostics"]["localisation"] == "checked"
    assert "val_localisation" in (run / "history.csv").read_text().splitlines()[0]


def test_a_lesion_slice_is_compared_with_the_slices_near_it_not_the_adjacent_ones_nor_the_far_ones():
    z = torch.zeros(1, 12)
    z[0, 6] = 1.0  # the lesion slice
    z[0, 5] = z[0, 7] = 9.0  # adjacent: may cut the lesion's rim, left out
    z[0, 0] = z[0, 11] = 5.0  # 5-6 positions away: farther than NEIGHBOURS + 1 = 4, left out
    cut = torch.zeros(1, 12, dtype=torch.bool)
    cut[0, 6] = True
    assert localisation(z, cut) == 1.0  # wins against positions 2, 3, 4, 8, 9, 10 (all 0)
    z[0, 2] = 3.0  # 4 positions away: counts
    assert localisation(z, cut) == 5 / 6


def test_noise_augmentation_adds_zero_mean_noise_of_the_drawn_strength_and_is_not_drawn_when_off(own_mask):
    from tomofield.train.slicing import augmented_slices

    pos = own_mask[0]
    off = resolved(slices_per_volume=256, scale_jitter=0.0, translation=0.0, intensity_jitter=0.0)
    on = resolved(slices_per_volume=256, scale_jitter=0.0, translation=0.0, intensity_jitter=0.0, noise=0.6)
    clean = augmented_slices(pos, off, torch.Generator().manual_seed(3))
    assert torch.equal(clean, augmented_slices(pos, off, torch.Generator().manual_seed(3)))
    noisy = augmented_slices(pos, on, torch.Generator().manual_seed(3))
    diff = noisy - clean  # the same slices: noise draws come after the slices' own
    # sigma ~ U(0, 0.6) per slice: E[sigma^2] = 0.6^2 / 3 = 0.12; 256 slices of 256 pixels
    assert abs(float(diff.mean())) < 0.01
    assert float(diff.pow(2).mean()) == pytest.approx(0.12, rel=0.25)
