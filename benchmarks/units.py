"""``python -m benchmarks.units``: does a heatmap's scale follow the sampling? Thresholds carried across (L, M).

One trained run, one dataset with masks. Heatmaps of every volume (logit head, plain
reconstruction) at several settings ``(L, M, filter, window)``, kept in ``--out`` as
``.npz`` (resumable). For each setting:

* the mean over the positives of the heatmap's median inside the lesion mask and of its
  peak, and the standard deviation of the negatives' heatmaps (the null's spread);
* the mean Dice and lesion-wise F1 over the positives, and how many negatives get a
  non-empty mask, at the protocol's thresholds tuned on the setting's own heatmaps
  (:func:`tomofield.evaluation.tune_thresholds`, every volume: in-sample), and at those
  tuned on the reference setting's (``--reference``): what a report's thresholds give
  when carried to another setting.

Settings are written ``L-M`` (the ``tomo`` filter), ``L-M-sgW`` (``tomo-sg`` with a
window of ``W`` slices: a second derivative over ``W - 1`` slice spacings; ``W`` growing
with ``M - 1`` keeps that width fixed) or ``L-M-wX`` (``tomo-width`` of width ``X``, the
same fixed by the filter itself)::

    python -m benchmarks.units --run RUN --data DATA/dataset.csv --out OUT \\
        --settings 128-16 128-32 128-48 64-32 256-32 --reference 128-32
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path


def parse_setting(text: str) -> tuple[int, int, dict]:
    """``L-M``, ``L-M-sgW`` or ``L-M-wX`` as ``(L, M, engine filter arguments)``.

    >>> parse_setting("128-32")
    (128, 32, {'filter': 'tomo'})
    >>> parse_setting("128-48-sg7")
    (128, 48, {'filter': 'tomo-sg', 'filter_options': {'window': 7}})
    >>> parse_setting("64-32-w0.25")
    (64, 32, {'filter': 'tomo-width', 'filter_options': {'width': 0.25}})
    """
    parts = text.split("-")
    if len(parts) == 2:
        return int(parts[0]), int(parts[1]), {"filter": "tomo"}
    if len(parts) == 3 and parts[2].startswith("sg"):
        return int(parts[0]), int(parts[1]), {"filter": "tomo-sg", "filter_options": {"window": int(parts[2][2:])}}
    if len(parts) == 3 and parts[2].startswith("w"):
        return int(parts[0]), int(parts[1]), {"filter": "tomo-width", "filter_options": {"width": float(parts[2][1:])}}
    raise SystemExit(f"setting {text!r} is not L-M, L-M-sgW or L-M-wX (e.g. 128-32, 128-48-sg7, 128-32-w0.25)")


def heatmaps(run: str, csv: Path, out: Path, setting: str) -> list:
    """Every volume's heatmap at ``setting`` (:func:`parse_setting`), made once and kept in ``out``."""
    import numpy as np

    from tomofield.dataset import read_dataset
    from tomofield.engine import Engine
    from tomofield.io import load_volume

    path = out / f"{setting}.npz"
    cases = read_dataset(csv)
    if not path.exists():
        L, M, extra = parse_setting(setting)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = Engine(weights=run, head="logit", reconstructor="fbp", directions=L, slices=M, **extra)
            heats = [engine.run(load_volume(list(c.images))).data[0].numpy() for c in cases]
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, *heats)
        print(f"{setting}: {len(heats)} heatmaps in {time.perf_counter() - t0:.0f} s", flush=True)
    stored = np.load(path)
    return [stored[f"arr_{i}"] for i in range(len(cases))]


def scores(heats: list, labels: list[int], masks: list, thresholds: dict) -> tuple[float, float, int]:
    """Mean Dice and F1 over the positives, and the negatives with a non-empty mask, at ``thresholds``."""
    import numpy as np

    from tomofield.evaluation import binarize, lesion_scores

    dice, f1, false = [], [], 0
    for h, y, m in zip(heats, labels, masks, strict=True):
        b = binarize(h, thresholds["tau_prime"], thresholds["tau"])
        if y == 1:
            s = lesion_scores(b, m)
            dice.append(s["dice"])
            f1.append(s["f1"])
        else:
            false += int(b.any())
    return float(np.mean(dice)), float(np.mean(f1)), false


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.units", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", required=True, help="a run directory of tomofield train")
    p.add_argument("--data", type=Path, required=True, help="a dataset CSV whose positives have masks")
    p.add_argument("--out", type=Path, required=True, help="folder for the heatmaps (resumable)")
    p.add_argument("--settings", nargs="+", default=["128-16", "128-32", "128-48", "64-32", "256-32"])
    p.add_argument("--reference", default="128-32", help="the setting whose thresholds are carried to the others")
    a = p.parse_args(argv)

    import numpy as np

    from tomofield.dataset import read_dataset
    from tomofield.evaluation import tune_thresholds
    from tomofield.io import load_volume

    cases = read_dataset(a.data)
    labels = [int(c.label) for c in cases]
    masks = [load_volume([c.mask]).data[0].numpy() > 0 if c.label == 1 and c.mask else None for c in cases]
    if any(y == 1 and m is None for y, m in zip(labels, masks, strict=True)):
        raise SystemExit(f"{a.data}: every positive needs a mask")
    settings = list(dict.fromkeys([a.reference, *a.settings]))
    heats = {s: heatmaps(a.run, a.data, a.out, s) for s in settings}
    carried = tune_thresholds(heats[a.reference], labels, masks=masks)
    print("| setting | lesion median | peak | negatives' sd | own thresholds: Dice / F1 / negatives masked "
          f"| {a.reference}'s: Dice / F1 / negatives masked |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for s in settings:
        hs = heats[s]
        median = np.mean([np.median(h[m]) for h, m in zip(hs, masks, strict=True) if m is not None])
        peak = np.mean([h.max() for h, y in zip(hs, labels, strict=True) if y == 1])
        spread = np.std(np.concatenate([h.ravel() for h, y in zip(hs, labels, strict=True) if y == 0]))
        own = scores(hs, labels, masks, tune_thresholds(hs, labels, masks=masks))
        far = scores(hs, labels, masks, carried)
        print(
            f"| {s} | {median:.3g} | {peak:.3g} | {spread:.3g} | {own[0]:.3f} / {own[1]:.3f} / {own[2]} "
            f"| {far[0]:.3f} / {far[1]:.3f} / {far[2]} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
