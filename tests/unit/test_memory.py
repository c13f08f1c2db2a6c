"""Out-of-memory handling: smaller batches on OOM, early refusal of grids that cannot fit."""

from __future__ import annotations

import pytest
import torch

from tomofield import Engine, InputError
from tomofield.pipeline import check_memory


class PickyHead:
    """The sum head, but 'out of memory' for batches above ``limit`` slices."""

    needs_encoder = False
    needs_grad = False

    def __init__(self, limit: int) -> None:
        self.limit, self.sizes = limit, []

    def __call__(self, encoder, slices):
        self.sizes.append(slices.shape[0])
        if slices.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return slices.mean(dim=(2, 3), keepdim=True)


def test_out_of_memory_halves_the_batch_and_gives_the_same_heatmap():
    vol = torch.rand(1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    kw = dict(filter="tomo", directions=12, slices=6, slice_size=12, device="cpu", skip_empty=False)
    ref = Engine(head="sum", batch_size=64, **kw).reconstruct(vol)
    head = PickyHead(limit=10)
    eng = Engine(head=head, batch_size=64, **kw)
    with pytest.warns(RuntimeWarning, match="out of memory with batches of 64 slices; continuing with 32"):
        heat = eng.reconstruct(vol)
    # the shrink is the scorer's state, kept for the engine's next volumes; the config is untouched
    assert eng.scorer_for(1).batch_size == 8 and max(s for s in head.sizes[-5:]) <= 8
    assert eng.config.batch_size == 64
    torch.testing.assert_close(heat, ref, atol=1e-5, rtol=1e-5)
    head.sizes.clear()
    torch.testing.assert_close(eng.reconstruct(vol), ref, atol=1e-5, rtol=1e-5)
    assert max(head.sizes) <= 8  # the next volume starts at the size that fits


def test_out_of_memory_at_batch_one_is_raised():
    eng = Engine(
        head=PickyHead(limit=0), batch_size=4, directions=2, slices=3, slice_size=8, device="cpu", skip_empty=False
    )
    with pytest.raises(torch.OutOfMemoryError):  # a batch of one cannot shrink: the error is the user's to see
        eng.reconstruct(torch.rand(1, 8, 8, 8))


def test_grid_too_large_fails_early_with_the_memory_needed():
    with pytest.raises(InputError, match=r"needs 0.50 GiB on cpu but 0.10 GiB are free"):
        check_memory(1, (512, 512, 256), torch.device("cpu"), free=int(0.1 * 2**30))
    check_memory(1, (64, 64, 64), torch.device("cpu"), free=2**30)  # fits: no error
