"""Compiled kernels of the fast paths.

* :mod:`tomofield.pipeline.kernels.native`: the C kernels of ``cpu.c`` (backprojection of scalar
  profiles, trilinear slicing), built with the system C compiler and loaded with
  ``ctypes``; the one loader of compiled code in tomofield.
* :mod:`tomofield.pipeline.kernels.triton_bp`: the fused Triton backprojector used on CUDA.

Nothing is imported here: each module is loaded when a user asks for it.
"""
