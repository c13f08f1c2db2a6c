"""tomofield-medical: the ToNNO paper's datasets, preprocessing and training recipes.

A plugin like any third party's: it registers datasets (``tomofield prepare NAME RAW -o OUT``,
``tomofield train --recipe NAME``) and a command (``tomofield dicom-to-nifti``) through
tomofield's public hooks, found through the ``tomofield`` entry point ``medical``.
"""

from __future__ import annotations

from tomofield import hookimpl

__version__ = "0.1.0"

DATASETS = {
    "mosmed": ("tomofield_medical.mosmed", "MosMed", "MosMedData COVID-19 CT (CT-0 vs CT-1)"),
    "autopet": ("tomofield_medical.autopet", "AutoPET", "AutoPET FDG-PET/CT: CT + SUV cropped to SUV > 0.2"),
    "duke": (
        "tomofield_medical.duke",
        "DukeBreastMRI",
        "Duke breast cancer MRI (DICOM): pre + 1st post-contrast, left/right breasts, boxes",
    ),
    "multisequence": (
        "tomofield_medical.multisequence",
        "MultiSequence",
        "co-registered NIfTI sequences per study, described by RAW_DIR/tomofield.json",
    ),
}


def _factory(module: str, cls: str):
    def build():
        import importlib

        return getattr(importlib.import_module(module), cls)()

    build.__name__ = cls
    return build


@hookimpl
def register_datasets(register):
    for name, (module, cls, description) in DATASETS.items():
        register(name, _factory(module, cls), description)


@hookimpl
def register_commands(cli):
    cli.add_lazy_command(
        "dicom-to-nifti",
        "tomofield_medical.commands:dicom_to_nifti",
        "Convert one DICOM series folder to NIfTI (slices sorted in space, affine from the headers).",
    )
