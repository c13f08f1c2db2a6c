"""What a heatmap becomes for people and tools: masks at the evaluation protocol's thresholds and PNG previews.

Every writer here takes the :class:`~tomofield.Heatmap` (it knows its grid, affine and
sources) and, where it draws the scan, the :class:`~tomofield.Volume`; the command line,
dataset runs, the demo and plugins call them and only parse and print. Modules:
:mod:`~tomofield.outputs.masks` (the binarization, the label map, the thresholds a report
stored), :mod:`~tomofield.outputs.preview` (three planes in the patient's frame) and
:mod:`~tomofield.outputs.extras` (both beside a heatmap, for one volume or a dataset).
"""

from tomofield.outputs.extras import Extras
from tomofield.outputs.masks import read_fill_holes, read_thresholds, segmentation, write_mask
from tomofield.outputs.preview import preview, write_preview

__all__ = ["Extras", "preview", "read_fill_holes", "read_thresholds", "segmentation", "write_mask", "write_preview"]
