"""Numeric tests of tomofield.cam: reference maps, batch semantics, hook hygiene, errors."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomofield.cam import CAM_METHODS, cam_maps, normalize_maps, stage_module

METHODS = ["gradcam", "gradcam++", "layercam", "scorecam"]
GRAD_METHODS = ["gradcam", "gradcam++", "layercam"]
HEAD_SCALE = 100.0  # makes Grad-CAM++'s g^2 and S g^3 terms dominate its 1e-6 stabiliser


def _resnet(in_chans: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    # zero_init_last=False: timm zeroes the last BN of each block, which makes the random
    # network's residual branches vanish and the maps degenerate.
    model = timm.create_model("resnet10t", num_classes=1, in_chans=in_chans, zero_init_last=False)
    with torch.no_grad():
        model.fc.weight.mul_(HEAD_SCALE)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _resnet(in_chans=1, seed=0)


@pytest.fixture(scope="module")
def images() -> Tensor:
    # Non-square so that any (H, W) swap in upsampling or masking shows up.
    return torch.randn(2, 1, 48, 80, generator=torch.Generator().manual_seed(1))


def _lib_normalize(maps: Tensor) -> Tensor:
    """pytorch-grad-cam's scale_cam_image normalisation: (m - min) / (1e-7 + max(m - min))."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (1e-7 + shifted.amax(dim=(-2, -1), keepdim=True))


