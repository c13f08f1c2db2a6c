"""Masks: the evaluation protocol's binarization of a heatmap at thresholds a report stored, written as a label map."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tomofield.errors import InputError
from tomofield.io import Heatmap, check_regular_file, save_nifti


def segmentation(heatmap: np.ndarray, tau: float, tau_prime: float, *, fill_holes: bool = False) -> np.ndarray:
    """The protocol's binarization of a (D, H, W) heatmap as a uint8 label map (1 = lesion).

    ``fill_holes``: each kept component not touching the volume's border takes the
    background it encloses (:func:`tomofield.evaluation.binarize`).
    """
    from tomofield.evaluation import binarize

    return binarize(np.asarray(heatmap), tau_prime, tau, fill_holes=fill_holes).astype(np.uint8)


def write_mask(
    path: str | Path,
    labels: np.ndarray,
    heatmap: Heatmap,
    cuts: tuple[float, float],
    overwrite: bool = False,
    fill_holes: bool = False,
) -> Path:
    """A uint8 label map (D, H, W), the segmentation at ``cuts`` = (tau, tau'), on ``heatmap``'s grid.

    Written with the heatmap's affine and header geometry, never over one of its sources;
    its description names the thresholds, and ``filled`` when the components' holes were filled.
    """
    tau, tau_prime = cuts
    return save_nifti(
        path,
        labels,
        heatmap.affine,
        heatmap.header,
        overwrite,
        dtype=np.uint8,
        description=f"tomofield mask tau={tau:.4g} tau'={tau_prime:.4g}" + (" filled" if fill_holes else ""),
        inputs=heatmap.sources,
    )


def read_thresholds(source: str | Path) -> tuple[float, float]:
    """``(tau, tau_prime)`` that ``tomofield evaluate`` stored: ``REPORT.json`` or ``REPORT.json#METHOD``.

    A report of several methods (``tomofield compare``) needs ``#METHOD``.
    """
    method, stored = _report_entry(source)
    thresholds = stored.get("thresholds")
    if not isinstance(thresholds, dict) or not all(_is_finite(thresholds.get(k)) for k in ("tau", "tau_prime")):
        raise InputError(
            f"--thresholds {str(source)!r}: method {method!r} stores no finite tau and tau_prime (a report from "
            "before tomofield evaluate stored them, or no volume to tune on): run tomofield evaluate again, or give "
            "--threshold TAU[,TAU_PRIME]"
        )
    return float(thresholds["tau"]), float(thresholds["tau_prime"])


def read_fill_holes(source: str | Path) -> bool:
    """Whether the report (``REPORT.json`` or ``REPORT.json#METHOD``) binarized with filled holes.

    A report from before the option binarized without: ``False``.
    """
    _, stored = _report_entry(source)
    value = stored.get("fill_holes", False)
    if not isinstance(value, bool):
        raise InputError(f"--thresholds {str(source)!r}: fill_holes is {value!r}, not true or false")
    return value


#: Engine settings a heatmap's scale does not follow: thresholds tuned at one carry over to another.
#: The directions change only the noise (docs/benchmarks.md, section 10); the encoder's precision only rounding.
PORTABLE = ("directions", "seed", "hemisphere", "tomofield version", "autocast")


def check_thresholds_fit(source: str | Path, engine: dict[str, Any]) -> None:
    """Refuse thresholds of a report whose heatmaps were made at settings that change the heatmap's scale.

    ``engine`` is the record of the engine that makes the heatmaps the thresholds will cut
    (:func:`tomofield.batch.engine_record`). A report that records its heatmaps' provenance
    (``heatmaps``: ``tomofield evaluate`` on recorded heatmaps) must agree with it on every
    setting but :data:`PORTABLE`; slices chosen per volume by a preset are refused on either
    side, because one threshold pair cannot fit heatmaps of several scales. A report
    without the record passes (from before it was kept, or of another tool's heatmaps).

    Raises:
        InputError: naming each setting that differs, the report's value and this run's.
    """
    from tomofield.batch import engine_differences

    _, stored = _report_entry(source)
    made = stored.get("heatmaps")
    if not isinstance(made, dict):
        return
    per_volume = [
        f"{side} choose {k} per volume ({v})"
        for side, rec in (("the report's heatmaps", made), ("this run", engine))
        for k, v in (rec.get("settings") or {}).items()
        if isinstance(v, str) and v.startswith("preset ")
    ]
    if per_volume:
        raise InputError(
            f"--thresholds {str(source)!r}: {'; '.join(per_volume)}: the heatmap's scale follows the slices per "
            "direction, so one pair of thresholds does not fit them all; give -M (and the same to the heatmaps "
            "tomofield evaluate tunes on), or --threshold"
        )
    diffs = [d for d in engine_differences(made, engine) if not d.startswith(tuple(f"{k} " for k in PORTABLE))]
    if diffs:
        raise InputError(
            f"--thresholds {str(source)!r} was tuned on heatmaps made otherwise than this run's "
            f"({'; '.join(diffs[:5])}; the report's value -> this run's): the heatmap's scale follows these "
            "settings, so its thresholds would not mean the same here. Run with the report's settings, or tune "
            "thresholds on heatmaps made as this run makes them (tomofield evaluate), or give --threshold"
        )


def _report_entry(source: str | Path) -> tuple[str, dict[str, Any]]:
    """``(method, its result)`` of a report of ``tomofield evaluate`` or ``compare`` (see :func:`read_thresholds`)."""
    path_text, _, method = str(source).partition("#")
    path = check_regular_file(path_text, f"--thresholds {str(source)!r}: the report")  # not a FIFO or a device
    if not path.is_file():
        raise InputError(f"--thresholds {str(source)!r}: no report {path_text!r} (the JSON of tomofield evaluate)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--thresholds {str(source)!r}: cannot read it as JSON ({exc})") from None
    methods = [k for k, v in report.items() if isinstance(v, dict)] if isinstance(report, dict) else []
    if not methods:
        raise InputError(f"--thresholds {str(source)!r} is not a report of tomofield evaluate")
    if not method:
        if len(methods) > 1:
            raise InputError(
                f"--thresholds {str(source)!r} reports {len(methods)} methods; name one: "
                + ", ".join(f"{path_text}#{m}" for m in methods)
            )
        method = methods[0]
    if method not in methods:
        raise InputError(f"--thresholds {str(source)!r}: no method {method!r}; valid: {', '.join(methods)}")
    return method, report[method]


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
