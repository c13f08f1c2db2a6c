"""A run's training curves: ``history.csv`` and ``history.png`` in the run folder, rewritten at each checkpoint.

One row per logged step (every checkpoint, and every validation): the iteration, the mean
training loss since the last checkpoint, the learning rate, the separation of the training
draws (``train_auc``) and the validation metrics where they were measured. The rows come
from what the checkpoint keeps (``loss_log`` and ``history``), so a resumed run's files hold
the whole run, not only the part since ``--resume``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tomofield.io import atomic_write

#: The file names in the run folder.
HISTORY_CSV = "history.csv"
HISTORY_PNG = "history.png"
#: The first columns, in this order; validation metrics follow, sorted.
LEADING = ("iteration", "train_loss", "lr", "train_auc")


def curve_rows(loss_log: Sequence[dict[str, Any]], history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``history.csv``: the checkpoints' ``loss_log`` and the validations' ``history``, by iteration.

    A validation's own ``loss`` (one step's) is left out: ``train_loss`` is the mean over the
    steps since the last checkpoint. Missing values are empty.

    >>> curve_rows([{"iteration": 10, "train_loss": 0.7, "lr": 1e-3}], [{"iteration": 10, "loss": 0.9, "val_auc": 0.8}])
    [{'iteration': 10, 'train_loss': 0.7, 'lr': 0.001, 'val_auc': 0.8}]
    """
    rows: dict[int, dict[str, Any]] = {}
    for source in (loss_log, history):
        for record in source:
            it = int(record["iteration"])
            row = rows.setdefault(it, {"iteration": it})
            row.update({k: v for k, v in record.items() if k not in ("iteration", "loss") and k not in row})
    return [rows[i] for i in sorted(rows)]


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The CSV's header: :data:`LEADING`, then every other key of the rows, sorted."""
    keys = {k for r in rows for k in r}
    return [k for k in LEADING if k in keys or k in ("iteration", "train_loss")] + sorted(keys - set(LEADING))


def write_curves(run_dir: str | Path, loss_log: Sequence[dict[str, Any]], history: Sequence[dict[str, Any]]) -> Path:
    """Write ``history.csv`` and ``history.png`` into ``run_dir`` (each atomically); returns the CSV's path."""
    run_dir = Path(run_dir)
    rows = curve_rows(loss_log, history)
    header = columns(rows)

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header, restval="")
            out.writeheader()
            out.writerows(rows)

    path = atomic_write(run_dir / HISTORY_CSV, write_csv, overwrite=True)
    atomic_write(run_dir / HISTORY_PNG, lambda tmp: _plot(rows, tmp), overwrite=True)
    return path


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["iteration"], float(r[key])) for r in rows if key in r and math.isfinite(float(r[key]))]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss (and learning rate) above, what separates the classes below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(*_series(rows, "train_loss"), "o-", color="#1f4e79", ms=3, label="training loss (mean since last)")
    top.set_ylabel("loss")
    lr = top.twinx()
    lr.plot(*_series(rows, "lr"), color="#999", lw=1, label="learning rate")
    lr.set_ylabel("learning rate", color="#777")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    top.legend(loc="upper right", fontsize=8)
    drawn = False
    series = (("train_auc", "s--"), ("val_auc", "o-"), ("val_balanced_accuracy", "^-"), ("val_localisation", "D-"))
    for key, style in series:
        x, y = _series(rows, key)
        if x:
            bottom.plot(x, y, style, ms=3, label=key.replace("_", " "))
            drawn = True
    for key in ("val_pearson",):
        x, y = _series(rows, key)
        if x:
            bottom.plot(x, y, "o-", ms=3, label="val Pearson r")
            drawn = True
    if drawn:
        bottom.axhline(0.5, color="#c00", lw=0.8, ls=":", label="chance (AUC)")
        bottom.set_ylim(0, 1.02)
        bottom.legend(loc="lower right", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no separation measured yet", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_xlabel("iteration")
    bottom.set_ylabel("separation")
    top.set_title("training curves (history.csv)", loc="left", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
