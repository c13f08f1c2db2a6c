"""tomofield as a MONAI inferer: ``LoadImage -> Orientation -> Spacing -> ... -> inferer -> SaveImage``.

MONAI's image tensors are ``(B, C, H, W, D)`` in MONAI's words, which are the affine's
voxel axes ``(i, j, k)`` (nibabel's order), with the affine in their metadata;
tomofield's are ``(C, D, H, W) = (C, k, j, i)``. :class:`TomofieldInferer` converts each
item with its own affine (:meth:`tomofield.Volume.from_array`), reconstructs it with
:meth:`tomofield.Engine.run` (so the heatmap is the one ``tomofield run`` writes for the
same file, whatever its storage order) and returns the heatmaps in MONAI's order as
MetaTensors carrying the inputs' metadata, ready for ``SaveImage``.

Needs MONAI: ``pip install 'tomofield[monai]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

try:
    from monai.data import MetaTensor
    from monai.inferers import Inferer
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "tomofield.integrations.monai needs MONAI: pip install 'tomofield[monai]' (or pip install monai)"
    ) from exc

from tomofield.engine import Engine
from tomofield.errors import InputError
from tomofield.io import Volume

__all__ = ["TomofieldInferer"]


class TomofieldInferer(Inferer):
    """A MONAI :class:`~monai.inferers.Inferer` whose "network" is a 2D slice encoder.

    Args:
        engine: the engine to run; or give its arguments instead (``weights=RUN_DIR``,
            ``head``, ``filter``, ``sampler``, ``postprocess``, ``device`` and any
            :class:`~tomofield.EngineConfig` setting, as for :class:`~tomofield.Engine`).
        progress: passed to :meth:`~tomofield.Engine.run` for each item.

    ``inferer(inputs)`` runs the engine's own encoder; ``inferer(inputs, network)``, as MONAI
    calls inferers, uses ``network`` (a 2D ``nn.Module`` taking ``(N, C, S, S)`` slices) as
    the encoder with the other settings unchanged: the same engine runs every network
    (:meth:`tomofield.Engine.run`'s ``encoder``), none is built per network.
    """

    def __init__(
        self, engine: Engine | None = None, progress: Callable[[int, int], None] | None = None, **engine_kwargs: Any
    ) -> None:
        super().__init__()
        if engine is not None and engine_kwargs:
            raise InputError(
                f"TomofieldInferer: give an engine or its arguments, not both (got {', '.join(sorted(engine_kwargs))})"
            )
        self.engine = engine if engine is not None else Engine(**engine_kwargs)
        self.progress = progress

    def __call__(self, inputs: Tensor, network: Callable | None = None, *args: Any, **kwargs: Any) -> MetaTensor:
        """Heatmaps ``(B, K, H, W, D)`` of ``inputs`` ``(B, C, H, W, D)``; an unbatched ``(C, H, W, D)`` gives ``(K, H, W, D)``.

        Every item needs its affine: a MetaTensor from MONAI's loaders (``meta["affine"]``,
        ``(B, 4, 4)`` once batched).
        """
        if args or kwargs:
            raise InputError(f"TomofieldInferer takes no network arguments, got {len(args)} and {sorted(kwargs)}")
        if not isinstance(inputs, MetaTensor):
            raise InputError(
                "TomofieldInferer needs MetaTensors with their affine (MONAI's LoadImage gives them), got "
                f"{type(inputs).__name__}: without the affine the volume's axes and voxel sizes are unknown"
            )
        batched = inputs.ndim == 5
        if inputs.ndim not in (4, 5):
            raise InputError(
                f"expected (B, C, H, W, D) or (C, H, W, D) inputs in MONAI's axis order, got shape {tuple(inputs.shape)}"
            )
        affines = inputs.affine if batched else inputs.affine[None]
        items = inputs.as_tensor() if batched else inputs.as_tensor()[None]
        if affines.ndim == 2:  # one affine for a batch not collated by MONAI
            affines = affines[None].expand(items.shape[0], 4, 4)
        if affines.shape[0] != items.shape[0]:
            raise InputError(f"{items.shape[0]} volume(s) but {affines.shape[0]} affine(s) in the metadata")
        if network is not None and not isinstance(network, nn.Module):
            raise InputError(
                f"TomofieldInferer: network must be a 2D encoder (torch.nn.Module), got {type(network).__name__}"
            )
        heats = []
        for item, affine in zip(items, affines, strict=True):
            volume = Volume.from_array(item, affine.detach().cpu().double().numpy(), layout="ijk")
            heat = self.engine.run(volume, self.progress, encoder=network)
            heats.append(heat.to_array("ijk").to(item.device))
        out = torch.stack(heats) if batched else heats[0]
        result = MetaTensor(out, meta=dict(inputs.meta), applied_operations=list(inputs.applied_operations))
        result.is_batch = inputs.is_batch
        return result
