"""Map-valued heads through the whole pipeline: Fig. 4 of the paper, baselines, batching."""

from __future__ import annotations

import timm
import torch

from tomofield import Engine
from tomofield.demo import correlation
from tomofield.synth import ball_phantom

BALLS = [((0.2, 0.1, -0.2), 8.0, 1.0), ((-0.4, -0.3, 0.3), 6.0, 0.6), ((0.3, -0.4, 0.4), 4.0, 1.0)]


def recon(vol, pool, filt, **kw):
    cfg = dict(directions=150, slices=32, slice_size=64, geometry="normalized", device="cpu") | kw
    return Engine(head="avgpool", head_options={"pool": pool}, filter=filt, **cfg).reconstruct(vol)


def test_fig4_averaged_recovers_fine_maps_tomographic_wins_on_coarse_maps():
    vol = ball_phantom((48, 48, 48), (1, 1, 1), BALLS)
    fine_none, fine_tomo = correlation(recon(vol, 2, "none"), vol), correlation(recon(vol, 2, "tomo"), vol)
    coarse_none, coarse_tomo = correlation(recon(vol, 16, "none"), vol), correlation(recon(vol, 16, "tomo"), vol)
    assert fine_none > 0.9 and fine_none > fine_tomo
    assert coarse_tomo > 0.85 and coarse_tomo > coarse_none + 0.05


def test_axial_and_orthogonal_baselines_return_slices_at_full_resolution():
    """Maps equal to the slices (pool 1) at the volume's own grid read every voxel back."""
    torch.manual_seed(0)
    vol = torch.randn(1, 24, 24, 24)
    for sampler in ("axial", "orthogonal"):
        heat = Engine(
            head="avgpool", head_options={"pool": 1}, filter="none", sampler=sampler, slice_size=24, device="cpu"
        ).reconstruct(vol, (1.0, 1.0, 1.0))
        torch.testing.assert_close(heat, vol, atol=1e-4, rtol=1e-4)


def test_axial_sampler_matches_slice_wise_upsampled_maps():
    """Slice-wise CAM: each D-slice's coarse map, upsampled bilinearly back to H x W."""
    torch.manual_seed(1)
    vol = torch.rand(1, 6, 32, 32)
    heat = Engine(
        head="avgpool", head_options={"pool": 8}, filter="none", sampler="axial", slice_size=32, device="cpu"
    ).reconstruct(vol, (3.0, 1.0, 1.0))
    maps = torch.nn.functional.avg_pool2d(vol[0][:, None], 8)  # (D, 1, 4, 4)
    # the 4x4 cells are centred on pixels 3.5, 11.5, ...: interior pixels interpolate bilinearly
    up = torch.nn.functional.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(heat[0][:, 4:28, 4:28], up[:, 4:28, 4:28], atol=1e-4, rtol=1e-4)


def test_cam_heads_batch_equals_one_at_a_time():
    torch.manual_seed(2)
    model = timm.create_model("resnet10t", num_classes=1, in_chans=1).eval()
    vol = torch.rand(1, 16, 16, 16)
    for head in ("gradcam", "layercam"):
        kw = dict(
            encoder=model,
            head=head,
            head_options={"layer": 2},
            filter="tomo",
            directions=3,
            slices=4,
            slice_size=32,
            device="cpu",
        )
        one = Engine(batch_size=1, **kw).reconstruct(vol)
        many = Engine(batch_size=64, **kw).reconstruct(vol)
        assert one.shape == (1, 16, 16, 16) and one.abs().sum() > 0
        torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)
    assert not model._forward_hooks and all(p.grad is None for p in model.parameters())
