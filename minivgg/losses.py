r"""The losses of image synthesis, each returning (value, gradient w.r.t. its input).

Notation (Gatys et al. 2015, 2016): a layer's response F has N filters (channels)
and M = H * W positions; per image it is the matrix F (N x M).

- Content (Gatys 2016 eq. 1; Mahendran & Vedaldi 2014):
  ``L = 1/2 sum_ij (F_ij - P_ij)^2``, ``dL/dF = F - P``. (The ReLU's mask, "zero where
  F < 0", comes from the net's backward when F is a conv output feeding a ReLU.)
- Gram matrix (Gatys 2015 eq. 2): ``G = F F^T``, ``G_ij = sum_k F_ik F_jk``.
- Style (Gatys 2016 eq. 4-6): ``E = 1/(4 N^2 M^2) sum_ij (G_ij - A_ij)^2``,
  ``dE/dF = 1/(N^2 M^2) (G - A) F`` (G and A are symmetric, so this equals the paper's
  ``((F^T (G - A))^T``).
- Total variation (Mahendran & Vedaldi 2014 eq. 5), over every pixel (i, j) that has
  both a right and a lower neighbour, summed over channels:
  ``R = sum_{c,i,j} ((x[c,i,j+1] - x[c,i,j])^2 + (x[c,i+1,j] - x[c,i,j])^2)^(beta/2)``.
- Alpha-norm (Mahendran & Vedaldi 2014 eq. 4): ``R = sum |x|^alpha``,
  ``dR/dx = alpha |x|^(alpha-1) sign(x)``.

docs/losses.md derives each gradient. Everything is written with ``xp`` so it runs on
numpy and CuPy arrays alike. Values are Python floats, accumulated in float64.
"""

import numpy as np

from .backend import get_array_module


def content_loss(F, P):
    """``1/2 sum (F - P)^2`` and its gradient ``F - P``."""
    d = F - P
    return 0.5 * float((d.astype("float64") ** 2).sum()), d


def _as_matrices(F):
    """(N, C, H, W) -> (N, C, H*W); a 3-D (C, H, W) input counts as N = 1."""
    if F.ndim == 3:
        F = F[None]
    return F.reshape(F.shape[0], F.shape[1], -1)


def _matmul(xp, a, b, into=None):
    """a @ b, or into += a @ b; on the CPU split over minivgg's thread pool with
    single-threaded BLAS, so that no BLAS threads are left spinning beside the network's own
    (minivgg/cpu/fast/threads.py), and the sum made inside our GEMM (no temporary)."""
    if xp is np:
        from .cpu.fast.threads import matmul

        return matmul(a, b, out=into, accumulate=into is not None)
    if into is None:
        return xp.matmul(a, b)
    into += xp.matmul(a, b)
    return into


def _gram(xp, Fm):
    """Fm Fm^T per image; on the CPU the symmetric kernel (half the products, minivgg/cpu/fast/gemm.py)."""
    if xp is np:
        from .cpu.fast.threads import gram

        return gram(Fm)
    return xp.matmul(Fm, Fm.transpose(0, 2, 1))


def gram_matrix(F):
    """G = F F^T per image: (N, C, H, W) -> (N, C, C)."""
    xp = get_array_module(F)
    return _gram(xp, _as_matrices(F))


