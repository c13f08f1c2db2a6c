"""A real MONAI pipeline with tomofield's inferer writes the heatmap `tomofield run` writes for the same file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.transforms import Compose, LoadImage, Orientation, SaveImage, Spacing

from tomofield import Engine, InputError, load_volume
from tomofield.cli import cli
from tomofield.integrations.monai import TomofieldInferer

SETTINGS = {"directions": 12, "slices": 6, "slice_size": 16}
FLAGS = ["--head", "sum", "-L", "12", "-M", "6", "--slice-size", "16", "--device", "cpu"]
PIXDIM = (1.5, 2.0, 2.5)  # per (i, j, k)


def _scan(tmp_path: Path, lps: bool) -> Path:
    """A 9 x 8 x 7 scan with a bright off-centre blob, stored RAS or LPS (the same anatomy)."""
    i, j, k = np.meshgrid(np.arange(9), np.arange(8), np.arange(7), indexing="ij")
    arr = (np.exp(-((i - 2.5) ** 2 + (j - 5) ** 2 + (k - 2) ** 2) / 4) + 0.1).astype(np.float32)
    affine = np.diag([*PIXDIM, 1.0])
    affine[:3, 3] = (-6.0, -7.0, 4.0)
    if lps:  # reverse i and j, and move the origin so that every voxel keeps its place in space
        arr = arr[::-1, ::-1].copy()
        affine = affine @ np.array([[-1, 0, 0, 8], [0, -1, 0, 7], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    path = tmp_path / ("lps.nii.gz" if lps else "ras.nii.gz")
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


@pytest.mark.parametrize("lps", [False, True], ids=["ras", "lps"])
def test_load_orientation_spacing_inferer_save_equals_tomofield_run(tmp_path: Path, lps: bool):
    src = _scan(tmp_path, lps)
    ran = tmp_path / "run.nii.gz"
    res = CliRunner().invoke(cli, ["run", str(src), "-o", str(ran), *FLAGS])
    assert res.exit_code == 0, res.output

    load = Compose(
        [LoadImage(image_only=True, ensure_channel_first=True), Orientation(axcodes="RAS"), Spacing(pixdim=PIXDIM)]
    )
    batch = list_data_collate([load(str(src))])  # (B, C, H, W, D) with (B, 4, 4) affines
    heat = TomofieldInferer(head="sum", device="cpu", **SETTINGS)(batch)
    assert isinstance(heat, MetaTensor) and heat.is_batch and tuple(heat.shape) == (1, 1, 9, 8, 7)
    saved_dir = tmp_path / "monai"
    SaveImage(output_dir=str(saved_dir), output_postfix="heat", separate_folder=False, resample=False)(
        decollate_batch(heat)[0]
    )
    (saved,) = saved_dir.glob("*_heat.nii.gz")

    want, want_affine = _canonical(ran)  # tomofield run wrote it on the stored grid (LPS for the LPS copy)
    got, got_affine = _canonical(saved)  # MONAI's pipeline works in RAS
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-5)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_the_network_monai_passes_is_the_encoder(tmp_path: Path):
    torch.manual_seed(0)
    from tomofield.encoders import build_encoder

    net = build_encoder("resnet10t", in_chans=1, norm="group-norm").eval()
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(_scan(tmp_path, False)))
    inferer = TomofieldInferer(head="logit", device="cpu", **SETTINGS)
    got = inferer(img, net)
    want = Engine(encoder=net, head="logit", device="cpu", **SETTINGS).run(load_volume(_scan(tmp_path, False)))
    assert tuple(got.shape) == (1, 9, 8, 7) and not got.is_batch
    torch.testing.assert_close(got.as_tensor(), want.data.permute(0, 3, 2, 1), rtol=1e-5, atol=1e-6)
    scorer = inferer.engine.scorer_for(1, net)
    assert inferer.engine.scorer_for(1, net) is scorer and scorer.encoder is net  # one engine, kept per network
    given = TomofieldInferer(Engine(head="logit", device="cpu", **SETTINGS))
    torch.testing.assert_close(given(img, net).as_tensor(), got.as_tensor())  # a given engine runs it too
    with pytest.raises(InputError, match="network must be a 2D encoder"):
        inferer(img, lambda x: x)


def test_inputs_without_an_affine_or_in_another_shape_are_refused():
    inferer = TomofieldInferer(head="sum", device="cpu", **SETTINGS)
    with pytest.raises(InputError, match="needs MetaTensors with their affine"):
        inferer(torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(InputError, match=r"expected \(B, C, H, W, D\) or \(C, H, W, D\)"):
        inferer(MetaTensor(torch.zeros(4, 4, 4)))
    with pytest.raises(InputError, match="an engine or its arguments, not both"):
        TomofieldInferer(Engine(head="sum"), directions=4)
