"""Golden cases: small fixed runs whose heatmaps are pinned in ``tests/data/golden``.

Each case writes its inputs from a seed, runs one reconstruction through the CLI (so
the CLI's defaults are pinned too) or through the library, and returns its heatmaps
as float32 arrays in tomofield's (C, D, H, W) order. The encoder weights are made from
a seed with ``torch.manual_seed`` and saved as safetensors beside the inputs, so a case
does not depend on how a timm version initialises a model.

``python tests/golden/golden_cases.py`` (re)writes the pinned arrays; run it only from a commit
whose behaviour is the reference, and say so in the commit message.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
FAST = ["-L", "7", "-M", "5", "--slice-size", "24", "--device", "cpu"]


def _volume(seed: int, shape=(14, 16, 12)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    vol = rng.normal(0.0, 0.1, shape)
    c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 12] += 1.0
    return vol.astype(np.float32)


def _write_inputs(root: Path) -> dict[str, Path]:
    """A volume at 2 x 1 x 1.5 mm, a 3-volume dataset CSV and seeded resnet10t weights."""
    import timm
    from safetensors.torch import save_file

    from tomofield.io import affine_for_spacing, save_nifti

    spacing = (2.0, 1.0, 1.5)
    paths = {"volume": save_nifti(root / "vol.nii.gz", torch.from_numpy(_volume(0)), affine_for_spacing(spacing))}
    rows = []
    for i in range(3):
        save_nifti(root / f"d{i}.nii.gz", torch.from_numpy(_volume(10 + i)), affine_for_spacing(spacing))
        rows.append(f"d{i}.nii.gz,{i % 2}")
    (root / "data.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    paths["csv"] = root / "data.csv"
    torch.manual_seed(1234)
    model = timm.create_model("resnet10t", num_classes=1, in_chans=1)
    with torch.no_grad():  # a random init scores every slice about the same: spread the logits
        model.get_classifier().weight.mul_(50.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    paths["weights"] = root / "w.safetensors"
    return paths


def _read_nifti(path: Path) -> np.ndarray:
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    return np.ascontiguousarray(data.transpose(3, 2, 1, 0))  # (i, j, k, c) -> (C, D, H, W)


def _cli(*args: object) -> None:
    from click.testing import CliRunner

    from tomofield.cli import cli

    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if res.exit_code != 0:
        raise RuntimeError(f"tomofield {' '.join(map(str, args))} failed:\n{res.output}")


def _cli_case(*extra: object) -> Callable[[dict[str, Path], Path], dict[str, np.ndarray]]:
    def case(inp: dict[str, Path], out: Path) -> dict[str, np.ndarray]:
        _cli("run", inp["volume"], "-o", out / "h.nii.gz", *FAST, *extra)
        return {"heatmap": _read_nifti(out / "h.nii.gz")}

    return case


def _weights(inp: dict[str, Path]) -> list[object]:
    return ["--weights", inp["weights"]]


def case_sum_tomo(inp, out):
    return _cli_case("--head", "sum", "--filter", "tomo")(inp, out)


def case_sum_none_sphere_tight(inp, out):
    return _cli_case("--head", "sum", "--filter", "none", "--sphere", "--extent", "tight", "--seed", "3")(inp, out)


def case_logit_tomo(inp, out):
    """Plain ToNNO (fbp), pinned before ``filled`` became the logit head's default."""
    return _cli_case("--head", "logit", "--reconstructor", "fbp", *_weights(inp))(inp, out)


def case_logit_default_filled(inp, out):
    """The logit head's default reconstructor, ``filled`` (issue 18)."""
    return _cli_case("--head", "logit", *_weights(inp))(inp, out)


def case_logit_axial(inp, out):
    return _cli_case("--head", "logit", "--sampler", "axial", "--filter", "none", *_weights(inp))(inp, out)


def case_logit_orthogonal_normalized(inp, out):
    return _cli_case(
        "--head",
        "logit",
        "--sampler",
        "orthogonal",
        "--geometry",
        "normalized",
        "--reconstructor",
        "fbp",
        *_weights(inp),
    )(inp, out)


def case_layercam_tomo(inp, out):
    return _cli_case("--head", "layercam", "--layer", "3", *_weights(inp))(inp, out)


def case_gradcam_none_post(inp, out):
    return _cli_case("--head", "gradcam", "--layer", "2", "--filter", "none", "--post", "normalize", *_weights(inp))(
        inp, out
    )


def case_avgpool_tomo(inp, out):
    return _cli_case("--head", "avgpool", "--pool", "6")(inp, out)


def case_dataset_csv(inp, out):
    _cli("run", inp["csv"], "-o", out / "hm", *FAST, "--head", "logit", "--reconstructor", "fbp", *_weights(inp))
    return {f"d{i}": _read_nifti(out / "hm" / f"d{i}.nii.gz") for i in range(3)}


def case_library_engine(inp, out):
    """The library path: Engine from Python with non-default knobs, no CLI."""
    import tomofield

    volume = tomofield.load_volume([inp["volume"]])
    engine = tomofield.Engine(
        "resnet10t",
        "logit",
        "tomo",
        weights=str(inp["weights"]),
        device="cpu",
        directions=9,
        slices=6,
        slice_size=20,
        extent="tight",
        seed=5,
        batch_size=7,
        reconstructor="fbp",
    )
    return {"heatmap": engine.reconstruct(volume.data, volume.spacing).numpy()}


def case_library_filled(inp, out):
    """The filled reconstructor's fill (issue 18): options that make this seeded encoder's consensus regions."""
    import tomofield
    from tomofield.reconstructors import Filled

    volume = tomofield.load_volume([inp["volume"]])
    engine = tomofield.Engine(
        weights=str(inp["weights"]),
        reconstructor=Filled(threshold=-1.0, temperature=2.0),
        device="cpu",
        directions=9,
        slices=6,
        slice_size=20,
        seed=5,
    )
    return {"heatmap": engine.reconstruct(volume.data, volume.spacing).numpy()}


CASES = {name[len("case_") :]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def run_case(name: str, root: Path) -> dict[str, np.ndarray]:
    """Inputs in ``root/in``, outputs in ``root/out``; the arrays of case ``name``."""
    inp_dir, out_dir = root / "in", root / "out"
    inp_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return CASES[name](_write_inputs(inp_dir), out_dir)


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.npz"


def main() -> None:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            arrays = run_case(name, Path(tmp))
        np.savez_compressed(golden_path(name), **arrays)
        print(name, {k: v.shape for k, v in arrays.items()}, file=sys.stderr)


if __name__ == "__main__":
    main()
