"""The pytorch-grad-cam adapter: raw maps equal to the core CAM heads', the cross-slice scale kept,
every method of the library a head (or left out for a stated reason), the encoder left as found."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import tomofield
from tomofield import Engine, InputError, plugins
from tomofield.cli import cli
from tomofield.cli.toolkit import head_params
from tomofield.io import affine_for_spacing, save_nifti
from tomofield_gradcam.heads import LEFT_OUT, METHODS, PREFIX, PgcHead

#: Methods whose raw map is exactly proportional to the activations' scale on a positively
#: homogeneous network (weights independent of the scale, or gradients times activations).
LINEAR = {
    "gradcam",
    "hirescam",
    "xgradcam",
    "layercam",
    "gradcamelementwise",
    "eigencam",
    "eigengradcam",
    "segeigencam",
    "fem",
    "shapleycam",
}
TINY = dict(directions=3, slices=4, slice_size=32, device="cpu")


def head(name: str, **options):
    return plugins.get("head", name).factory(**options)


def score(h, model, x):
    """As the engine scores: under no_grad for the heads that differentiate, inference_mode otherwise."""
    with torch.no_grad() if h.needs_grad else torch.inference_mode():
        return h(model, x)


def close(actual, expected, rtol=1e-4):
    """Equal to ``rtol`` relative to the largest value of ``expected``."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def library_default(model, x, layer_name="layer2"):
    """pytorch-grad-cam's own Grad-CAM output: each slice's map min-max scaled to [0, 1] at the slice size."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.enable_grad(), GradCAM(model, [model.get_submodule(layer_name)]) as cam:
        maps = torch.from_numpy(cam(x.to(torch.float32), [ClassifierOutputTarget(0)] * len(x)))[:, None]
    model.zero_grad(set_to_none=True)  # the library's backward leaves parameter gradients behind
    return maps


class LibraryDefaultHead:
    """What an adapter keeping the library's scaling would score: pytorch-grad-cam's default Grad-CAM."""

    needs_encoder, needs_grad, compilable, options = True, True, False, ()

    def __call__(self, encoder, slices):
        return library_default(encoder, slices)


class LibraryDefaultPlugin:
    @tomofield.hookimpl
    def register_heads(self, register):
        register("library-default-gradcam", LibraryDefaultHead, "pytorch-grad-cam's [0, 1] Grad-CAM (test)")


def _stage_output(model, x, name):
    captured = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0]


# -- equal to the core heads -----------------------------------------------------------------
@pytest.mark.parametrize("layer", [1, 2, 4])
@pytest.mark.parametrize(
    "core,ours", [("gradcam", "gradcam"), ("layercam", "layercam"), ("gradcam++", "gradcamplusplus")]
)
def test_raw_maps_equal_the_core_cam_heads(gn_model, slices, core, ours, layer):
    mine = score(head(PREFIX + ours, layer=layer), gn_model, slices)
    theirs = score(head(core, layer=layer), gn_model, slices)
    side = 32 // gn_model.feature_info[layer]["reduction"]
    assert mine.shape == theirs.shape == (4, 1, side, side)
    assert theirs.abs().max() > 0
    close(mine, theirs)


def test_score_cam_equals_the_core_head(gn_model, slices):
    close(score(head("pgc-scorecam", layer=1), gn_model, slices), score(head("scorecam", layer=1), gn_model, slices))


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_tomographic_reconstruction_equals_the_core_heads(gn_model, volume, method):
    kw = dict(encoder=gn_model, head_options={"layer": 2}, filter="tomo", **TINY)
    mine = Engine(head=PREFIX + method, **kw).reconstruct(volume)
    theirs = Engine(head=method, **kw).reconstruct(volume)
    assert mine.shape == (1, 16, 16, 16) and theirs.abs().max() > 0
    close(mine, theirs)


# -- the cross-slice scale -------------------------------------------------------------------
def test_raw_maps_keep_the_cross_slice_scale_the_library_default_erases(fb_model, slices):
    scaled = slices.clone()
    scaled[1] *= 3.0
    h = head("pgc-gradcam", layer=2)
    raw, raw3 = score(h, fb_model, slices), score(h, fb_model, scaled)
    assert raw[1].abs().max() > 0
    close(raw3[1], 3.0 * raw[1])  # the slice's map grew with its input
    torch.testing.assert_close(raw3[[0, 2, 3]], raw[[0, 2, 3]])  # the others did not
    peaks = raw.amax(dim=(1, 2, 3))
    assert peaks.max() > 1.5 * peaks.min()  # slices keep their relative size
    # pytorch-grad-cam's default output: every slice in [0, 1], the scaled one unchanged,
    # so the assertion that holds for the raw maps fails on it
    lib, lib3 = library_default(fb_model, slices), library_default(fb_model, scaled)
    torch.testing.assert_close(lib.amax(dim=(1, 2, 3)), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(lib3[1], lib[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError):
        close(lib3[1], 3.0 * lib[1])


def test_tomographic_heatmap_follows_the_maps_scale_where_the_library_default_cannot(fb_model, volume):
    kw = dict(encoder=fb_model, head_options={"layer": 2}, filter="tomo", **TINY)
    heat, heat3 = (Engine(head="pgc-gradcam", **kw).reconstruct(v) for v in (volume, 3.0 * volume))
    assert heat.abs().max() > 0
    close(heat3, 3.0 * heat)
    plugins.register_plugin(LibraryDefaultPlugin(), "library-default")
    kw.pop("head_options")
    lib, lib3 = (Engine(head="library-default-gradcam", **kw).reconstruct(v) for v in (volume, 3.0 * volume))
    close(lib3, lib, rtol=1e-3)  # per-slice [0, 1] maps: the scale of the input is gone
    with pytest.raises(AssertionError):
        close(lib3, 3.0 * lib)


@pytest.mark.parametrize("name", ["pgc-eigencam", "pgc-hirescam"])
def test_eigencam_and_hirescam_give_a_tomographic_heatmap(gn_model, volume, name):
    heat = Engine(
        encoder=gn_model, head=name, head_options={"layer": 2}, filter="tomo", directions=6, slices=6, slice_size=32
    ).reconstruct(volume)
    assert heat.shape == (1, 16, 16, 16)
    assert bool(torch.isfinite(heat).all())
    assert heat.abs().max() > 0 and heat.std() > 1e-3 * heat.abs().max()  # neither zero nor constant


# -- every method ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(METHODS))
def test_every_method_runs_and_its_raw_maps_keep_their_scale(key, fb_model, three_logits, slices):
    spec = METHODS[key]
    model = three_logits if key == "finercam" else fb_model
    h = head(spec.name, **({"layer": 1} if spec.raw else {}))
    maps, maps3 = score(h, model, slices), score(h, model, 3.0 * slices)
    assert maps.dtype == torch.float32 and bool(torch.isfinite(maps).all()) and maps.abs().max() > 0
    if not spec.raw:  # FullGrad: the library's normalised map, which cannot see the scale
        assert maps.shape == (4, 1, 32, 32)
        torch.testing.assert_close(maps.amax(dim=(1, 2, 3)), torch.ones(4), atol=1e-5, rtol=0)
        close(maps3, maps, rtol=1e-3)
        return
    assert maps.shape == (4, 1, 8, 8)  # layer1's resolution, like the core CAM heads
    if key in LINEAR:
        close(maps3, 3.0 * maps)
    else:  # the weights depend on the scale too; the map still changes with it
        assert not torch.allclose(maps3, maps, rtol=1e-3, atol=1e-3 * float(maps.abs().max()))


def test_every_export_of_the_library_is_a_head_or_left_out_with_a_reason():
    import pytorch_grad_cam as lib

    exported = {name for name, obj in vars(lib).items() if isinstance(obj, type)}
    adapted = {m.cls for m in METHODS.values()}
    assert not adapted & set(LEFT_OUT)
    assert exported == adapted | set(LEFT_OUT), "a new pytorch-grad-cam class: adapt it or say why not"
    assert all(LEFT_OUT.values())


def test_heads_are_registered_one_per_method_and_share_the_core_options():
    comps = {c.name: c for c in plugins.components("head")}
    for key, spec in METHODS.items():
        comp = comps[PREFIX + key]
        assert comp.plugin == "pgc" and comp.name == spec.name
        assert ("NOT RAW" in comp.description) == (not spec.raw), comp.description
        assert ("raw map" in comp.description) == spec.raw
    for core in ("gradcam", "gradcam++", "layercam", "scorecam"):
        assert comps[core].plugin == plugins.BUILTIN  # no name taken from the built-ins
    shared = {hp.option.name: set(hp.heads) for hp in head_params() if hp.param == f"head_{hp.option.name}"}
    assert {"gradcam", "scorecam", "pgc-gradcam", "pgc-eigencam", "pgc-scorecam"} <= shared["layer"]
    assert {"gradcam", "logit", "pgc-gradcam", "pgc-scorecam", "pgc-fullgrad"} <= shared["target"]
    assert "pgc-eigencam" not in shared["target"] and "pgc-fullgrad" not in shared["layer"]
    ours = {o.name for o in PgcHead.options}
    assert all(hp.param == f"head_{hp.option.name}" for hp in head_params() if hp.option.name in ours)


def test_the_plugin_module_and_its_registration_stay_light():
    """tomofield imports the plugin at every start: no torch; listing the heads: no pytorch_grad_cam."""
    code = (
        "import sys, tomofield_gradcam\n"
        "assert 'torch' not in sys.modules, 'torch imported by the plugin module'\n"
        "from tomofield import plugins\n"
        "assert 'pgc-eigencam' in {c.name for c in plugins.components('head')}\n"
        "assert 'pytorch_grad_cam' not in sys.modules, 'pytorch_grad_cam imported by the registration'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


# -- options ---------------------------------------------------------------------------------
def test_relu_false_keeps_the_signed_map(gn_model, slices):
    signed = score(head("pgc-gradcam", layer=2, relu=False), gn_model, slices)
    assert (signed < 0).any() and (signed > 0).any()
    close(signed.clamp_min(0), score(head("pgc-gradcam", layer=2), gn_model, slices))


def test_eigencam_sign_is_fixed_per_slice_against_the_channel_sum(gn_model, slices):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    acts = _stage_output(gn_model, slices, "layer2")
    projection = torch.from_numpy(get_2d_projection(acts.numpy()))[:, None]
    as_library = score(head("pgc-eigencam", layer=2, orient=False, relu=False), gn_model, slices)
    close(as_library, projection)
    oriented = score(head("pgc-eigencam", layer=2, relu=False), gn_model, slices)
    close(oriented.abs(), projection.abs())
    total = acts.sum(dim=1, keepdim=True)
    centred = [m - m.mean(dim=(2, 3), keepdim=True) for m in (oriented, total)]
    assert ((centred[0] * centred[1]).sum(dim=(1, 2, 3)) >= 0).all()


def test_several_modules_are_upsampled_to_the_slice_and_averaged(gn_model, slices):
    both = score(head("pgc-layercam", module="layer1, layer2"), gn_model, slices)
    one = [score(head("pgc-layercam", module=name), gn_model, slices) for name in ("layer1", "layer2")]
    assert both.shape == (4, 1, 32, 32)
    up = [F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False) for m in one]
    close(both, (up[0] + up[1]) / 2)
    close(one[1], score(head("pgc-layercam", layer=2), gn_model, slices))  # a stage by name or by index


def test_module_names_reach_encoders_without_feature_info(slices):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    net = torch.nn.Sequential(net, torch.nn.Linear(8, 1)).eval()
    maps = score(head("pgc-hirescam", module="0.1"), net, slices)
    assert maps.shape == (4, 1, 32, 32) and maps.abs().max() > 0
    # the methods that read only the activations take any encoder output (here a feature map)
    features = torch.nn.Sequential(*net[0][:2]).eval()
    maps = score(head("pgc-eigencam", module="0"), features, slices)
    assert maps.shape == (4, 1, 32, 32) and maps.abs().max() > 0


# -- errors and hygiene ----------------------------------------------------------------------
def test_refusals_are_input_errors_naming_the_value(gn_model, slices):
    with pytest.raises(InputError, match=r"target=3 is out of range: the encoder has 1 output logit"):
        score(head("pgc-hirescam", target=3), gn_model, slices)
    with pytest.raises(InputError, match=r"target=3 is out of range"):
        score(head("pgc-fullgrad", target=3), gn_model, slices)
    with pytest.raises(InputError, match=r"needs an encoder with 2 or more output logits, this one has 1"):
        score(head("pgc-finercam"), gn_model, slices)
    with pytest.raises(InputError, match=r"module 'nope' is not a module of ResNet; its top-level modules: conv1"):
        score(head("pgc-eigencam", module="nope"), gn_model, slices)
    with pytest.raises(InputError, match=r"layer=9 is not a stage of ResNet"):
        score(head("pgc-eigencam", layer=9), gn_model, slices)
    with pytest.raises(InputError, match=r"module='layer2,,'"):
        head("pgc-eigencam", module="layer2,,")
    with pytest.raises(InputError, match=r"unknown pytorch-grad-cam method 'nope'"):
        PgcHead("nope")
    with pytest.raises(InputError, match=r"target.*out of range"):
        Engine(head="pgc-scorecam", head_options={"target": 3}, **TINY).reconstruct(torch.rand(1, 10, 10, 10))


def test_the_encoder_is_left_as_found(fb_model, slices):
    before = {k: v.clone() for k, v in fb_model.state_dict().items()}
    fb_model.train()
    try:
        for name in ("pgc-gradcam", "pgc-shapleycam", "pgc-ablationcam", "pgc-scorecam", "pgc-fullgrad"):
            score(head(name, **({} if name == "pgc-fullgrad" else {"layer": 1})), fb_model, slices)
            assert fb_model.training, name
    finally:
        fb_model.eval()
    for mod_name, mod in fb_model.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, mod_name
    assert all(p.grad is None for p in fb_model.parameters())
    for k, v in fb_model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_an_interrupted_ablation_cam_puts_the_layer_back(fb_model, slices, monkeypatch):
    layer1, calls = fb_model.layer1, []

    class Failing:
        def __call__(self, output):
            calls.append(1)
            if len(calls) > 6:  # the original scores pass, an ablation batch fails
                raise RuntimeError("interrupted")
            return output[..., 0]

    monkeypatch.setattr(PgcHead, "_targets", lambda self, outputs: [Failing()] * outputs.shape[0])
    with pytest.raises(RuntimeError, match="interrupted"):
        score(head("pgc-ablationcam", layer=1), fb_model, slices)
    assert fb_model.layer1 is layer1
    assert not any(type(m).__name__ == "AblationLayer" for m in fb_model.modules())


def test_cli_runs_a_pgc_head_with_the_shared_layer_option(tmp_path, volume):
    scan = save_nifti(tmp_path / "v.nii.gz", volume.numpy()[0].astype(np.float32), affine_for_spacing((1, 1, 1)))
    fast = ["-L", "3", "-M", "4", "--slice-size", "32", "--device", "cpu", "--random-weights"]
    out = tmp_path / "h.nii.gz"
    res = CliRunner().invoke(cli, ["run", str(scan), "-o", str(out), "--head", "pgc-eigencam", "--layer", "2", *fast])
    assert res.exit_code == 0, res.output
    assert out.exists()
    res = CliRunner().invoke(
        cli, ["run", str(scan), "-o", str(tmp_path / "g.nii.gz"), "--head", "pgc-eigencam", "--target", "1", *fast]
    )
    assert res.exit_code == 2 and "--target is not an option of head 'pgc-eigencam'" in res.output, res.output
