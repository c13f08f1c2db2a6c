"""The regression and features heads, the projection, and their reconstructions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tomofield import Engine, InputError, plugins
from tomofield.synth import ball_phantom
from tomofield_features import FeaturesHead, Projection, RegressionHead, fit_projection, pca
from tomofield_features.ssl import build_encoder


def test_hook_register_heads_from_entry_point():
    for name in ("regression", "features"):
        comp = plugins.get("head", name)
        assert comp.plugin == "features" and "tomofield-features" in comp.source


def test_hook_register_commands():
    import click

    from tomofield.cli import cli

    ctx = click.Context(cli)
    assert {"features", "pretrain"} <= set(cli.list_commands(ctx))
    assert cli.get_command(ctx, "pretrain").name == "pretrain"


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_encoder("resnet10t", 1, "group-norm").eval()


def test_features_head_shapes(resnet):
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert FeaturesHead()(resnet, x).shape == (3, 512, 1, 1)
        assert FeaturesHead(stage=1)(resnet, x).shape == (3, 64, 8, 8)
        assert FeaturesHead(stage=2, pool=True)(resnet, x).shape == (3, 128, 1, 1)
        # the stage map equals the hooked output of layer1
        got = []
        h = resnet.layer1.register_forward_hook(lambda m, a, o: got.append(o))
        resnet(x)
        h.remove()
        torch.testing.assert_close(FeaturesHead(stage=1)(resnet, x), got[0])


def test_features_head_refuses_bad_options(resnet):
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(InputError, match=r"stage 7 out of range: the encoder has stages 0\.\.4"):
        FeaturesHead(stage=7)(resnet, x)
    with pytest.raises(InputError, match="no fitted projection"):
        FeaturesHead(components=4)(resnet, x)
    with pytest.raises(InputError, match="components must be >= 1"):
        FeaturesHead(components=0)
    with pytest.raises(InputError, match="expects 3 feature channels, the encoder gives 512"):
        FeaturesHead(projection=np.ones((3, 2)))(resnet, x)


def test_pca_recovers_known_directions():
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
    coef = torch.randn(2000, 2, generator=gen, dtype=torch.float64) * torch.tensor([5.0, 2.0], dtype=torch.float64)
    rows = coef @ basis[:, :2].T + 3.0 + 0.01 * torch.randn(2000, 10, generator=gen, dtype=torch.float64)
    proj = pca(rows.float(), 2)
    cos = (proj.matrix.double().T @ basis[:, :2]).abs()
    assert torch.all(torch.diag(cos) > 0.999)
    torch.testing.assert_close(proj.matrix.T @ proj.matrix, torch.eye(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(proj.mean, torch.full((10,), 3.0), atol=0.3, rtol=0)
    assert 0.99 < float(proj.explained.sum()) <= 1.0 + 1e-6
    assert float(proj.explained[0]) > float(proj.explained[1])
    with pytest.raises(InputError, match=r"components must be in 1\.\.10"):
        pca(rows.float(), 11)


def test_projection_save_load_round_trip(tmp_path):
    p = Projection(torch.arange(4.0), torch.arange(12.0).reshape(4, 3), torch.tensor([0.5, 0.3, 0.1]))
    q = Projection.load(p.save(tmp_path / "p.npz"))
    torch.testing.assert_close(q.matrix, p.matrix)
    torch.testing.assert_close(q.mean, p.mean)
    np.save(tmp_path / "m.npy", np.eye(4, 2, dtype=np.float32))
    head = FeaturesHead(projection=str(tmp_path / "m.npy"))
    f = torch.randn(5, 4, 2, 2)
    torch.testing.assert_close(head.projection(f), f[:, :2])
    with pytest.raises(InputError, match="does not exist"):
        Projection.load(tmp_path / "missing.npy")


def _two_channel_phantom():
    a = ball_phantom((32, 32, 32), (1.0, 1.0, 1.0), balls=(((0.3, 0.0, 0.0), 6.0, 1.0), ((-0.4, 0.3, 0.2), 5.0, 0.5)))
    b = ball_phantom((32, 32, 32), (1.0, 1.0, 1.0), balls=(((0.0, -0.3, 0.3), 7.0, 1.0),))
    return torch.stack([a, b])


def test_features_tomo_reconstructs_each_channel(mean_encoder):
    """Pooled features = slice means (the sum head): tomo returns the input, channel by channel."""
    vol = _two_channel_phantom()
    eng = Engine(mean_encoder, "features", "tomo", directions=200, slices=32, slice_size=32, device="cpu")
    out = eng.reconstruct(vol)
    assert out.shape == (2, 32, 32, 32)
    for c in range(2):
        r = np.corrcoef(out[c].flatten().numpy(), vol[c].flatten().numpy())[0, 1]
        assert r > 0.85, (c, r)
    cross = np.corrcoef(out[0].flatten().numpy(), vol[1].flatten().numpy())[0, 1]
    assert cross < 0.3  # channels are not mixed


def test_projection_commutes_with_reconstruction(mean_encoder):
    """The reconstruction is linear: projecting before backprojection = projecting after."""
    vol = _two_channel_phantom()
    w = torch.tensor([[1.0, 0.5, 0.0], [-2.0, 0.25, 1.0]])
    kw = dict(directions=24, slices=16, slice_size=16, device="cpu")
    for filt in ("none", "tomo"):
        raw = Engine(mean_encoder, "features", filt, **kw).reconstruct(vol)
        projected = Engine(mean_encoder, "features", filt, head_options={"projection": w}, **kw).reconstruct(vol)
        torch.testing.assert_close(projected, torch.einsum("cdhw,ck->kdhw", raw, w), atol=1e-4, rtol=1e-4)


def test_fit_projection_installs_pca(resnet):
    vol = _two_channel_phantom()[:1] + 0.1
    eng = Engine(
        resnet,
        "features",
        "none",
        directions=8,
        slices=8,
        slice_size=32,
        device="cpu",
        head_options={"stage": 1, "components": 3},
    )
    with pytest.raises(InputError, match="no fitted projection"):
        eng.reconstruct(vol)
    proj = fit_projection(eng, vol, samples=32)
    assert proj.matrix.shape == (64, 3) and eng.head.projection is proj
    out = eng.reconstruct(vol)
    assert out.shape == (3, 32, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(InputError, match="needs the features head"):
        fit_projection(Engine(resnet, "logit", device="cpu"), vol)


def test_regression_head_scale_and_target(mean_encoder):
    x = torch.rand(4, 1, 8, 8)
    two = type(mean_encoder)(outputs=2)
    torch.testing.assert_close(
        RegressionHead(scale=3.0)(mean_encoder, x), 3 * x.mean(dim=(1, 2, 3))[:, None, None, None]
    )
    signed = x - 0.5
    torch.testing.assert_close(
        RegressionHead(scale=2.0, nonnegative=True)(mean_encoder, signed),
        (2 * signed.mean(dim=(1, 2, 3))).clamp_min(0)[:, None, None, None],
    )
    assert (RegressionHead()(mean_encoder, -x) < 0).all()
    with pytest.raises(InputError, match="regression target 2 out of range: the encoder has 2 outputs"):
        RegressionHead(target=2)(two, x)


def test_regression_integral_of_a_slice_sum_encoder(mean_encoder):
    """A regression encoder that reports the slice's lesion content: the tomo heatmap integrates to the lesion."""
    vols = [ball_phantom((32, 32, 32), (1, 1, 1), balls=(((0.1, -0.1, 0.2), r, 1.0),)) for r in (3.0, 5.0, 7.0)]
    eng = Engine(
        mean_encoder,
        "regression",
        "tomo",
        directions=150,
        slices=32,
        slice_size=32,
        device="cpu",
        geometry="normalized",
    )
    integrals = [float(eng.reconstruct(v).sum()) for v in vols]
    truth = [float(v.sum()) for v in vols]
    ratios = np.array(integrals) / np.array(truth)
    assert np.all(np.abs(ratios - 1) < 0.15), ratios
