"""Reconstructors: the backprojector's exact adjoint, and the regularized fit against FBP on exact data."""

from __future__ import annotations

import pytest
import torch

from tomofield import Engine, InputError, plugins
from tomofield.batch import engine_differences
from tomofield.geometry import Directions, fibonacci_directions, random_bases, stack_extents
from tomofield.pipeline import Stacks
from tomofield.pipeline.backproject import backproject_grid, project_adjoint
from tomofield.reconstructors import Regularized, spectral_radius
from tomofield.synth import ball_phantom

E = torch.tensor([1.0, 0.6, 0.8], dtype=torch.float64)
SHAPE = (6, 7, 8)


def _dirs(n: int = 9, m: int = 5) -> Directions:
    normals = fibonacci_directions(n, hemisphere=True)
    u, v = random_bases(normals, torch.Generator().manual_seed(0))
    return Directions(normals, u, v, *stack_extents(E, normals, u, v, "tight"), m).to("cpu")


@pytest.mark.parametrize("cells", [(1, 1), (3, 2)], ids=["scalar", "map"])
@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_the_backprojector_and_its_adjoint(cells, kernel):
    """<B q, x> = <q, B^T x> for scalar and map-valued profiles, the fast kernels included."""
    gen = torch.Generator().manual_seed(1)
    dirs, k = _dirs(), 2
    q = torch.randn(len(dirs), 5, k, *cells, generator=gen)
    x = torch.randn(k, *SHAPE, generator=gen)
    weights = torch.rand(len(dirs), generator=gen) + 0.5
    bq = backproject_grid(q, dirs, SHAPE, E, (12, 10), weights=weights, kernel=kernel)
    adj = project_adjoint(x, dirs, SHAPE, E, (12, 10), q.shape[1:], weights=weights)
    lhs, rhs = float((bq.reshape(k, -1) * x.reshape(k, -1)).sum()), float((q * adj).sum())
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + float(q.abs().sum() * adj.abs().max()))
    assert abs(lhs) > 1e-3  # not a vacuous zero


def _ball() -> torch.Tensor:
    return ball_phantom((24, 24, 24), (1.0, 1.0, 1.0), [((0.0, 0.0, 0.0), 7.0, 1.0)])


def _rmse(reconstructor, directions: int) -> float:
    engine = Engine(
        head="sum", reconstructor=reconstructor, directions=directions, slices=24, slice_size=32, device="cpu"
    )
    return float((engine.reconstruct(_ball(), (1.0, 1.0, 1.0))[0] - _ball()).pow(2).mean().sqrt())


@pytest.mark.parametrize("directions", [8, 16])
def test_regularized_returns_a_ball_from_exact_plane_integrals_better_than_fbp_at_few_directions(directions):
    fbp, reg = _rmse("fbp", directions), _rmse(Regularized(iterations=20), directions)
    assert reg < 0.6 * fbp, (reg, fbp)  # measured: 0.35 -> 0.13 at L = 8, 0.23 -> 0.09 at L = 16


def test_without_iterations_or_prior_the_regularized_reconstructor_is_fbp():
    engine = Engine(head="sum", directions=12, slices=8, slice_size=16, device="cpu")
    same = engine.reconstruct(_ball(), (1.0, 1.0, 1.0))
    plain = Engine(
        head="sum",
        reconstructor=Regularized(iterations=0, positive=False),
        directions=12,
        slices=8,
        slice_size=16,
        device="cpu",
    )
    assert torch.equal(plain.reconstruct(_ball(), (1.0, 1.0, 1.0)), same)
    clipped = Engine(
        head="sum", reconstructor=Regularized(iterations=0), directions=12, slices=8, slice_size=16, device="cpu"
    )
    assert torch.equal(clipped.reconstruct(_ball(), (1.0, 1.0, 1.0)), same.clamp(min=0))


def test_the_forward_model_is_the_sum_heads_slicing():
    """FBP of ``Stacks.project(f)`` is the ``sum`` head's reconstruction of ``f``, chunk for chunk."""
    engine = Engine(head="sum", directions=10, slices=6, slice_size=16, device="cpu", skip_empty=False)
    ball = _ball()
    plan = engine.plan(ball.shape, (1.0, 1.0, 1.0))
    stacks = Stacks(plan, engine.filter, torch.device("cpu"))
    bp = stacks.backprojector()
    for group in plan.groups:
        for _, dirs in plan.chunks(group, 64, torch.device("cpu")):
            bp.add(stacks.filter(stacks.project(ball[None], dirs), dirs), dirs)
    torch.testing.assert_close(bp.result(), engine.reconstruct(ball, (1.0, 1.0, 1.0)), rtol=1e-5, atol=1e-6)


