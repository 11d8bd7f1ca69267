"""Compiled kernels of fastims (installed as the private subpackage ``fastims._ext``).

Kernels assume validated, C-contiguous input and release the GIL; call them through the
validating wrappers in :mod:`fastims`. Each kernel has a pure-NumPy twin of the same name
and signature in :mod:`fastims._reference`.
"""
