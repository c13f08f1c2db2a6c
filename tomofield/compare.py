"""The paper's method comparison (Table 2 and Fig. 6) on one dataset.

Each method is an Engine configuration; heatmaps go to ``REPORT_DIR/heatmaps/<method>``
(resumable like any dataset run), each method is evaluated with the protocol of
:mod:`tomofield.report`, and the best layer of each CAM family is reported.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tomofield.batch import run_dataset
from tomofield.dataset import Case, read_dataset
from tomofield.engine import Engine, EngineConfig
from tomofield.errors import InputError
from tomofield.io import atomic_write, atomic_write_all, check_output_path, load_volume
from tomofield.protocols import SEED_MAX, check_settings, declared, setting
from tomofield.report import evaluate_heatmaps, report_inputs, report_paths, report_writes


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a family (table row) at one layer."""

    family: str
    layer: int | None
    head: str
    filter: str
    sampler: str
    #: plain ToNNO (``fbp``) is the paper's; ``filled`` the logit head's default since issue 18
    reconstructor: str = "fbp"

    @property
    def name(self) -> str:
        return self.family if self.layer is None else f"{self.family}-layer{self.layer}"


#: The engine's declarations of the sizes a comparison sets (their bounds are the engine's).
_ENGINE = {o.name: o for o in declared(EngineConfig)}


def _size(default: int, help: str, of: str) -> Any:
    """A size of the comparison, bounded as the engine's setting ``of``."""
    return setting(default, help, min=_ENGINE[of].min, max=_ENGINE[of].max)


@dataclass
class CompareSettings:
    """Sizes of the comparison; the paper uses L = 2000, M = 100 (ToNNO) and L = 1000 (CAMs).

    :meth:`validate` checks them all (:func:`run_comparison` does, before any work).
    """

    layers: Sequence[int] = (1, 2, 3, 4)
    directions: int = _size(256, "ToNNO directions L.", "directions")
    slices: int = _size(32, "ToNNO slices per direction M.", "slices")
    cam_directions: int = _size(64, "Averaged and Tomographic CAM directions.", "directions")
    cam_slices: int = _size(24, "Averaged and Tomographic CAM slices per direction.", "slices")
    folds: int = setting(10, "Monte-Carlo cross-validation folds.", min=1, max=100_000)
    seed: int = setting(0, "Seed of the directions and the folds.", min=0, max=SEED_MAX)
    device: str = "auto"
    fill_holes: bool = False  # the evaluation's binarization fills each component's holes (evaluate_heatmaps)
    families: Sequence[str] = field(default_factory=lambda: list(FAMILIES))

    def validate(self) -> None:
        """Refuse a size out of its bounds, a layer that is not an integer, an unknown or missing method family.

        Raises:
            InputError: naming the setting, the value and what is valid.
        """
        check_settings(self, "compare")
        bad = [x for x in self.layers if isinstance(x, bool) or not isinstance(x, int)]
        if bad or not self.layers:
            raise InputError(f"compare: layers must be one or more integers, got {list(self.layers)!r}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            got = ", ".join(map(repr, unknown)) if unknown else "none"
            raise InputError(f"compare: unknown method(s) {got}; valid: {', '.join(FAMILIES)}")


#: family -> (head, filter, sampler, reconstructor)
FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "GradCAM": ("gradcam", "none", "axial", "fbp"),
    "LayerCAM": ("layercam", "none", "axial", "fbp"),
    "GradCAM (3 axes)": ("gradcam", "none", "orthogonal", "fbp"),
    "LayerCAM (3 axes)": ("layercam", "none", "orthogonal", "fbp"),
    "ToNNO": ("logit", "tomo", "fibonacci", "fbp"),
    "ToNNO (filled)": ("logit", "tomo", "fibonacci", "filled"),
    "Averaged LayerCAM": ("layercam", "none", "fibonacci", "fbp"),
    "Tomographic LayerCAM": ("layercam", "tomo", "fibonacci", "fbp"),
}