def test_the_power_iteration_finds_a_known_spectral_radius():
    diag = torch.tensor([0.5, 3.0, 1.0, -2.0])
    assert spectral_radius(lambda v: diag * v, torch.zeros(4), iterations=60) == pytest.approx(1.05 * 3.0, rel=1e-3)


def test_regularized_is_registered_recorded_and_checks_its_settings():
    assert {"fbp", "regularized"} <= {c.name for c in plugins.components("reconstructor")}
    engine = Engine(head="sum", reconstructor="regularized", device="cpu")
    prov = engine.provenance()
    assert prov["reconstructor"] == "regularized" and prov["reconstructor_options"]["iterations"] == 10
    old = {k: v for k, v in Engine(head="sum", device="cpu").provenance().items() if not k.startswith("reconstructor")}
    assert engine_differences(old, Engine(head="sum", device="cpu").provenance()) == []  # old records: fbp
    assert engine_differences(old, prov)[0].startswith("reconstructor fbp -> regularized")
    with pytest.raises(InputError, match=r"regularized: iterations must be an integer in 0..1000, got -1"):
        Regularized(iterations=-1)
    with pytest.raises(InputError, match=r"regularized: sparsity must be a number in 0.0..0.999, got 1.5"):
        Regularized(sparsity=1.5)


def test_a_preset_chooses_directions_slices_and_reconstructor_and_explicit_settings_win():
    from tomofield.presets import FAST_BY_SIZE

    fast = Engine(head="sum", preset="fast", device="cpu")
    small, ct = (19, 36, 34), (300, 512, 512)
    assert [getattr(fast.config_for(small), k) for k in ("directions", "slices", "slice_size")] == [128, 16, 64]
    assert [getattr(fast.config_for(ct), k) for k in ("directions", "slices", "slice_size")] == [48, 48, 224]
    # every row of the table: bigger grids get M and slice size no smaller, about the same slices
    rows = [fast.config_for((n, 8, 8)) for n in (up for up, *_ in FAST_BY_SIZE[:-1])] + [fast.config_for(ct)]
    assert all(a.slices <= b.slices and a.slice_size <= b.slice_size for a, b in zip(rows, rows[1:], strict=False))
    assert all(2000 <= c.directions * c.slices <= 4096 for c in rows)
    # the slices the encoder sees are the chosen ones: L x (M + 2), for this grid
    assert fast.count_slices(small) == 128 * (16 + 2)
    assert fast.count_slices((65, 8, 8)) == 96 * (32 + 2)
    assert fast.plan(ct, (1.0, 1.0, 1.0)).size == (224, 224)
    # explicit settings win, one by one; the others stay per volume
    mine = Engine(head="sum", preset="fast", directions=16, reconstructor="regularized", device="cpu")
    assert (mine.config_for(ct).directions, mine.config_for(ct).slices, mine.reconstructor_name) == (
        16,
        48,
        "regularized",
    )
    assert Engine(head="sum", preset="fast", slice_size=24, device="cpu").config_for(ct).slice_size == 24
    assert mine.with_options(slices=7).config_for(ct).slices == 7
    # the record says the preset chose, so a dataset run does not mistake it for fixed counts
    prov = fast.provenance()["settings"]
    assert (prov["directions"], prov["slices"], prov["slice_size"]) == ("preset fast", "preset fast", "preset fast")
    assert mine.provenance()["settings"]["directions"] == 16
    assert Engine(head="sum", preset="paper", device="cpu").config.directions == 2000
    assert Engine(head="sum", preset="paper", device="cpu").config_for(ct).directions == 2000
    assert (
        Engine(head="sum", preset="default", device="cpu").provenance() == Engine(head="sum", device="cpu").provenance()
    )
    with pytest.raises(InputError, match="unknown preset 'quick'; valid: fast, default, paper"):
        Engine(head="sum", preset="quick")


def test_fast_sizes_itself_to_each_volume_and_the_heatmap_is_that_of_its_settings():
    """Two grids through one engine: each heatmap equals an engine given that grid's row explicitly."""
    vol_small = ball_phantom((12, 14, 10), (1.0, 1.0, 1.0), [((0.0, 0.0, 0.0), 4.0, 1.0)])
    vol_big = ball_phantom((70, 20, 16), (1.0, 1.0, 1.0), [((0.0, 0.0, 0.0), 6.0, 1.0)])
    fast = Engine(head="sum", preset="fast", directions=6, device="cpu")
    for vol, (L, M, size) in ((vol_small, (6, 16, 64)), (vol_big, (6, 32, 128))):
        want = Engine(head="sum", directions=L, slices=M, slice_size=size, device="cpu")
        torch.testing.assert_close(fast.reconstruct(vol), want.reconstruct(vol), rtol=0, atol=0)


