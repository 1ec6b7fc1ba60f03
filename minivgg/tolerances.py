"""Numerical tolerances the backends share (imported by the CPU and GPU code alike, so
neither backend has to import the other for them).

POOL_TIE_BELOW: before a max pool, a fused conv + ReLU recomputes exactly the outputs
within this fraction of the layer's largest output of their window's maximum, so the
pool picks the unit an exact computation picks (an argmax between values closer than
the float32 error is otherwise decided by rounding; docs/conv.md, "Max").
"""

import numpy as np

POOL_TIE_BELOW = np.float32(3e-5)
