"""Generic multi-sequence studies: co-registered NIfTI sequences stacked as channels.

This is how the paper's (private) multiple sclerosis set was prepared: per study, all
sequences, registered to a common space, stacked along the channel axis and z-normalised
channel-wise; a study is positive when its lesion mask is not empty. RAW_DIR describes
itself in ``RAW_DIR/tomofield.json``::

    {
      "sequences": ["t1", "pd", "t2", "flair", "t1gd"],
      "path": "{patient}/{study}/{sequence}.nii.gz",
      "mask": "{patient}/{study}/mask.nii.gz",
      "labels": "labels.csv",
      "normalize": "zscore"
    }

- ``sequences`` (required): the channel order; each name fills ``{sequence}`` in ``path``.
- ``path`` (required): where a sequence lies, relative to RAW_DIR, with ``{patient}``
  (required: the split keeps a patient's studies together), ``{study}`` (optional; without
  it a patient has one study) and ``{sequence}``.
- ``mask`` (optional): the lesion mask of a study, same placeholders except ``{sequence}``.
  A study without a mask file simply has none.
- ``labels`` (optional): a CSV with columns ``study`` (or ``patient`` when ``path`` has no
  ``{study}``) and ``label`` (0/1). Without a row there, a study's label is 1 when its mask
  holds a voxel above 0, 0 when it is empty; a study with neither is an error.
- ``normalize`` (optional): ``"zscore"`` (default) or ``"none"``.

Studies are found by matching ``path`` with the first sequence's name against the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tomofield.errors import InputError
from tomofield.io import load_volume
from tomofield_medical.common import Progress, Writer, recipe, safe_name, zscore
from tomofield_medical.tables import read_table, to_int

CONFIG = "tomofield.json"
KEYS = {"sequences", "path", "mask", "labels", "normalize"}
NORMALIZE = ("zscore", "none")


def _read_config(raw: Path) -> dict:
    path = raw / CONFIG
    if not path.is_file():
        raise InputError(
            f"{str(raw)!r}: no {CONFIG} describing the sequences; write one, e.g. "
            '{"sequences": ["t1", "flair"], "path": "{patient}/{study}/{sequence}.nii.gz", '
            '"mask": "{patient}/{study}/mask.nii.gz"} (see docs/datasets.md)'
        )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{str(path)!r}: not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise InputError(f"{str(path)!r}: expected a JSON object with keys {', '.join(sorted(KEYS))}")
    unknown = set(cfg) - KEYS
    if unknown:
        raise InputError(
            f"{str(path)!r}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(KEYS))}"
        )
    seqs = cfg.get("sequences")
    if (
        not isinstance(seqs, list)
        or not seqs
        or not all(isinstance(s, str) and s for s in seqs)
        or len(set(seqs)) != len(seqs)
    ):
        raise InputError(f"{str(path)!r}: 'sequences' must be a list of distinct names, got {seqs!r}")
    pattern = cfg.get("path")
    if not isinstance(pattern, str) or "{patient}" not in pattern or "{sequence}" not in pattern:
        raise InputError(f"{str(path)!r}: 'path' must contain {{patient}} and {{sequence}}, got {pattern!r}")
    fields = set(re.findall(r"{(\w*)}", pattern))
    if fields - {"patient", "study", "sequence"}:
        raise InputError(f"{str(path)!r}: 'path' may use only {{patient}}, {{study}}, {{sequence}}, got {pattern!r}")
    mask = cfg.get("mask")
    if mask is not None and (not isinstance(mask, str) or set(re.findall(r"{(\w*)}", mask)) - (fields - {"sequence"})):
        raise InputError(
            f"{str(path)!r}: 'mask' may use only the placeholders of 'path' but {{sequence}}, got {mask!r}"
        )
    if cfg.get("normalize", "zscore") not in NORMALIZE:
        raise InputError(f"{str(path)!r}: 'normalize' must be one of {', '.join(NORMALIZE)}, got {cfg['normalize']!r}")
    return cfg


def _regex(pattern: str, sequence: str) -> re.Pattern:
    out, seen = "", set()
    for literal, field in re.findall(r"([^{]*)(?:{(\w+)})?", pattern):
        out += re.escape(literal)
        if field == "sequence":
            out += re.escape(sequence)
        elif field:
            out += f"(?P={field})" if field in seen else f"(?P<{field}>[^/]+)"
            seen.add(field)
    return re.compile(out)


def find_studies(raw: Path, cfg: dict) -> list[dict[str, str]]:
    """``{"patient": ..., "study": ...}`` for every file matching ``path`` with the first sequence."""
    rx = _regex(cfg["path"], cfg["sequences"][0])
    found = []
    for f in sorted(raw.rglob("*")):
        if f.is_file():
            hit = rx.fullmatch(f.relative_to(raw).as_posix())
            if hit:
                ids = hit.groupdict()
                ids.setdefault("study", ids["patient"])
                found.append(ids)
    if not found:
        example = cfg["path"].replace("{sequence}", cfg["sequences"][0])
        raise InputError(f"{str(raw)!r}: no file matches {example!r} (from {CONFIG}); wrong folder?")
    return found


def _labels(raw: Path, cfg: dict) -> dict[str, int]:
    if not cfg.get("labels"):
        return {}
    key = "study" if "{study}" in cfg["path"] else "patient"
    path = raw / cfg["labels"]
    out = {}
    for rec in read_table(path, (key, "label")):
        v = to_int(rec["label"], f"{path}, {key} {rec[key]}")
        if v not in (0, 1):
            raise InputError(f"{path}, {key} {rec[key]}: label {rec['label']!r} must be 0 or 1")
        out[rec[key]] = v
    return out


class MultiSequence:
    """``tomofield prepare multisequence RAW -o OUT`` with ``RAW/tomofield.json``."""

    recipe = recipe(250_000)  # the paper's multiple sclerosis setting

    def prepare(
        self,
        raw_dir: str | Path,
        out_dir: str | Path,
        *,
        seed: int = 0,
        val_fraction: float = 0.2,
        progress: Progress | None = None,
    ) -> dict[str, Path]:
        raw = Path(raw_dir)
        if not raw.is_dir():
            raise InputError(f"{str(raw)!r} is not a folder")
        cfg = _read_config(raw)
        studies, labels = find_studies(raw, cfg), _labels(raw, cfg)
        key = "study" if "{study}" in cfg["path"] else "patient"
        missing = sorted(set(labels) - {s[key] for s in studies})
        if missing:
            raise InputError(f"{str(raw / cfg['labels'])!r}: {key}(s) {', '.join(missing[:5])} have no files")
        writer = Writer(out_dir, len(studies), progress)
        for ids in studies:
            paths = [raw / cfg["path"].format(sequence=s, **ids) for s in cfg["sequences"]]
            for seq, p in zip(cfg["sequences"], paths, strict=True):
                if not p.is_file():
                    raise InputError(
                        f"study {ids['study']!r} of patient {ids['patient']!r}: missing sequence {seq!r} ({str(p)!r})"
                    )
            vol = load_volume(paths)  # checks that the sequences share one grid
            data = vol.data.numpy()
            if cfg.get("normalize", "zscore") == "zscore":
                data = zscore(data, [str(p) for p in paths])
            mask = None
            if cfg.get("mask"):
                mpath = raw / cfg["mask"].format(**ids)
                if mpath.is_file():
                    mvol = load_volume(mpath)
                    if tuple(mvol.data.shape[1:]) != tuple(data.shape[1:]):
                        raise InputError(
                            f"{str(mpath)!r}: grid {tuple(mvol.data.shape[1:])} differs from the "
                            f"sequences' {tuple(data.shape[1:])}"
                        )
                    mask = (mvol.data[0].numpy() > 0).astype(np.uint8)
            if ids[key] in labels:
                label = labels[ids[key]]
            elif mask is not None:
                label = int(mask.any())
            else:
                raise InputError(
                    f"study {ids['study']!r} of patient {ids['patient']!r}: no label (neither a row in "
                    f"{cfg.get('labels') or 'a labels CSV'} nor a mask file)"
                )
            name = safe_name(ids["patient"] if ids["study"] == ids["patient"] else f"{ids['patient']}_{ids['study']}")
            writer.add(
                name,
                ids["patient"],
                label,
                data,
                vol.affine,
                mask=mask,
                header=vol.header,
                source=";".join(str(p) for p in paths),
            )
        return writer.finish(seed=seed, val_fraction=val_fraction)
