"""What a run writes beside a heatmap: a mask at the protocol's thresholds, a preview and the mask's lesion table,
for one volume or a dataset."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tomofield.dataset import Case
from tomofield.errors import EmptyMaskWarning, InputError
from tomofield.io import Heatmap, Volume, load_volume


def warn_if_empty(labels: np.ndarray, heat: np.ndarray, cuts: tuple[float, float], name: str) -> bool:
    """Warn (:class:`~tomofield.errors.EmptyMaskWarning`) when ``labels`` is empty although ``heat`` rises above
    ``tau'``: a volume that looks positive, masked by thresholds that do not fit its heatmap. Returns whether it
    warned.

    The mask keeps the components above ``tau'`` whose maximum reaches ``tau``, so such a mask
    means that the heatmap peaks between the two. Thresholds tuned on heatmaps made at other
    settings are the usual cause: the heatmap's scale follows the slices per direction, the
    slice size, the encoder and the reconstructor.
    """
    tau, tau_prime = cuts
    finite = heat[np.isfinite(heat)]
    peak = float(finite.max()) if finite.size else float("nan")
    if labels.any() or not peak >= tau_prime:
        return False
    warnings.warn(
        f"{name}: the mask is empty although the heatmap peaks at {peak:.4g}, above tau' {tau_prime:.4g}; no "
        f"component reaches tau {tau:.4g}. Thresholds tuned on heatmaps made at other settings do not carry over "
        "(the scale follows the slices per direction, slice size, encoder and reconstructor): tune them with "
        "tomofield evaluate on heatmaps made as these were",
        EmptyMaskWarning,
        stacklevel=3,
    )
    return True


@dataclass(frozen=True)
class Extras:
    """A mask at ``cuts`` = (tau, tau') (its components' holes filled with ``fill_holes``), a preview in
    ``window`` and a table of the mask's lesions (``statistics``, ``.csv`` or ``.json``).

    For one volume ``mask`` and ``preview`` are files; for a dataset, folder or pattern, folders,
    and ``statistics`` is one table of every volume's lesions with a leading ``case`` column.
    The table needs ``cuts``: without ``mask`` the mask is computed as it would be written,
    and not written.
    """

    mask: str | None = None
    cuts: tuple[float, float] | None = None
    preview: str | None = None
    window: tuple[float, float] | None = None
    fill_holes: bool = False
    statistics: str | None = None
    #: the report the thresholds come from (``--thresholds``), checked against the engine (:meth:`check_engine`)
    report: str | None = None

    def check_engine(self, engine: Any) -> None:
        """Refuse the report's thresholds where its heatmaps were made at settings that change the scale of those
        ``engine`` makes (:func:`~tomofield.outputs.masks.check_thresholds_fit`). Without ``--thresholds`` nothing
        is computed: the engine's record hashes its weights."""
        if self.report is not None and self.cuts is not None:
            from tomofield.batch import engine_record
            from tomofield.outputs.masks import check_thresholds_fit

            check_thresholds_fit(self.report, engine_record(engine))

    def __post_init__(self) -> None:
        if self.statistics is not None and self.cuts is None:
            raise InputError(
                f"a lesion table ({self.statistics!r}) is of the mask's components: it needs the mask's thresholds"
            )

    def write(
        self,
        mask: Path | None,
        png: Path | None,
        heatmap: Heatmap,
        scan: Volume,
        title: str,
        overwrite: bool,
        table: Path | None = None,
    ) -> np.ndarray | None:
        """Write the mask (to ``mask``), the preview (to ``png``) and the lesion table (to ``table``) of ``heatmap``
        over ``scan``.

        The preview shows the heatmap's first channel; a mask and a table need a single-channel
        heatmap. Returns the mask array (D, H, W) (None without ``cuts``).

        Raises:
            InputError: a mask of a heatmap of several channels.
        """
        from tomofield.outputs.masks import segmentation, write_mask
        from tomofield.outputs.preview import preview
        from tomofield.outputs.statistics import lesion_table, table_columns, write_table

        if self.cuts is not None and heatmap.data.shape[0] != 1:
            raise InputError(f"a mask needs a single-channel heatmap; this one has {heatmap.data.shape[0]} channels")
        heat = heatmap.data[0].detach().cpu().numpy()
        labels = None
        if self.cuts is not None:  # the preview outlines the mask, written or not
            labels = segmentation(heat, *self.cuts, fill_holes=self.fill_holes)
            warn_if_empty(labels, heat, self.cuts, title)
            if mask is not None:
                write_mask(mask, labels, heatmap, self.cuts, overwrite, fill_holes=self.fill_holes)
        if png is not None:
            threshold = self.cuts[1] if self.cuts else None
            preview(png, heatmap, scan, title, overwrite, mask=labels, window=self.window, threshold=threshold)
        if table is not None:
            if labels is None:
                raise InputError(f"the lesion table {str(table)!r} needs the mask's thresholds")
            rows = lesion_table(labels, heatmap, scan)
            sources = [*heatmap.sources, *scan.paths, *([mask] if mask else []), *([png] if png else [])]
            write_table(rows, table, overwrite, columns=table_columns(scan.data.shape[0]), inputs=sources)
        return labels

    def write_dataset(self, cases: list[Case], heat_dir: str | Path, overwrite: bool) -> tuple[list[int], list[int]]:
        """One mask and one preview per volume from its finished heatmap in ``heat_dir``, each read once, and with
        ``statistics`` one table of every volume's lesions (a leading ``case`` column, the volume's name).

        A mask or preview newer than its heatmap is kept unless ``overwrite``; the table is
        made from every volume's heatmap (its mask computed again where the file is kept),
        and an existing table is replaced only with ``overwrite``. Returns ``(made, kept)``:
        the masks and previews written, and those kept as up to date.
        """
        from tomofield.batch import heatmap_path
        from tomofield.outputs.statistics import lesion_table, table_columns, write_table

        folders = [Path(f) if f else None for f in (self.mask, self.preview)]
        for folder in folders:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        made, kept = [0, 0], [0, 0]
        rows: list[dict[str, Any]] = []
        channels, sources = 0, []
        for case in cases:
            heat_file = heatmap_path(heat_dir, case)
            sources += [heat_file, *case.images, *([case.mask] if case.mask else [])]
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
            if not any(stale) and self.statistics is None:
                continue
            stored = load_volume(heat_file)
            heatmap = Heatmap(stored.data, stored.affine, stored.spacing, stored.header, (heat_file, *case.images))
            # the heatmap has the scan's grid; the preview and the table's intensities need the scan itself
            scan = load_volume(list(case.images)) if stale[1] or self.statistics else stored
            chosen = [t if st else None for t, st in zip(targets, stale, strict=True)]
            labels = self.write(chosen[0], chosen[1], heatmap, scan, case.name, True)
            if self.statistics is not None:
                channels = max(channels, scan.data.shape[0])
                rows += [{"case": case.name, **row} for row in lesion_table(labels, heatmap, scan)]
        if self.statistics is not None:
            columns = table_columns(channels, case=True)
            write_table(rows, self.statistics, overwrite, columns=columns, inputs=sources)
        return made, kept
