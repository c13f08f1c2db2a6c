"""``tomofield calibrate``: record the operating point of a run made before training recorded one."""

from __future__ import annotations

from pathlib import Path

import torch

from tomofield import checkpoint as ck
from tomofield.calibration import FALSE_POSITIVE_RATE, OperatingPoint
from tomofield.dataset import read_dataset
from tomofield.engine import resolve_device
from tomofield.errors import InputError
from tomofield.train.config import TrainConfig
from tomofield.train.slicing import load_cases
from tomofield.train.validation import negatives_operating_point


def calibrate_run(
    run_dir: str | Path,
    dataset: str | Path,
    false_positive_rate: float = FALSE_POSITIVE_RATE,
    device: str = "auto",
) -> OperatingPoint:
    """Take the operating point of run ``run_dir`` on the negatives of ``dataset`` and record it in the run.

    The slices are the run's validation stacks (:func:`~tomofield.train.validation.stack_logits`,
    its ``val_directions`` and ``val_slices``) at its slice size, geometry, extent and
    intensity normalisation. ``config.json`` and
    the weights' metadata are rewritten atomically, the weights unchanged; an operating point
    recorded before is replaced (the new one names its source).

    Raises:
        InputError: not a run directory, a run that is not a classifier, or a dataset with
            too few negatives.
    """
    if not ck.is_run_dir(run_dir):
        raise InputError(
            f"{str(run_dir)!r} is not a run directory (config.json and model.safetensors of tomofield train)"
        )
    run = ck.RunDir(run_dir)
    cfg = run.config
    if cfg.get("task", "classification") != "classification" or cfg.get("teacher"):
        raise InputError(
            f"{str(run_dir)!r} is a {cfg.get('task')} run; an operating point is a classifier's slice logit"
        )
    cases = [c for c in read_dataset(Path(dataset)) if c.label == 0]
    if not cases:
        raise InputError(f"{str(dataset)!r} has no negative volumes (label 0); an operating point is taken from them")
    dev = resolve_device(device)
    trained = cfg.get("training", {})
    stacks = {k: trained[k] for k in ("val_directions", "val_slices") if trained.get(k) is not None}
    train_cfg = TrainConfig(
        slice_size=cfg["slice_size"], geometry=cfg["geometry"], extent=cfg["extent"], **stacks
    ).resolved()
    vols = load_cases(cases, cfg["geometry"], dev, cfg.get("intensity", "none"))
    model = run.build_encoder(int(vols[0].data.shape[0])).to(dev).eval()
    point = negatives_operating_point(model, vols, train_cfg, str(Path(dataset).resolve()), false_positive_rate)
    weights = {k: v.to(torch.device("cpu")) for k, v in run.weights().items()}
    ck.write_run(
        run_dir, weights, {k: v for k, v in cfg.items() if k != "format"} | {"operating_point": point.to_json()}
    )
    return point
