r"""Colour control for style transfer (Gatys, Ecker, Bethge, Hertzmann & Shechtman,
"Controlling Perceptual Factors in Neural Style Transfer", CVPR 2017, section 5).

- Colour histogram matching (the paper's "colour transfer", its eq. 8-9): each style
  pixel x_s (an RGB vector) becomes x_s' = A x_s + b, with b = mu_c - A mu_s, chosen so
  that the style's channel means and 3 x 3 covariance become the content's:
  A Sigma_s A^T = Sigma_c. Two choices of A:

  * ``"histogram"`` (the default variant, symmetric / PCA):
    A = Sigma_c^{1/2} Sigma_s^{-1/2}, both square roots the symmetric ones from the
    eigendecompositions Sigma = U diag(lambda) U^T. It does not depend on the order of
    the R, G, B channels (permuting them permutes A), which the Cholesky factor does; that
    is why it is the default (the paper names both choices).
  * ``"cholesky"``: A = L_c L_s^{-1}, Sigma = L L^T.

  Both give exactly the content's mean and covariance before the result is clipped to
  0..255 and rounded (tests/test_control_color.py measures both).
- Luminance-only transfer (the paper's section 5.1): the content and every style image
  become their luminance Y (YIQ); each style's Y is matched to the content's Y mean and
  standard deviation, Y_s' = sigma_c / sigma_s (Y_s - mu_s) + mu_c; the optimization runs
  on these grey images; the result's Y is combined with the content's I and Q
  (``image.preserve_colors``). Each style is matched on its own, so several styles work.
"""

import numpy as np

from .errors import MiniVGGError
from .image import rgb_to_yiq

EPS = 1e-5  # added to the covariance's diagonal: a flat (grey) image has a singular one


def _moments(pixels):
    mu = pixels.mean(axis=0)
    d = pixels - mu
    cov = d.T @ d / len(pixels)
    return mu, cov


def _sqrt_sym(cov, inverse=False):
    lam, U = np.linalg.eigh(cov + EPS * np.eye(3))
    lam = np.maximum(lam, EPS)
    return (U * (lam ** (-0.5 if inverse else 0.5))) @ U.T


def color_match_matrix(source, target, variant="histogram"):
    """(A, b) with A Sigma_source A^T = Sigma_target, b = mu_target - A mu_source, from
    float (K, 3) pixel arrays."""
    mu_s, cov_s = _moments(source)
    mu_t, cov_t = _moments(target)
    if variant == "histogram":
        A = _sqrt_sym(cov_t) @ _sqrt_sym(cov_s, inverse=True)
    elif variant == "cholesky":
        L_s = np.linalg.cholesky(cov_s + EPS * np.eye(3))
        L_t = np.linalg.cholesky(cov_t + EPS * np.eye(3))
        A = L_t @ np.linalg.inv(L_s)
    else:
        raise MiniVGGError(f"unknown colour matching {variant!r}; choose histogram or cholesky")
    return A, mu_t - A @ mu_s


def match_color(style, content, variant="histogram", clip=True):
    """The style image with the content's channel means and covariance (uint8 when
    ``clip``; else the float result before clipping)."""
    s = np.asarray(style, np.float64).reshape(-1, 3)
    c = np.asarray(content, np.float64).reshape(-1, 3)
    A, b = color_match_matrix(s, c, variant)
    out = (s @ A.T + b).reshape(np.shape(style))
    if not clip:
        return out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def luminance(img):
    """Y of YIQ as float (H, W)."""
    return rgb_to_yiq(img)[..., 0]


def grey(y):
    """A float luminance as a uint8 3-channel grey image."""
    y = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=-1)


def match_luminance(style, content):
    """The style's luminance, its mean and standard deviation matched to the content's
    luminance, as a uint8 grey image."""
    ys, yc = luminance(style), luminance(content)
    s = ys.std()
    ys = (ys - ys.mean()) * (yc.std() / s if s > 0 else 1.0) + yc.mean()
    return grey(ys)


def prepare(content, styles, mode):
    """(content, styles) as the optimization sees them for ``mode`` ("none" |
    "histogram" | "cholesky" | "luminance")."""
    if mode in (None, "none"):
        return content, styles
    if mode in ("histogram", "cholesky"):
        return content, [match_color(s, content, mode) for s in styles]
    if mode == "luminance":
        return grey(luminance(content)), [match_luminance(s, content) for s in styles]
    raise MiniVGGError(f"unknown colour transfer {mode!r}; choose none, histogram, cholesky or luminance")
