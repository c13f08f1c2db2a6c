"""``python -m benchmarks.brain OUT``: small, faint lesions on real brain anatomy, the benchmark of issue 27.

Every case is the MNI152 2009c T1 template (the copy the ``nilearn`` wheel carries: ``pip
install nilearn``; nothing is downloaded at run time) seen as one scan of a population:

* its **pose** varies (a rotation of up to ``--rotation`` degrees about each axis, an
  isotropic scale of 0.93-1.07, a shift of up to 6 mm), resampled onto a ``--spacing`` mm
  grid (3 mm: 66 x 78 x 63 voxels) after an anti-aliasing blur;
* positives carry ``--lesions`` lesions, drawn on the scan's grid: rotated ellipsoids of
  ``--semi-axes`` mm (3-9 mm: 1-3 voxels at 3 mm) centred in the white matter, ``1 + c``
  times as bright as the white matter around them, ``c`` in ``--contrast`` (0.35-0.7),
  with a one-voxel partial-volume edge;
* the **scanner** differs per scan: a smooth multiplicative bias field (+-10-25 %), Rician
  noise of 2-5 % of the white matter, and an arbitrary gain, stored as int16.

The lesion mask is the set of voxels whose centre lies inside a lesion's ellipsoid. Only
about 5-25 % of the slices of a positive cut a lesion, so every slice's volume label is
mostly noise: the common case of multiple sclerosis, metastases and small nodules.

Writes ``images/``, ``masks/``, ``dataset.csv``, ``train.csv``, ``val.csv`` (the layout of
``tomofield synth``) and ``brain.json`` with the settings. Seeds: the project trains on
0-99 (``docs/benchmarks.md`` names the ones it used) and measures on 2700-2799, used
nowhere else.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
#: White-matter probability (of 255) where a lesion's centre may lie.
WM_CORE = 0.9


def template_dir() -> Path:
    """The folder of the MNI152 template files inside the installed ``nilearn`` (not imported: its data only)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("benchmarks.brain needs the MNI152 template of the nilearn wheel: pip install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@lru_cache(maxsize=4)
def template(blur_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm T1 blurred by ``blur_mm`` (sigma), the white-matter probability (0-1), and the affine."""
    img = nib.load(str(template_dir() / T1))
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(str(template_dir() / WM)).dataobj, dtype=np.float32) / 255.0
    return ndi.gaussian_filter(t1, blur_mm) if blur_mm > 0 else t1, wm, img.affine


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by up to ``max_deg`` degrees about each axis."""
    out = np.eye(3)
    for axis in range(3):
        a = np.deg2rad(rng.uniform(-max_deg, max_deg))
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def draw_lesions(
    rng: np.random.Generator, wm: np.ndarray, count: int, semi_axes: tuple[float, float], spacing: float
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``count`` ellipsoids (centre in voxels, semi-axes in voxels, rotation) centred in the white matter, apart."""
    lesions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    core = wm >= WM_CORE
    for _ in range(count):
        axes = np.clip(rng.uniform(*semi_axes) * rng.uniform(0.75, 1.25, 3), *semi_axes) / spacing
        room = ndi.binary_erosion(core, iterations=max(1, int(round(axes.max() * 0.6))))
        free = np.argwhere(room if room.any() else core)
        for _ in range(100):
            c = free[rng.integers(len(free))] + rng.uniform(-0.5, 0.5, 3)
            if all(np.linalg.norm(c - o) > a.max() + axes.max() + 2 for o, a, _ in lesions):
                break
        lesions.append((c, axes, _random_rotation(rng)))
    return lesions


def _radius(points: np.ndarray, lesion: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Normalised radius (1 on the surface) of ``points`` (..., 3) in voxels, for one ellipsoid."""
    c, axes, rot = lesion
    local = (points - c) @ rot  # the ellipsoid's own frame
    return np.sqrt(((local / axes) ** 2).sum(-1))


def make_case(
    rng: np.random.Generator,
    positive: bool,
    *,
    spacing: float = 3.0,
    rotation: float = 8.0,
    lesions: tuple[int, int] = (1, 4),
    semi_axes: tuple[float, float] = (3.0, 9.0),
    contrast: tuple[float, float] = (0.35, 0.7),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scan: int16 image, uint8 lesion mask (both in the stored ``(i, j, k)`` order) and its affine.

    The anatomy is resampled onto the scan's grid first (the pose); lesions are then drawn in
    that grid, as a scan at this resolution shows them: each voxel ``1 + c w`` times its
    value, ``w`` the share of the voxel inside the ellipsoid (a one-voxel partial-volume
    ramp), relative to the median white matter around the lesion.
    """
    t1, wm, tpl_affine = template(0.4 * spacing)
    shape = tuple(int(np.ceil(n / spacing)) for n in t1.shape)
    # pose: output voxel -> template voxel (the template's voxels are 1 mm)
    rot, scale, shift = _rotation(rng, rotation), rng.uniform(0.93, 1.07), rng.uniform(-6, 6, 3)
    centre_out, centre_in = (np.asarray(shape) - 1) / 2, (np.asarray(t1.shape) - 1) / 2
    matrix = rot * spacing / scale
    offset = centre_in + shift - matrix @ centre_out
    image = ndi.affine_transform(t1, matrix, offset, output_shape=shape, order=1, mode="constant")
    wm_out = ndi.affine_transform(wm, matrix, offset, output_shape=shape, order=1, mode="constant")
    mask = np.zeros(shape, dtype=np.uint8)
    if positive:
        wm_level = image[wm_out > WM_CORE]
        for lesion in draw_lesions(rng, wm_out, int(rng.integers(lesions[0], lesions[1] + 1)), semi_axes, spacing):
            c, axes = lesion[0], lesion[1]
            box = tuple(
                slice(max(int(c[i] - axes.max() - 2), 0), min(int(c[i] + axes.max() + 3), shape[i])) for i in range(3)
            )
            grid = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), -1)
            r = _radius(grid.astype(np.float64), lesion)
            weight = np.clip((1 - r) * axes.min() + 0.5, 0, 1)  # the voxel's share, a one-voxel ramp
            near = (r > 1.3) & (wm_out[box] > 0.5)
            level = float(np.median(image[box][near])) if near.any() else float(np.median(wm_level))
            image[box] += weight * rng.uniform(*contrast) * level
            mask[box] |= (r <= 1).astype(np.uint8)
    wm_level = float(np.median(t1[wm > WM_CORE]))
    bias = np.exp(rng.uniform(0.1, 0.25) * _smooth_noise(rng, shape, np.asarray(shape) / 4))
    sigma = rng.uniform(0.02, 0.05) * wm_level
    noisy = np.hypot(image * bias + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    gain = float(np.exp(rng.uniform(np.log(2.0), np.log(40.0))))  # int16 units per template unit
    stored = np.clip(np.rint(gain * noisy), 0, np.iinfo(np.int16).max).astype(np.int16)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = tpl_affine[:3, 3]
    return stored, mask, affine


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def write_dataset(out: Path, *, n: int, seed: int, val_fraction: float = 0.25, **settings) -> dict[str, Path]:
    """``n`` scans (half positive) in ``out`` (new or empty), with the CSVs of ``tomofield synth`` and ``brain.json``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; give a new folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    rows = []
    for i, label in enumerate(labels):
        image, mask, affine = make_case(np.random.default_rng([seed, i]), bool(label), **settings)
        name = f"case_{i:03d}.nii.gz"
        for folder, array in (("images", image), ("masks", mask)):
            img = nib.Nifti1Image(array, affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(out / folder / name))
        rows.append((f"images/{name}", int(label), f"masks/{name}"))
    val = set()
    for c in (0, 1):
        members = np.flatnonzero(labels == c)
        val.update(int(i) for i in rng.permutation(members)[: max(1, round(val_fraction * len(members)))])
    paths = {key: out / f"{key}.csv" for key in ("dataset", "train", "val")}
    for key, keep in (("dataset", lambda i: True), ("train", lambda i: i not in val), ("val", lambda i: i in val)):
        with open(paths[key], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "label", "mask"])
            w.writerows(r for i, r in enumerate(rows) if keep(i))
    record = {"generator": "benchmarks.brain", "template": T1, "n": n, "seed": seed, "val_fraction": val_fraction}
    (out / "brain.json").write_text(json.dumps(record | settings, indent=1) + "\n", encoding="utf-8")
    return paths


def _pair(text: str, kind=float) -> tuple:
    lo, hi = (kind(v) for v in text.split(","))
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.brain", description=__doc__)
    p.add_argument("out", type=Path, help="new folder")
    p.add_argument("--n", type=int, default=64, help="scans, half positive")
    p.add_argument("--seed", type=int, required=True, help="0-99 to train on, 2700-2799 to measure on")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm")
    p.add_argument("--rotation", type=float, default=8.0, help="largest rotation about each axis, degrees")
    p.add_argument("--lesions", default="1,4", help="lesions per positive, LO,HI")
    p.add_argument("--semi-axes", default="3,9", help="lesion semi-axes in mm, LO,HI")
    p.add_argument("--contrast", default="0.35,0.7", help="lesion brightness over the white matter, LO,HI")
    a = p.parse_args(argv)
    paths = write_dataset(
        a.out,
        n=a.n,
        seed=a.seed,
        val_fraction=a.val_fraction,
        spacing=a.spacing,
        rotation=a.rotation,
        lesions=_pair(a.lesions, int),
        semi_axes=_pair(a.semi_axes),
        contrast=_pair(a.contrast),
    )
    print("wrote " + ", ".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