def _no_hooks_left(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            assert not getattr(mod, attr), f"{attr} left on {name or 'model'}"
        assert not mod._backward_pre_hooks, f"_backward_pre_hooks left on {name or 'model'}"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
@pytest.mark.parametrize("method", METHODS)
def test_matches_pytorch_grad_cam(model: nn.Module, images: Tensor, method: str, layer: int):
    """Raw maps equal pytorch-grad-cam's at feature resolution and after its upsampling.

    The reference runs its whole public pipeline (its hooks, backward, targets, Score-CAM
    batches). A spy on the instance's ``get_cam_image`` records its feature-resolution map
    before post-processing, so the maps are compared where cam_maps returns them, raw (1e-5
    relative) and after its normalisation (1e-4). Its final output, ReLU -> normalise ->
    cv2.resize -> normalise, is reproduced from our raw maps with bilinear
    ``align_corners=False`` interpolation (cv2 INTER_LINEAR's half-pixel convention).
    """
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "layercam": pgc.LayerCAM,
        "scorecam": pgc.ScoreCAM,
    }
    if method == "scorecam":
        images = images[:1]  # 64-512 masked forwards per image; batching is tested below
    ours = cam_maps(model, images, method=method, layer=layer)
    stride = 2 ** (layer + 1)
    assert ours.shape == (len(images), 1, -(-48 // stride), -(-80 // stride))

    with classes[method](model, target_layers=[stage_module(model, layer)]) as ref:
        recorded: list[np.ndarray] = []
        get_cam_image = ref.get_cam_image

        def spy(*args, **kwargs):
            out = get_cam_image(*args, **kwargs)
            recorded.append(out)
            return out

        ref.get_cam_image = spy
        ref.batch_size = 64
        final = ref(input_tensor=images, targets=[ClassifierOutputTarget(0)] * len(images))
    model.zero_grad(set_to_none=True)  # the reference uses backward(), which fills .grad
    _no_hooks_left(model)
    raw = torch.from_numpy(np.maximum(recorded[0], 0))[:, None]

    span = raw.flatten(1).amax(1) - raw.flatten(1).amin(1)
    assert (span > 1e-3 * raw.abs().max()).all(), "degenerate reference maps: test is vacuous"
    torch.testing.assert_close(ours, raw, rtol=1e-5, atol=1e-5 * raw.abs().max().item())
    torch.testing.assert_close(_lib_normalize(ours), _lib_normalize(raw), rtol=0, atol=1e-4)

    up = F.interpolate(_lib_normalize(ours), size=images.shape[-2:], mode="bilinear")
    mine_final = _lib_normalize(F.relu(up))[:, 0]
    torch.testing.assert_close(mine_final, torch.from_numpy(final), rtol=0, atol=1e-4)


def test_gradcam_and_layercam_analytic_at_last_stage(model: nn.Module, images: Tensor):
    """Behind layer4 a ResNet is global average pooling + linear, so dY/dA_k = w_k / (h w)."""
    acts = model.forward_features(images).detach()
    w = model.fc.weight[0].detach()[None, :, None, None]
    hw = acts.shape[-2] * acts.shape[-1]
    expected_grad = F.relu((w * acts).sum(1, keepdim=True)) / hw
    expected_layer = F.relu((F.relu(w) * acts).sum(1, keepdim=True)) / hw
    tol = {"rtol": 1e-5, "atol": 1e-6 * expected_layer.max().item()}
    torch.testing.assert_close(cam_maps(model, images, method="gradcam"), expected_grad, **tol)
    torch.testing.assert_close(cam_maps(model, images, method="layercam"), expected_layer, **tol)


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_at_a_time(method: str):
    model = _resnet(in_chans=3, seed=2)
    x = torch.randn(6, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    # Score-CAM chunks of 100 cross sample boundaries (64 channels per sample at layer 1).
    batched = cam_maps(model, x, method=method, layer=1, scorecam_batch=100)
    single = [cam_maps(model, s[None], method=method, layer=1, scorecam_batch=37) for s in x]
    single = torch.cat(single)
    assert batched.shape == (6, 1, 6, 10)
    assert (batched.amax(dim=(1, 2, 3)) > 0).sum() >= 4, "mostly empty maps: test is vacuous"
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5 * single.abs().max().item())
    _no_hooks_left(model)


def test_hooks_released_and_no_param_grads(model: nn.Module, images: Tensor):
    for method in METHODS:
        cam_maps(model, images[:1], method=method, layer=1)
        _no_hooks_left(model)
    for method in METHODS:  # fails after the forward pass, with the hook registered
        with pytest.raises(ValueError, match=r"target=5 .*valid targets are 0\.\.0"):
            cam_maps(model, images[:1], method=method, layer=2, target=5)
        _no_hooks_left(model)


def test_repeated_calls_do_not_leak(model: nn.Module, images: Tensor):
    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() pokes deprecated torch attributes
            warnings.simplefilter("ignore")
            return sum(isinstance(o, Tensor) for o in gc.get_objects())

    x = images[:1, :, :32, :32]
    cam_maps(model, x, method="gradcam++", layer=3)
    before = live_tensors()
    for _ in range(20):
        cam_maps(model, x, method="gradcam++", layer=3)
        _no_hooks_left(model)
    assert live_tensors() == before


@pytest.mark.parametrize("method", METHODS)
def test_no_grad_works_and_inference_mode(model: nn.Module, images: Tensor, method: str):
    x = images[:1, :, :32, :32]
    expected = cam_maps(model, x, method=method, layer=1)
    with torch.no_grad():
        torch.testing.assert_close(cam_maps(model, x, method=method, layer=1), expected)
    with torch.inference_mode():
        x_inf = x.clone()
        if CAM_METHODS[method].uses_gradients:
            with pytest.raises(RuntimeError, match=r"inference_mode\(\).*no_grad"):
                cam_maps(model, x_inf, method=method, layer=1)
        else:  # Score-CAM needs no gradients
            torch.testing.assert_close(cam_maps(model, x_inf, method=method, layer=1), expected)
    # An inference tensor used outside inference_mode still works.
    torch.testing.assert_close(cam_maps(model, x_inf, method=method, layer=1), expected)
    _no_hooks_left(model)


def test_stage_module_follows_feature_info(model: nn.Module):
    assert stage_module(model, 0) is model.act1
    for i in range(1, 5):
        assert stage_module(model, i) is getattr(model, f"layer{i}")


def test_unknown_method_lists_valid_ones(model: nn.Module, images: Tensor):
    with pytest.raises(ValueError) as err:
        cam_maps(model, images, method="gradcam+++")
    msg = str(err.value)
    assert "'gradcam+++'" in msg
    assert all(name in msg for name in METHODS)


@pytest.mark.parametrize("layer", [5, -1, "layer4", 2.0, True])
def test_bad_layer_names_value_and_stages(model: nn.Module, images: Tensor, layer: object):
    with pytest.raises(ValueError) as err:
        cam_maps(model, images, method="gradcam", layer=layer)
    msg = str(err.value)
    assert f"layer={layer!r}" in msg and "0..4" in msg
    assert all(f"{i}=layer{i}" in msg for i in range(1, 5)) and "0=act1" in msg


def test_other_input_errors(model: nn.Module, images: Tensor):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got \(1, 48, 80\)"):
        cam_maps(model, images[0], method="gradcam")
    with pytest.raises(ValueError, match="feature_info"):
        cam_maps(nn.Sequential(nn.Conv2d(1, 1, 3)).eval(), images, method="gradcam")
    model.train()
    try:
        with pytest.raises(ValueError, match=r"model\.eval\(\)"):
            cam_maps(model, images, method="gradcam")
    finally:
        model.eval()


def test_normalize_maps():
    maps = torch.stack([torch.full((1, 3, 3), 7.0), torch.arange(9.0).view(1, 3, 3) - 4])
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.zeros(1, 3, 3))
    torch.testing.assert_close(out[1], torch.arange(9.0).view(1, 3, 3) / 8)