def methods(s: CompareSettings) -> list[Method]:
    out: list[Method] = []
    for family in s.families:
        head, filt, sampler, rec = FAMILIES[family]
        layers = [None] if head == "logit" else list(s.layers)
        out.extend(Method(family, layer, head, filt, sampler, rec) for layer in layers)
    return out


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name.lower().replace(" (3 axes)", "-3axes"))


def engine_for(m: Method, weights: str | Path, s: CompareSettings) -> Engine:
    cam = m.head != "logit"
    opts = {"layer": m.layer} if cam else {}
    return Engine(
        weights=weights,
        head=m.head,
        filter=m.filter,
        sampler=m.sampler,
        reconstructor=m.reconstructor,
        head_options=opts,
        directions=s.cam_directions if cam else s.directions,
        slices=s.cam_slices if cam else s.slices,
        seed=s.seed,
        device=s.device,
    )


def report_files(report_dir: str | Path) -> list[Path]:
    """The files :func:`write_outputs` writes in ``report_dir``."""
    report_dir = Path(report_dir)
    return [report_dir / "table.md", *report_paths(report_dir / "results"), report_dir / "figure.png"]


def check_report_dir(report_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, a report folder that is a file or holds an earlier comparison (unless ``overwrite``).

    The folder and the files it is to hold get every command's output checks
    (:func:`tomofield.io.check_output_path`: under a file, unwritable, names too long).
    """
    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise InputError(f"report folder {str(report_dir)!r} is a file; give a folder (a new one is made)")
    there = next((p for p in report_dir.parents if p.exists()), Path("."))
    if not report_dir.exists() and not there.is_dir():
        raise InputError(f"cannot make the report folder {str(report_dir)!r}: {str(there)!r} is a file, not a folder")
    check_output_path(report_dir, folder=True)
    for path in report_files(report_dir):
        check_output_path(path, overwrite=True, suffixes=())  # their names; whether they exist: below
    earlier = [p.name for p in report_files(report_dir) if p.exists()]
    if earlier and not overwrite:
        raise InputError(
            f"report folder {str(report_dir)!r} holds an earlier comparison ({', '.join(earlier)}); choose another "
            "folder, or remove those files to redo it there (its heatmaps are reused when made alike)"
        )
    return report_dir


def run_comparison(
    dataset_csv: str | Path,
    weights: str | Path,
    report_dir: str | Path,
    s: CompareSettings,
    on_method: Callable[[Method, str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Heatmaps, evaluation and best layers of every method; returns all results.

    Everything is checked before any work: the settings (:meth:`CompareSettings.validate`),
    the report folder (:func:`check_report_dir`: an earlier comparison's files are kept
    unless ``overwrite``), the dataset, and every method's engine (:meth:`Engine.check`: its
    options, its head on the encoder, the size of the job on the first volume).
    """
    report_dir = check_report_dir(report_dir, overwrite)
    s.validate()
    cases = read_dataset(dataset_csv)
    first = load_volume(list(cases[0].images))
    for m in methods(s):  # one at a time: an engine holds its weights
        engine_for(m, weights, s).check(first.data.shape[1:], first.spacing, int(first.data.shape[0]))
    results: dict[str, dict[str, Any]] = {}
    for m in methods(s):
        if on_method:
            on_method(m, "start")
        # the report folder is this command's own: heatmaps made otherwise (other sizes, weights) are redone
        run_dataset(engine_for(m, weights, s), cases, report_dir / "heatmaps" / slug(m.name), on_stale="redo")
        results[m.name] = evaluate_heatmaps(
            report_dir / "heatmaps" / slug(m.name), dataset_csv, folds=s.folds, seed=s.seed, fill_holes=s.fill_holes
        )
        results[m.name]["family"], results[m.name]["layer"] = m.family, m.layer
        if on_method:
            on_method(m, "done")
    best = best_layers(results)
    return {"methods": results, "best": best}


def best_layers(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per family, the method (layer) with the highest F1 (ties: higher Dice)."""
    best: dict[str, str] = {}
    for name, r in results.items():
        key = (_num(r.get("f1")), _num(r.get("dice")))
        cur = best.get(r["family"])
        if cur is None or key > (_num(results[cur].get("f1")), _num(results[cur].get("dice"))):
            best[r["family"]] = name
    return best


def _num(x: Any) -> float:
    return -1.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def markdown_table(results: dict[str, dict[str, Any]], best: dict[str, str]) -> str:
    """Table 2 layout: one row per family at its best layer, mean ± std over folds."""
    cols = ["precision", "recall", "f1", "dice", "balanced_accuracy"]
    lines = [
        "| method | best layer | precision | recall | F1 | Dice | balanced accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, name in best.items():
        r = results[name]
        cells = [f"{r[c]:.3f} ± {r['std'][c]:.3f}" if c in r and not math.isnan(r[c]) else "-" for c in cols]
        lines.append(f"| {family} | {r['layer'] if r['layer'] is not None else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(
    report_dir: str | Path, dataset_csv: str | Path, out: dict[str, Any], overwrite: bool = False
) -> list[Path]:
    """``table.md``, ``results.csv``/``results.json`` and ``figure.png`` in ``report_dir``, all or none.

    An earlier comparison's files are replaced only with ``overwrite``; the dataset CSV never.
    """
    report_dir = Path(report_dir)
    md = markdown_table(out["methods"], out["best"])
    png = render_figure(dataset_csv, report_dir / "heatmaps", out)
    table, *_, fig = report_files(report_dir)
    writes = [(table, lambda t: t.write_text(md, encoding="utf-8"))]
    writes += report_writes(report_dir / "results", out["methods"])
    writes.append((fig, lambda t: t.write_bytes(png)))
    return atomic_write_all(writes, overwrite=overwrite, inputs=[dataset_csv, *report_inputs(out["methods"])])


def figure(
    path: Path,
    dataset_csv: str | Path,
    heat_root: Path,
    out: dict[str, Any],
    n_cases: int = 3,
    overwrite: bool = False,
) -> Path:
    """Write :func:`render_figure` as a PNG (atomically; an existing file is kept unless ``overwrite``)."""
    png = render_figure(dataset_csv, heat_root, out, n_cases)
    return atomic_write(path, lambda t: t.write_bytes(png), overwrite=overwrite, inputs=[dataset_csv])


def render_figure(dataset_csv: str | Path, heat_root: Path, out: dict[str, Any], n_cases: int = 3) -> bytes:
    """Fig. 6 layout as PNG bytes: input, ground truth, and each family's heatmap and binarized mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tomofield.evaluation import binarize

    every = read_dataset(dataset_csv)
    # positives with a mask; without any, positives, else any volume (no ground truth drawn)
    cases: list[Case] = ([c for c in every if c.label == 1 and c.mask] or [c for c in every if c.label == 1] or every)[
        :n_cases
    ]
    fams = list(out["best"].items())
    ncol = 2 + 2 * len(fams)
    fig, axes = plt.subplots(len(cases), ncol, figsize=(1.6 * ncol, 1.8 * len(cases) + 0.6), squeeze=False)
    for row, case in enumerate(cases):
        vol = load_volume(list(case.images)).data[0].numpy()
        mask = load_volume(case.mask).data[0].numpy() > 0 if case.mask else np.zeros(vol.shape, bool)
        d = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else vol.shape[0] // 2
        panels: list[tuple[str, np.ndarray, str]] = [("input", vol[d], "gray"), ("ground truth", mask[d], "gray")]
        for family, name in fams:
            r = out["methods"][name]
            heat = load_volume(heat_root / slug(name) / f"{case.name}.nii.gz").data[0].numpy()
            tau, tau_prime = r.get("tau"), r.get("tau_prime")
            usable = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (tau, tau_prime))
            filled = r.get("fill_holes") is True  # as the evaluation binarized
            binm = binarize(heat, min(tau_prime, tau), tau, fill_holes=filled) if usable else np.zeros(heat.shape, bool)
            panels += [(family, heat[d], "inferno"), (f"{family}\nmask", binm[d], "gray")]
        for col, (title, img, cmap) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, cmap=cmap, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
        axes[row, 0].set_ylabel(case.name, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=90, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
