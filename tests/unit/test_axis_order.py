"""Axis order and orientation: arrays in any order with their affine, heatmaps that do not depend on storage."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tomofield import Engine, InputError, Volume, load_volume
from tomofield.batch import engine_differences
from tomofield.io import Reorientation

SHAPE_IJK = (7, 6, 5)
AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 2.0, 0, 20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def _canonical() -> np.ndarray:
    return np.random.default_rng(3).random(SHAPE_IJK).astype(np.float32)


def stored_copy(arr: np.ndarray, affine: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]):
    """The same scan stored otherwise: stored voxel axis a is canonical axis perm[a], reversed if flips[a]."""
    out = np.transpose(arr, perm)
    out = np.flip(out, [a for a in range(3) if flips[a]]).copy()
    to_canonical = np.zeros((4, 4))
    to_canonical[3, 3] = 1
    for a in range(3):
        c = perm[a]
        to_canonical[c, a] = -1.0 if flips[a] else 1.0
        to_canonical[c, 3] = arr.shape[c] - 1 if flips[a] else 0.0
    return out, affine @ to_canonical


ORIENTATIONS = [(p, f) for p in itertools.permutations(range(3)) for f in itertools.product([False, True], repeat=3)]


def test_every_storage_order_turns_back_to_the_canonical_array_exactly():
    canon = Volume.from_array(_canonical(), AFFINE)
    assert Reorientation.of(AFFINE).identity
    for perm, flips in ORIENTATIONS:
        arr, affine = stored_copy(_canonical(), AFFINE, perm, flips)
        vol = Volume.from_array(arr, affine)
        turn = Reorientation.of(affine)
        assert torch.equal(turn.forward(vol.data), canon.data), (perm, flips)
        assert torch.equal(turn.backward(turn.forward(vol.data)), vol.data)
        assert turn.spacing(vol.spacing) == canon.spacing
        assert turn.identity == (perm == (0, 1, 2) and not any(flips))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(head="sum", directions=12, slices=6, slice_size=16)


def test_the_heatmap_does_not_depend_on_how_the_scan_is_stored(engine):
    reference = engine.run(Volume.from_array(_canonical(), AFFINE)).data
    for perm, flips in ORIENTATIONS[::5] + [((0, 1, 2), (True, True, False))]:  # LPS among them
        arr, affine = stored_copy(_canonical(), AFFINE, perm, flips)
        heat = engine.run(Volume.from_array(arr, affine))
        assert heat.data.shape[1:] == torch.Size(arr.shape[::-1])  # on the stored grid
        assert torch.equal(Reorientation.of(affine).forward(heat.data), reference), (perm, flips)


def test_the_stored_frame_is_the_old_behaviour_and_differs_for_lps(engine):
    arr, affine = stored_copy(_canonical(), AFFINE, (0, 1, 2), (True, True, False))
    lps = Volume.from_array(arr, affine)
    stored = engine.with_options(orientation="stored")
    assert torch.equal(stored.run(lps).data, stored.reconstruct(lps.data, lps.spacing))
    reference = engine.run(Volume.from_array(_canonical(), AFFINE)).data
    assert not torch.allclose(Reorientation.of(affine).forward(stored.run(lps).data), reference, atol=1e-3)


def test_from_array_in_either_order_is_what_load_volume_reads(tmp_path: Path):
    arr = np.random.default_rng(0).random((4, 5, 6, 2)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))
    loaded = load_volume(path)
    ijk = Volume.from_array(np.moveaxis(arr, 3, 0), AFFINE)  # MONAI / torchio: (C, i, j, k)
    dhw = Volume.from_array(loaded.data.numpy(), AFFINE, layout="dhw")
    for vol in (ijk, dhw):
        assert torch.equal(vol.data, loaded.data) and vol.spacing == loaded.spacing
    single = Volume.from_array(arr[..., 0], AFFINE)  # nibabel's (i, j, k)
    assert torch.equal(single.data, loaded.data[:1])


def test_a_volume_whose_spacing_or_header_is_in_the_other_order_is_refused():
    data = torch.zeros(1, 5, 6, 7)  # (C, D, H, W) of an (i, j, k) = (7, 6, 5) grid
    with pytest.raises(InputError, match=r"affine's \(i, j, k\) order"):
        Volume(data, AFFINE, (1.5, 2.0, 3.0))
    with pytest.raises(InputError, match=r"contradicts the affine"):
        Volume(data, AFFINE, (1.0, 1.0, 1.0))
    header = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), AFFINE).header  # the (C, i, j, k) mistake
    with pytest.raises(InputError, match=r"another axis order"):
        Volume(data, AFFINE, (3.0, 2.0, 1.5), header)
    with pytest.raises(InputError, match=r"unknown layout 'kji'; valid: ijk, dhw"):
        Volume.from_array(np.zeros((2, 2, 2)), AFFINE, layout="kji")
    assert Volume(data, AFFINE, (3.0, 2.0, 1.5)).spacing == (3.0, 2.0, 1.5)


def test_an_old_record_is_stale_for_orientation_only_where_the_frames_differ():
    old = {"settings": {"directions": 12}}  # written before the setting: the stored frame
    now = {"settings": {"directions": 12, "orientation": "canonical"}}
    _, lps = stored_copy(_canonical(), AFFINE, (0, 1, 2), (True, True, False))
    assert engine_differences(old, now, AFFINE) == []
    assert engine_differences(old, now, lps) == ["orientation stored -> canonical"]
    assert engine_differences(old, now) == ["orientation stored -> canonical"]
