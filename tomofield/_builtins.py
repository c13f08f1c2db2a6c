"""tomofield's own components, registered through the public hooks like any plugin.

Each hook imports the modules it registers from: loading the plugins (which ``tomofield
--help`` does, to list the plugins' commands) imports no torch.
"""

from __future__ import annotations

import functools

from tomofield.hookspecs import hookimpl


@hookimpl
def register_heads(register):
    from tomofield import heads

    register("sum", heads.SumHead, "mean of the slice's pixels per channel (Eq. 5), no network")
    register("logit", heads.LogitHead, "the encoder's output logit per slice (ToNNO)")
    register("avgpool", heads.PooledSumHead, "average-pooled slice, a CAM-like map without a network (Fig. 4)")
    cams = {
        "gradcam": "Grad-CAM (Selvaraju et al. 2017)",
        "gradcam++": "Grad-CAM++ (Chattopadhay et al. 2018)",
        "layercam": "LayerCAM (Jiang et al. 2021)",
        "scorecam": "Score-CAM (Wang et al. 2020)",
    }
    for method, paper in cams.items():
        register(
            method, functools.partial(heads.CamHead, method), f"{paper} map at --layer", options=heads.CamHead.options
        )


@hookimpl
def register_filters(register):
    from tomofield import filters

    register("none", filters.NoFilter, "average over planes (Averaged CAM)")
    register("tomo", filters.TomoFilter, "second derivative along the normal (ToNNO, Tomographic CAM)")
    register(
        "tomo-sg",
        filters.SavitzkyGolayFilter,
        "tomo with a Savitzky-Golay second derivative over `window` slices: less noise, same intensities",
    )
    register(
        "tomo-width",
        filters.WidthSecondDerivative,
        "tomo over a fixed `width` along the normal, whatever M: a saturated score keeps its scale (experimental)",
    )
    register(
        "tomo-gauss",
        filters.GaussianDerivativeFilter,
        "tomo with a Gaussian second derivative of `sigma` slices: less noise, same intensities",
    )


@hookimpl
def register_reconstructors(register):
    from tomofield import reconstructors

    register("fbp", reconstructors.FilteredBackprojection, "filtered backprojection, streaming (ToNNO)")
    register(
        "regularized",
        reconstructors.Regularized,
        "heatmap fitted to every stack's scores: non-negative, FISTA from FBP (no extra encoder runs)",
    )
    register(
        "filled",
        reconstructors.Filled,
        "ToNNO plus the planes' consensus: large lesions come back filled (the logit head's default)",
    )
    register(
        "calibrated",
        reconstructors.Calibrated,
        "FBP of the scores under a monotone link fitted for solid lesions (self-consistency)",
    )


@hookimpl
def register_samplers(register):
    from tomofield import samplers

    register("fibonacci", samplers.FibonacciSampler, "L Fibonacci-lattice directions (ToNNO)")
    register("axial", samplers.AxialSampler, "the volume's own slices along D (slice-wise baseline)")
    register("orthogonal", samplers.OrthogonalSampler, "the slices of the three axes (three-axis baseline)")


@hookimpl
def register_postprocessors(register):
    from tomofield import postprocess

    register("clip-negative", lambda: postprocess.clip_negative, "set negative values to 0")
    register("normalize", lambda: postprocess.normalize, "min-max scale each channel to [0, 1]")
    register("mask-background", lambda: postprocess.mask_background, "zero where the input is 0")


@hookimpl
def register_encoders(register):
    from tomofield import encoders

    register(
        encoders.DEFAULT_ENCODER,
        encoders.timm_encoder,
        "timm ResNet-10-T (paper default); any other timm name works too",
    )
