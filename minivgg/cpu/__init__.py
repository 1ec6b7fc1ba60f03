"""CPU kernels: numba loops for the data movement, numpy's BLAS for the GEMMs."""
