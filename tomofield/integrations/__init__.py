"""Adapters that put tomofield into other frameworks' pipelines (each an optional extra).

- :mod:`tomofield.integrations.monai`: :class:`~tomofield.integrations.monai.TomofieldInferer`,
  a MONAI inferer (``pip install 'tomofield[monai]'``).
"""
