"""The stages of a reconstruction: plan -> slicer -> scorer -> filter -> backprojector.

:meth:`tomofield.Engine.reconstruct` strings these together; each is usable on its own.

* :class:`Plan`: made once per volume. The box half-extents, the sampler's direction
  groups (this rank's share under torch.distributed) and the slice counts.
* :class:`Slicer`: cuts batches of slices of one chunk of directions out of the volume
  and knows which slices sample nothing (the occupancy test), so they are not scored.
* :class:`Scorer`: runs a head (and its encoder) on batches of slices with the speed
  settings (autocast, channels-last, compiled). Its ``batch_size`` is its own state: after
  an out-of-memory error it halves and stays halved for the rest of its work.
* a filter (:class:`tomofield.protocols.Filter`) along each stack's normal.
* :class:`Backprojector`: weights each chunk's filtered profiles and accumulates them
  into the output grid.
* :class:`Stacks`: the operators of one plan handed to the reconstructor
  (:class:`tomofield.protocols.Reconstructor`): the filter, backprojectors, and the
  forward model ``project`` (the ``sum`` head's scores of a heatmap at the same planes).
"""

from tomofield.pipeline.plan import CHUNK_SLICES, Plan, Tick
from tomofield.pipeline.scoring import AMP_MODES, Scorer, amp_dtype, compiled, encoder_dtype
from tomofield.pipeline.slicing import Occupancy, Slicer, cut_slices, index_frames, normalised_frames
from tomofield.pipeline.stacks import Backprojector, Stacks, available_memory, check_memory

__all__ = [
    "AMP_MODES",
    "CHUNK_SLICES",
    "Backprojector",
    "Occupancy",
    "Plan",
    "Scorer",
    "Slicer",
    "Stacks",
    "Tick",
    "amp_dtype",
    "available_memory",
    "check_memory",
    "compiled",
    "cut_slices",
    "encoder_dtype",
    "index_frames",
    "normalised_frames",
]
