"""CPU kernels: plain numba loops for the data movement (``im2col.py``: im2col, col2im,
pooling, ReLU) and the backend's ops (``ops.py``); the fast path (Winograd, our GEMM, the
fused element-wise kernels, the thread pool and the arena) in ``fast/``."""
