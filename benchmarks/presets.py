"""``python -m benchmarks presets``: what ``--preset fast`` chooses for grids of growing size, and its time.

For each grid a synthetic scan (an ellipsoidal body of noise in air, 1 mm voxels, so that
empty slices are skipped as in a real scan) is reconstructed once by
``Engine(preset="fast")`` with a seeded random ResNet-10-T (the encoder's cost does not
depend on its weights). Prints the chosen L, M and slice size, the encoder slices run and
the wall seconds of ``Engine.run``, as a Markdown table.
"""

from __future__ import annotations

import argparse
import time

#: (D, H, W) grids: the demo's, two mid-sized, and a 512 x 512 CT of 300 slices
GRIDS = ((19, 36, 34), (100, 100, 100), (160, 256, 256), (300, 512, 512))


def body(shape: tuple[int, int, int], seed: int = 0):
    """Noise inside an ellipsoid filling 90 % of each axis, zero outside."""
    import torch

    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, n) / 0.9 for n in shape]
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    inside = (d**2 + h**2 + w**2) <= 1
    return (torch.randn(shape, generator=g) * inside)[None]


def main(argv: list[str] | None = None) -> None:
    from benchmarks.suite import _Counting
    from tomofield.engine import Engine
    from tomofield.heads import LogitHead
    from tomofield.io import Volume

    p = argparse.ArgumentParser(prog="python -m benchmarks presets", description=__doc__.splitlines()[0])
    p.add_argument("--grids", nargs="+", metavar="D,H,W", help="grids instead of the built-in ones")
    p.add_argument("--preset", default="fast")
    a = p.parse_args(argv)
    grids = [tuple(int(v) for v in g.split(",")) for g in a.grids] if a.grids else GRIDS
    runs = [0]
    engine = Engine(encoder="resnet10t", head=_Counting(LogitHead(), runs), preset=a.preset, device="cpu")
    print("| grid (D, H, W) | L | M | slice px | encoder slices | seconds |")
    print("|---|---|---|---|---|---|")
    for shape in grids:
        import torch

        vol = Volume.from_array(body(shape), torch.eye(4, dtype=torch.float64), layout="dhw")
        cfg = engine.config_for(shape)
        runs[0] = 0
        t0 = time.perf_counter()
        engine.run(vol)
        seconds = time.perf_counter() - t0
        print(
            f"| {shape} | {cfg.directions} | {cfg.slices} | {cfg.slice_size} | {runs[0]:,} | {seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
