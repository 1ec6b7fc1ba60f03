"""CPU kernels: numba loops for the data movement; the GEMMs in our own AVX-512 kernel (gemm.py) or numpy's BLAS."""
