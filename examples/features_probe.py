"""Dense 3D features from a 2D encoder, used downstream: a linear probe that segments lesions.

The same 2D encoder (random init, or SimCLR-pretrained here on unlabelled synthetic volumes)
gives per-voxel features several ways: axial slice-wise (each axial slice's stage map, the
usual 2D-on-3D baseline; also with 4x the slice pixels so that the stage map has the
voxel resolution), the three axes averaged, and tomographic (ToNNO slicing at L
Fibonacci directions, filter ``none`` or ``tomo``). Each feature volume is projected to
K PCA components fitted on the labelled volumes; a logistic-regression probe is fitted on
a few labelled voxels of those volumes (same voxels for every method) and segments
held-out volumes; Dice at probability 0.5, averaged over draws of the labelled voxels.

    OMP_NUM_THREADS=1 python examples/features_probe.py                # about 6 CPU minutes
    OMP_NUM_THREADS=1 python examples/features_probe.py --quick        # about 1 minute

Needs tomofield and plugins/tomofield-features installed. Numbers: docs/features.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tomofield_features import fit_projection
from tomofield_features.probe import LinearProbe, sample_labelled, voxel_rows
from tomofield_features.ssl import SimCLRConfig, build_encoder, pretrain_simclr

from tomofield import Engine
from tomofield.evaluation import dice
from tomofield.synth import make_case

METHODS = {  # name: (sampler, filter, slice-size factor)
    "axial slice-wise": ("axial", "none", 1),
    "axial slice-wise, 4x slice pixels": ("axial", "none", 4),
    "three axes": ("orthogonal", "none", 1),
    "tomographic, filter none": ("fibonacci", "none", 1),
    "tomographic, filter tomo": ("fibonacci", "tomo", 1),
}


def cases(seeds, size, positive=True):
    out = []
    for s in seeds:
        img, mask = make_case((size,) * 3, positive=positive, rng=np.random.default_rng(s))
        out.append((torch.from_numpy(img), mask))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer volumes, directions and draws")
    ap.add_argument("--encoder", choices=["simclr", "random", "both"], default="both")
    ap.add_argument("--stage", type=int, default=1, help="feature_info stage (-1: pooled pre-logits vector)")
    ap.add_argument("--components", type=int, default=16)
    ap.add_argument("--directions", type=int, default=96)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--slice-size", type=int, default=48)
    ap.add_argument("--positives", type=int, default=20, help="labelled lesion voxels per labelled volume")
    ap.add_argument("--negatives", type=int, default=100, help="labelled background voxels per labelled volume")
    ap.add_argument("--ssl-iterations", type=int, default=150)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--with-intensity", action="store_true", help="also probe features + raw intensity")
    ap.add_argument("--out", default="examples/out/features_probe.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    size, stage = 48, (None if a.stage < 0 else a.stage)
    n_lab, n_test, draws = (1, 2, 2) if a.quick else (2, 4, a.draws)
    if a.quick:
        a.directions, a.ssl_iterations = 48, 40
    labelled = cases(range(n_lab), size)
    test = cases(range(100, 100 + n_test), size)
    encoders = {}
    if a.encoder in ("random", "both"):
        torch.manual_seed(0)
        encoders["random init"] = build_encoder("resnet10t", 1, "group-norm").eval()
    if a.encoder in ("simclr", "both"):
        unlab = cases(range(200, 204), size) + cases(range(204, 208), size, positive=False)
        t0 = time.perf_counter()
        enc, hist = pretrain_simclr(
            [v for v, _ in unlab], SimCLRConfig(iterations=a.ssl_iterations, slice_size=a.slice_size)
        )
        print(
            f"SimCLR: {a.ssl_iterations} iterations, loss {hist[0]['loss']:.3f} -> {np.mean([h['loss'] for h in hist[-10:]]):.3f} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        encoders["SimCLR"] = enc
    results: dict[str, dict[str, float]] = {}
    # Intensity alone: what a probe gets without any encoder.
    feats_int = {"lab": [v[None].numpy() for v, _ in labelled], "test": [v[None].numpy() for v, _ in test]}
    all_feats = {("intensity only", ""): feats_int}
    for enc_name, enc in encoders.items():
        for method, (sampler, filt, zoom) in METHODS.items():
            t0 = time.perf_counter()
            eng = Engine(
                enc,
                "features",
                filt,
                sampler,
                directions=a.directions,
                slices=a.slices,
                slice_size=zoom * a.slice_size,
                device="cpu",
                head_options={"stage": stage, "components": a.components},
            )
            fit_projection(eng, [v for v, _ in labelled], samples=128)
            all_feats[(method, enc_name)] = {
                "lab": [eng.reconstruct(v).numpy() for v, _ in labelled],
                "test": [eng.reconstruct(v).numpy() for v, _ in test],
            }
            print(f"{enc_name:12s} {method:28s} features in {time.perf_counter() - t0:.0f} s", flush=True)
    if a.with_intensity:  # the same features with the raw intensity as one more channel
        for (method, enc_name), f in list(all_feats.items()):
            if enc_name:
                all_feats[(method + " + intensity", enc_name)] = {
                    part: [np.concatenate([fi, ii]) for fi, ii in zip(f[part], feats_int[part], strict=True)]
                    for part in ("lab", "test")
                }
    for (method, enc_name), f in all_feats.items():
        scores = []
        for draw in range(draws):
            rng = np.random.default_rng(1000 + draw)
            xs, ys = [], []
            for (vol, mask), fl in zip(labelled, f["lab"], strict=True):
                idx, y = sample_labelled(mask, a.positives, a.negatives, rng, region=vol.numpy() > 0.02)
                xs.append(voxel_rows(fl, idx))
                ys.append(y)
            probe = LinearProbe.fit(np.concatenate(xs), np.concatenate(ys))
            for (_, mask), ft in zip(test, f["test"], strict=True):
                scores.append(dice(probe.predict_volume(ft) > 0.5, mask))
        key = f"{method} ({enc_name})" if enc_name else method
        results[key] = {"dice": float(np.mean(scores)), "dice_std": float(np.std(scores))}
        print(f"{key:45s} Dice {np.mean(scores):.3f} +- {np.std(scores):.3f}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"settings": vars(a), "results": results}, indent=2))
    print("\n| features | Dice (mean +- std over test volumes x draws) |\n|---|---|")
    for k, r in results.items():
        print(f"| {k} | {r['dice']:.3f} +- {r['dice_std']:.3f} |")


if __name__ == "__main__":
    main()