def test_the_cli_preset_gives_way_to_explicit_options(tmp_path):
    import nibabel as nib
    import numpy as np
    from click.testing import CliRunner

    from tomofield import load_volume
    from tomofield.cli import cli

    src, out = tmp_path / "v.nii.gz", tmp_path / "h.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4)), str(src))
    args = ["run", str(src), "-o", str(out), "--head", "sum", "--preset", "fast", "-M", "4", "--slice-size", "16"]
    res = CliRunner().invoke(cli, [*args, "-L", "8", "--reconstructor", "regularized", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    want = Engine(head="sum", directions=8, slices=4, slice_size=16, reconstructor="regularized", device="cpu")
    got = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(got, want.run(load_volume(src)).data[0].numpy().transpose(2, 1, 0))


@pytest.mark.parametrize("name", ["fbp", "filled"])
@pytest.mark.parametrize("filt", ["tomo", "tomo-sg"])
def test_one_run_with_the_widest_padding_reconstructs_as_a_narrower_filters_run(name, filt):
    """The quality benchmark's sharing: the M slices lie where they lie whatever the padding."""
    from benchmarks.quality import Keep, reconstruct_as

    vol = ball_phantom((20, 22, 18), (2.0, 1.0, 1.0), [((0.1, 0.0, 0.0), 6.0, 1.0)])
    kw = dict(head="sum", directions=24, slices=12, slice_size=24, device="cpu")
    keep = Keep()
    Engine(filter="tomo-gauss", reconstructor=keep, **kw).reconstruct(vol, (2.0, 1.0, 1.0))  # pad 3
    assert keep.stacks.plan.pad == 3
    rec, f = plugins.get("reconstructor", name).factory(), plugins.get("filter", filt).factory()
    direct = Engine(filter=filt, reconstructor=rec, **kw).reconstruct(vol, (2.0, 1.0, 1.0))
    torch.testing.assert_close(reconstruct_as(keep.kept, keep.stacks, rec, f), direct, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fbp", "filled", "regularized"])
def test_a_subset_of_a_runs_directions_reconstructs_as_a_run_of_those_directions_alone(name, monkeypatch):
    """The quality benchmark's curve in L from the reference run: subset n equals a run with those n directions."""
    from benchmarks.quality import Keep, direction_subset, reconstruct_as
    from tomofield.samplers import FibonacciSampler

    n, total = 7, 24

    class Chosen:
        """Fibonacci's directions at ``total``, only those :func:`direction_subset` picks for ``n``."""

        name = "chosen"

        def plan(self, shape, e, config):
            (g,) = FibonacciSampler().plan(shape, e, config)
            chosen = torch.zeros(total, dtype=torch.bool)
            chosen[torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n]] = True
            return [g[chosen]]

    vol = ball_phantom((20, 22, 18), (2.0, 1.0, 1.0), [((0.1, 0.0, 0.0), 6.0, 1.0)])
    kw = dict(head="sum", filter="tomo", directions=total, slices=12, slice_size=24, device="cpu", batch_size=40)
    monkeypatch.setattr("tomofield.pipeline.plan.CHUNK_SLICES", 40)  # chunks of 3 directions
    keep = Keep()
    Engine(reconstructor=keep, **kw).reconstruct(vol, (2.0, 1.0, 1.0))
    assert len(keep.kept) > 1  # the subset is picked across chunks
    kept, stacks = direction_subset(keep.kept, keep.stacks, n)
    assert stacks.plan.n_dirs == n and sum(len(d) for _, d in kept) == n
    rec, f = plugins.get("reconstructor", name).factory(), plugins.get("filter", "tomo").factory()
    direct = Engine(sampler=Chosen(), reconstructor=rec, **kw).reconstruct(vol, (2.0, 1.0, 1.0))
    torch.testing.assert_close(reconstruct_as(kept, stacks, rec, f), direct, rtol=1e-6, atol=1e-6)
    full = direction_subset(keep.kept, keep.stacks, total)
    torch.testing.assert_close(reconstruct_as(*full, rec, f), reconstruct_as(keep.kept, keep.stacks, rec, f))
    with pytest.raises(ValueError, match="subset of 25"):
        direction_subset(keep.kept, keep.stacks, total + 1)
