"""The encoder's own operating point, learned from volume labels alone.

A slice of a negative volume never cuts a lesion, so the slice logits of negative volumes
are a sample of what "no lesion" scores on this encoder. Their upper quantile at a chosen
false-positive rate is the logit at which a slice counts as cutting a lesion, with no mask
at all; their spread says how soft that decision is in this encoder's units. Components
that threshold slice scores (the ``filled`` reconstructor) read it instead of constants
tuned on another encoder (their ``operating_point_options``; docs/design.md, "The
operating point").

Training records it in the run (``config.json`` and the weights' metadata, key
``operating_point``); ``tomofield calibrate RUN DATASET.csv`` records it for a run made
before.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> p = operating_point(torch.randn(200_000, generator=g) * 2 - 3, 0.05, volumes=10, source="example")
>>> round(p.threshold, 1), round(p.scale, 1)   # -3 + 1.645 * 2, and the standard deviation
(0.3, 2.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from tomofield.errors import InputError

#: The false-positive rate of the recorded operating point: the share of negatives' slices above it.
FALSE_POSITIVE_RATE = 0.05
#: The fewest negative slices an operating point is taken from.
MIN_SLICES = 20


@dataclass(frozen=True)
class OperatingPoint:
    """Where an encoder's slice logit says "this slice cuts a lesion".

    Attributes:
        threshold: the ``1 - false_positive_rate`` quantile of negatives' slice logits.
        scale: the spread of those logits, half their 15.9-84.1 % range (the standard
            deviation for a normal sample), in logit units.
        false_positive_rate: the share of negatives' slices above ``threshold``.
        slices: how many negative slices it was taken from.
        volumes: from how many negative volumes.
        source: where they came from (``training``, ``validation``, or a CSV's path).
    """

    threshold: float
    scale: float
    false_positive_rate: float
    slices: int
    volumes: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OperatingPoint:
        return cls(
            threshold=float(data["threshold"]),
            scale=float(data["scale"]),
            false_positive_rate=float(data["false_positive_rate"]),
            slices=int(data["slices"]),
            volumes=int(data["volumes"]),
            source=str(data["source"]),
        )


def valid_record(data: Any) -> bool:
    """Whether ``data`` (parsed JSON) is an operating point as :meth:`OperatingPoint.to_json` writes it."""
    if not isinstance(data, dict) or set(data) != {f for f in OperatingPoint.__dataclass_fields__}:
        return False

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    return (
        number(data["threshold"])
        and number(data["scale"])
        and data["scale"] > 0
        and number(data["false_positive_rate"])
        and 0 < data["false_positive_rate"] < 0.5
        and count(data["slices"])
        and count(data["volumes"])
        and isinstance(data["source"], str)
        and data["source"].strip() != ""
    )


def operating_point(
    logits: Tensor, false_positive_rate: float = FALSE_POSITIVE_RATE, *, volumes: int, source: str
) -> OperatingPoint:
    """The operating point of the slice logits of negative volumes (any shape; all are slices).

    Raises:
        InputError: a rate outside (0, 0.5), fewer than :data:`MIN_SLICES` slices, or
            non-finite logits.
    """
    if not (isinstance(false_positive_rate, (int, float)) and 0 < false_positive_rate < 0.5):
        raise InputError(f"false-positive rate must be in (0, 0.5), got {false_positive_rate!r}")
    z = logits.detach().reshape(-1).double().cpu()
    if z.numel() < MIN_SLICES:
        raise InputError(
            f"an operating point needs at least {MIN_SLICES} slices of negative volumes, got {z.numel()} "
            f"(from {volumes} volume(s)); give more negatives"
        )
    if not bool(torch.isfinite(z).all()):
        raise InputError(f"the slice logits of {source} are not all finite: the encoder's weights are broken")
    q = torch.quantile(z, torch.tensor([1 - false_positive_rate, 0.15866, 0.84134], dtype=torch.float64))
    scale = float(q[2] - q[1]) / 2
    if not scale > 0:  # a constant encoder: any spread is a step away
        scale = 1e-3
    return OperatingPoint(
        threshold=float(q[0]),
        scale=scale,
        false_positive_rate=float(false_positive_rate),
        slices=int(z.numel()),
        volumes=int(volumes),
        source=source,
    )
