"""What a heatmap becomes for people and tools: masks at the evaluation protocol's thresholds, PNG previews and
per-lesion statistics.

Every writer here takes the :class:`~tomofield.Heatmap` (it knows its grid, affine and
sources) and, where it draws the scan, the :class:`~tomofield.Volume`; the command line,
dataset runs, the demo and plugins call them and only parse and print. Modules:
:mod:`~tomofield.outputs.masks` (the binarization, the label map, the thresholds a report
stored), :mod:`~tomofield.outputs.preview` (three planes in the patient's frame),
:mod:`~tomofield.outputs.statistics` (the mask's lesions: volume, RAS centroid, box, heatmap
and intensities, as CSV or JSON) and :mod:`~tomofield.outputs.extras` (all of them beside a
heatmap, for one volume or a dataset).
"""

from tomofield.outputs.extras import Extras
from tomofield.outputs.masks import read_fill_holes, read_thresholds, segmentation, write_mask
from tomofield.outputs.preview import preview, write_preview
from tomofield.outputs.statistics import lesion_table, table_columns, write_table

__all__ = [
    "Extras",
    "lesion_table",
    "preview",
    "read_fill_holes",
    "read_thresholds",
    "segmentation",
    "table_columns",
    "write_mask",
    "write_preview",
    "write_table",
]
