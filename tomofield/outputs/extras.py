"""What a run writes beside a heatmap: a mask at the protocol's thresholds and a preview, for one volume or a dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomofield.dataset import Case
from tomofield.errors import InputError
from tomofield.io import Heatmap, Volume, load_volume


@dataclass(frozen=True)
class Extras:
    """A mask at ``cuts`` = (tau, tau') (its components' holes filled with ``fill_holes``) and a preview in ``window``.

    For one volume ``mask`` and ``preview`` are files; for a dataset, folder or pattern, folders.
    """

    mask: str | None = None
    cuts: tuple[float, float] | None = None
    preview: str | None = None
    window: tuple[float, float] | None = None
    fill_holes: bool = False

    def write(
        self, mask: Path | None, png: Path | None, heatmap: Heatmap, scan: Volume, title: str, overwrite: bool
    ) -> np.ndarray | None:
        """Write the mask (to ``mask``) and the preview (to ``png``) of ``heatmap`` over ``scan``.

        The preview shows the heatmap's first channel; a mask needs a single-channel heatmap.
        Returns the mask array (D, H, W) (None without ``cuts``).

        Raises:
            InputError: a mask of a heatmap of several channels.
        """
        from tomofield.outputs.masks import segmentation, write_mask
        from tomofield.outputs.preview import preview

        if self.cuts is not None and heatmap.data.shape[0] != 1:
            raise InputError(f"a mask needs a single-channel heatmap; this one has {heatmap.data.shape[0]} channels")
        heat = heatmap.data[0].detach().cpu().numpy()
        labels = None
        if self.cuts is not None:  # the preview outlines the mask, written or not
            labels = segmentation(heat, *self.cuts, fill_holes=self.fill_holes)
            if mask is not None:
                write_mask(mask, labels, heatmap, self.cuts, overwrite, fill_holes=self.fill_holes)
        if png is not None:
            threshold = self.cuts[1] if self.cuts else None
            preview(png, heatmap, scan, title, overwrite, mask=labels, window=self.window, threshold=threshold)
        return labels

    def write_dataset(self, cases: list[Case], heat_dir: str | Path, overwrite: bool) -> tuple[list[int], list[int]]:
        """One mask and one preview per volume from its finished heatmap in ``heat_dir``, each read once.

        A mask or preview newer than its heatmap is kept unless ``overwrite``. Returns
        ``(made, kept)``: the masks and previews written, and those kept as up to date.
        """
        from tomofield.batch import heatmap_path

        folders = [Path(f) if f else None for f in (self.mask, self.preview)]
        for folder in folders:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        made, kept = [0, 0], [0, 0]
        for case in cases:
            heat_file = heatmap_path(heat_dir, case)
            targets = [
                heatmap_path(folders[0], case) if folders[0] else None,
                folders[1] / f"{case.name}.png" if folders[1] else None,
            ]
            if targets[0] is not None and targets[0].resolve() == heat_file.resolve():
                raise InputError(f"the mask folder {self.mask!r} is the heatmaps' folder; give another for the masks")
            stale = [
                t is not None and (overwrite or not t.exists() or t.stat().st_mtime < heat_file.stat().st_mtime)
                for t in targets
            ]
            for i, t in enumerate(targets):
                made[i] += stale[i]
                kept[i] += t is not None and not stale[i]
            if not any(stale):
                continue
            stored = load_volume(heat_file)
            heatmap = Heatmap(stored.data, stored.affine, stored.spacing, stored.header, (heat_file, *case.images))
            scan = load_volume(list(case.images)) if stale[1] else stored  # the heatmap has the scan's grid
            chosen = [t if st else None for t, st in zip(targets, stale, strict=True)]
            self.write(chosen[0], chosen[1], heatmap, scan, case.name, True)
        return made, kept