class DeferredGradient:
    """weight * dE/dF of a style loss, made once, when asked (style_loss_deferred): ``g()``
    returns it as a new array; ``g.add_to(out)`` adds it into out (F's shape and dtype,
    C-contiguous; ``g.fits(out)`` tells) inside the product that makes it, and returns out.
    Until then it holds F and the C x C factor (G - A) scaled; after, nothing (so a
    backward with keep=False lets F go with its layer), and a second use is an error."""

    def __init__(self, xp, Ds, Fm, shape):
        self.xp, self.Ds, self.Fm, self.shape = xp, Ds, Fm, shape

    def _take(self):
        if self.Fm is None:
            raise RuntimeError("this style gradient was made already: style_loss_deferred gives one per use")
        Ds, Fm = self.Ds, self.Fm
        self.Ds = self.Fm = None
        return Ds, Fm

    def __call__(self):
        Ds, Fm = self._take()
        return _matmul(self.xp, Ds, Fm).reshape(self.shape)

    def fits(self, out):
        return (out is not None and self.Fm is not None and out.shape == self.shape and out.flags.c_contiguous
                and out.dtype == self.xp.result_type(self.Ds.dtype, self.Fm.dtype))

    def add_to(self, out):
        if self.Fm is not None and not self.fits(out):
            raise ValueError(f"add_to: needs a C-contiguous array of shape {self.shape}")
        Ds, Fm = self._take()
        _matmul(self.xp, Ds, Fm, into=out.reshape(Fm.shape))
        return out


def _style(F, A, weight):
    """E (a float) and weight * dE/dF, deferred (DeferredGradient)."""
    xp = get_array_module(F)
    Fm = _as_matrices(F)
    C, M = Fm.shape[1], Fm.shape[2]
    G = _gram(xp, Fm)
    D = G - A
    scale = 1.0 / (C * C * M * M)
    value = 0.25 * scale * float((D.astype("float64") ** 2).sum())
    Ds = D * D.dtype.type(scale * weight)  # the scale on the small C x C factor
    return value, DeferredGradient(xp, Ds, Fm, F.shape)


def style_loss(F, A):
    """``E = 1/(4 C^2 M^2) sum (G - A)^2`` with G = gram_matrix(F), and dE/dF.

    A: the target Gram matrix, (C, C) (broadcast over the batch) or (N, C, C).
    """
    value, grad = _style(F, A, 1.0)
    return value, grad()


def style_loss_deferred(F, A, weight=1.0):
    """style_loss's value now and its gradient later: (E, g), g a DeferredGradient making
    weight * dE/dF. Net.backward takes g in place of the array and adds it into the
    gradient arriving from above when the backward reaches the layer, so no array of F's
    size is made for it at all, and none is held through the backward of the deeper
    layers."""
    return _style(F, A, float(weight))


def total_variation(x, beta=2.0):
    """TV^beta over pixels with a right and a lower neighbour, and its gradient.

    With ``dh = x[..., :-1, 1:] - x[..., :-1, :-1]`` and ``dv = x[..., 1:, :-1] -
    x[..., :-1, :-1]``, ``s = dh^2 + dv^2``: ``R = sum s^(beta/2)`` and, with
    ``w = beta * s^(beta/2 - 1)``, ``dR/dx`` gets ``-w (dh + dv)`` at (i, j),
    ``+w dh`` at (i, j+1) and ``+w dv`` at (i+1, j).
    """
    xp = get_array_module(x)
    base = x[..., :-1, :-1]
    dh = x[..., :-1, 1:] - base
    dv = x[..., 1:, :-1] - base
    s = dh * dh + dv * dv
    if beta == 2.0:
        value = float(s.astype("float64").sum())
        w = x.dtype.type(2.0)
    else:
        value = float((s.astype("float64") ** (beta / 2)).sum())
        # s = 0 gives w = 0 for beta >= 2 and is unbounded below; a tiny floor keeps it finite
        w = beta * xp.maximum(s, x.dtype.type(1e-12)) ** (beta / 2 - 1)
    g = xp.zeros_like(x)
    g[..., :-1, :-1] -= w * (dh + dv)
    g[..., :-1, 1:] += w * dh
    g[..., 1:, :-1] += w * dv
    return value, g


def alpha_norm(x, alpha=6.0):
    """``sum |x|^alpha`` and its gradient ``alpha |x|^(alpha-1) sign(x)``."""
    xp = get_array_module(x)
    a = xp.abs(x)
    value = float((a.astype("float64") ** alpha).sum())
    return value, (alpha * a ** (alpha - 1) * xp.sign(x)).astype(x.dtype)
