"""Hand-written optimizers for the image: L-BFGS, Adam and SGD with momentum.

Every optimizer minimizes ``f(x) -> (loss, grad)`` (or ``(loss, grad, info)``, ``info`` a
dict that is passed through to the records) over an array ``x`` of any shape, on numpy
or CuPy alike (``xp = get_array_module(x)``). ``run(f, x0, iters, callback)`` performs
up to ``iters`` updates and returns an :class:`OptimResult`.

The log rows the callback receives: row 0 is the objective at ``x0``; row ``i`` is the
objective after ``i`` updates (for L-BFGS one update = one iteration, whatever number
of function evaluations its line search made). Every row's loss is the value of ``f``
at exactly the ``x`` it reports, so the run needs ``iters + 1`` evaluations for Adam,
SGD and L-BFGS without line search; the strong-Wolfe line search reuses the evaluation
at the point it accepts.

Stopping: after ``iters`` updates; when the relative change of the loss between two
rows is at most ``tol`` (off by default); L-BFGS also stops, as torch.optim.LBFGS
does, when ``max|grad| <= tolerance_grad``, the step or the loss change falls below
``tolerance_change``, or the direction is not a descent direction. A non-finite loss
or gradient stops the run (``stopped == "diverged"``) and keeps the last good ``x``. A
``KeyboardInterrupt`` (Ctrl-C) stops it too (``"interrupted"``), keeping the last
finished iterate; so does a callback that returns ``True`` (``"callback"``).

The update rules follow PyTorch's (torch.optim.LBFGS, Adam, SGD) operation for
operation, so that a run can be compared with one in PyTorch step by step. The math
is in docs/optim.md.
"""

import math
import time

from .backend import ReferenceOps, get_array_module
from .errors import MiniVGGError

OPTIMIZERS = ("lbfgs", "adam", "sgd")


class OptimResult:
    """What a run returns: the final ``x`` (the last good iterate), its ``loss`` and
    ``info``, the number of updates made (``iters``), function evaluations (``evals``),
    why it stopped (``stopped``: iterations | tolerance | diverged | interrupted |
    callback) and a one-line ``message``."""

    def __init__(self, x, loss, info, iters, evals, stopped, message):
        self.x, self.loss, self.info = x, loss, info
        self.iters, self.evals = iters, evals
        self.stopped, self.message = stopped, message

    def __repr__(self):
        return f"OptimResult(loss={self.loss!r}, iters={self.iters}, stopped={self.stopped!r})"


class _Diverged(Exception):
    def __init__(self, what):
        super().__init__(what)
        self.what = what


def _evaluate(f, x):
    """Call ``f`` and normalise its answer to (float loss, grad, info); raise _Diverged
    on a non-finite loss or gradient."""
    out = f(x)
    if len(out) == 2:
        loss, grad = out
        info = {}
    else:
        loss, grad, info = out
    loss = float(loss)
    if not math.isfinite(loss):
        raise _Diverged(f"loss {loss}")
    xp = get_array_module(grad)
    if not bool(xp.isfinite(grad).all()):
        raise _Diverged("non-finite gradient")
    return loss, grad, info


def _dot(a, b):
    xp = get_array_module(a)
    return float(xp.vdot(a.ravel(), b.ravel()))


def _sdot(a, b):
    """Dot product kept as a 0-d value of the arrays' dtype (float32 scalars in the
    L-BFGS recursion, as torch computes them)."""
    xp = get_array_module(a)
    return xp.vdot(a.ravel(), b.ravel())


def _absmax(a):
    xp = get_array_module(a)
    return float(xp.abs(a).max())


class Optimizer:
    """Shared loop: logging, tolerance, divergence guard, interrupt handling."""

    name = "optimizer"
    default_lr = 1.0
    # The backend ops whose adam_update / sgd_update do the update steps in place (the
    # net's: kernels on the GPU); by default the reference (array expressions, numpy or cupy).
    ops = ReferenceOps()

    def __init__(self, lr=None, tol=0.0):
        self.lr = self.default_lr if lr is None else float(lr)
        if not self.lr > 0:
            raise MiniVGGError(f"learning rate must be positive; got {lr}")
        if tol < 0:
            raise MiniVGGError(f"tolerance must be >= 0; got {tol}")
        self.tol = float(tol)

    def run(self, f, x0, iters, callback=None):
        """Minimize ``f`` from ``x0`` for at most ``iters`` updates; see the module doc."""
        if iters < 0:
            raise MiniVGGError(f"number of iterations must be >= 0; got {iters}")
        self._f = f
        self._callback = callback
        self._evals = 0
        self._good = None  # (x, loss, info, k) of the last logged row
        self._t0 = time.perf_counter()
        try:
            stopped, message = self._loop(f, x0, iters)
        except _Diverged as e:
            if self._good is None:
                raise MiniVGGError(f"the objective is not finite at the initial image ({e.what})") from None
            k = self._good[3]
            stopped = "diverged"
            message = f"diverged: {e.what} after update {k}; kept the image of iteration {k} (try a smaller learning rate)"
        except KeyboardInterrupt:
            if self._good is None:
                raise
            stopped, message = "interrupted", f"interrupted after {self._good[3]} update(s)"
        except _StopByCallback:
            stopped, message = "callback", f"stopped by the callback after {self._good[3]} update(s)"
        x, loss, info, k = self._good
        return OptimResult(x, loss, info, k, self._evals, stopped, message)

    def _eval(self, x):
        self._evals += 1
        return _evaluate(self._f, x)

    def _log(self, k, x, loss, info):
        """Record row ``k`` (the objective at ``x`` after ``k`` updates)."""
        self._good = (x, loss, info, k)
        if self._callback is not None:
            rec = {"iter": k, "loss": loss, "info": info, "x": x, "evals": self._evals,
                   "seconds": time.perf_counter() - self._t0}
            if self._callback(rec):
                raise _StopByCallback()

    def _converged(self, prev, loss):
        return self.tol > 0 and abs(loss - prev) <= self.tol * max(abs(prev), 1e-30)

    def _loop(self, f, x, iters):
        """First-order loop shared by Adam and SGD: one evaluation per row."""
        loss, g, info = self._eval(x)
        self._log(0, x, loss, info)
        self._init_state(x)
        for k in range(1, iters + 1):
            x = self._step(x, g, k)
            prev = loss
            loss, g, info = self._eval(x)
            self._log(k, x, loss, info)
            if self._converged(prev, loss):
                return "tolerance", f"converged: relative loss change <= {self.tol:g} at update {k}"
        return "iterations", f"finished {iters} update(s)"


class _StopByCallback(Exception):
    pass


class SGD(Optimizer):
    """Gradient descent with (heavy-ball) momentum, as torch.optim.SGD (dampening 0):
    ``b_1 = g_1``, ``b_k = momentum * b_{k-1} + g_k``, ``x <- x - lr * b_k``.

    ``first_step``: when given and ``lr`` is not, the learning rate is set once, at the
    first update, to ``first_step / mean|g_1|`` (so the first step moves each element by
    ``first_step`` on average) and kept fixed afterwards."""

    name = "sgd"
    default_lr = 1e-3

    def __init__(self, lr=None, momentum=0.9, tol=0.0, first_step=None):
        super().__init__(lr, tol)
        if not 0 <= momentum < 1:
            raise MiniVGGError(f"momentum must be in [0, 1); got {momentum}")
        if first_step is not None and not first_step > 0:
            raise MiniVGGError(f"first step must be positive; got {first_step}")
        self.momentum = float(momentum)
        self.first_step = None if lr is not None else first_step

    def _init_state(self, x):
        self.buf = None

    def _step(self, x, g, k):
        if k == 1 and self.first_step is not None:
            xp = get_array_module(g)
            mean = float(xp.abs(g).mean())
            if mean > 0:
                self.lr = self.first_step / mean
        if self.momentum == 0:
            return x - self.lr * g
        first = self.buf is None
        if first:
            self.buf = get_array_module(x).empty_like(x)
        return self.ops.sgd_update(x.copy(), g, self.buf, self.lr, self.momentum, first=first)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with the standard bias correction, as torch.optim.Adam:

    m_k = b1 m + (1-b1) g;  v_k = b2 v + (1-b2) g^2;
    x <- x - (lr / (1-b1^k)) * m_k / (sqrt(v_k) / sqrt(1-b2^k) + eps).
    """

    name = "adam"
    default_lr = 10.0

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, tol=0.0):
        super().__init__(lr, tol)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)

    def _init_state(self, x):
        xp = get_array_module(x)
        self.m = xp.zeros_like(x)
        self.v = xp.zeros_like(x)

    def _step(self, x, g, k):
        return self.ops.adam_update(x.copy(), g, self.m, self.v, k, self.lr, self.b1, self.b2, self.eps)


class LBFGS(Optimizer):
    """Limited-memory BFGS (Nocedal 1980; Liu & Nocedal 1989), torch.optim.LBFGS's
    algorithm.

    Direction: the two-loop recursion over the last ``history_size`` pairs
    ``s = x_{k+1} - x_k``, ``y = g_{k+1} - g_k`` (a pair is kept only when
    ``y.s > 1e-10``), initial Hessian ``H0 = (y.s)/(y.y)`` of the newest pair.
    Step: without line search ``t = lr`` (the first iteration
    ``min(1, 1/|g|_1) * lr``); with ``line_search="strong_wolfe"`` a line search from
    that ``t`` that finds a point satisfying the strong Wolfe conditions
    (c1 = 1e-4, c2 = 0.9; Nocedal & Wright, Algorithm 3.5/3.6, cubic interpolation).
    """

    name = "lbfgs"
    default_lr = 1.0

    def __init__(self, lr=None, history_size=100, line_search=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, max_ls=25, tol=0.0):
        super().__init__(lr, tol)
        if int(history_size) < 1:
            raise MiniVGGError(f"history size must be >= 1; got {history_size}")
        if line_search not in (None, "none", "strong_wolfe"):
            raise MiniVGGError(f"unknown line search {line_search!r}; choose none or strong_wolfe")
        self.history_size = int(history_size)
        self.line_search = None if line_search == "none" else line_search
        self.tolerance_grad = float(tolerance_grad)
        self.tolerance_change = float(tolerance_change)
        self.max_ls = int(max_ls)

    def _direction(self, g, old_dirs, old_stps, ro, H_diag):
        q = -g
        al = [0.0] * len(old_dirs)
        for i in range(len(old_dirs) - 1, -1, -1):
            al[i] = _sdot(old_stps[i], q) * ro[i]
            q = q - al[i] * old_dirs[i]
        r = q * H_diag
        for i in range(len(old_dirs)):
            be_i = _sdot(old_dirs[i], r) * ro[i]
            r = r + (al[i] - be_i) * old_stps[i]
        return r

    def _loop(self, f, x, iters):
        loss, g, info = self._eval(x)
        self._log(0, x, loss, info)
        if _absmax(g) <= self.tolerance_grad:
            return "tolerance", f"converged: max |gradient| <= {self.tolerance_grad:g} at the initial image"
        old_dirs, old_stps, ro = [], [], []
        H_diag = 1.0
        d = t = prev_g = None
        for k in range(1, iters + 1):
            if k == 1:
                d = -g
            else:
                y = g - prev_g
                s = d * t
                ys = _sdot(y, s)
                if float(ys) > 1e-10:
                    if len(old_dirs) == self.history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / _sdot(y, y)
                d = self._direction(g, old_dirs, old_stps, ro, H_diag)
            prev_g, prev_loss = g, loss
            xp = get_array_module(g)
            t = min(1.0, float(1.0 / xp.abs(g).sum())) * self.lr if k == 1 else self.lr
            gtd = _dot(g, d)
            if gtd > -self.tolerance_change:
                return "tolerance", f"converged: no descent direction left at update {k}"
            if self.line_search == "strong_wolfe":
                loss, g, info, t, x = self._strong_wolfe(x, t, d, loss, g, gtd)
            else:
                x = x + t * d
                loss, g, info = self._eval(x)
            self._log(k, x, loss, info)
            if _absmax(g) <= self.tolerance_grad:
                return "tolerance", f"converged: max |gradient| <= {self.tolerance_grad:g} at update {k}"
            if _absmax(d) * abs(t) <= self.tolerance_change:
                return "tolerance", f"converged: step below {self.tolerance_change:g} at update {k}"
            if abs(loss - prev_loss) < self.tolerance_change:
                return "tolerance", f"converged: loss change below {self.tolerance_change:g} at update {k}"
            if self._converged(prev_loss, loss):
                return "tolerance", f"converged: relative loss change <= {self.tol:g} at update {k}"
        return "iterations", f"finished {iters} update(s)"

    # --- strong-Wolfe line search (torch.optim.lbfgs._strong_wolfe) -------------------
    def _strong_wolfe(self, x, t, d, f, g, gtd, c1=1e-4, c2=0.9):
        """Return (loss, grad, info, t, x_new) at a step t satisfying the strong Wolfe
        conditions f(x+td) <= f + c1 t gtd and |g(x+td).d| <= -c2 gtd (or the best
        point found within ``max_ls`` evaluations)."""
        tol_change = self.tolerance_change
        d_norm = _absmax(d)
        evaluated = {}

        def phi(t):
            xt = x + t * d
            fv, gv, iv = self._eval(xt)
            evaluated[t] = (xt, iv)
            return fv, gv

        f_new, g_new = phi(t)
        ls_iter = 0
        gtd_new = _dot(g_new, d)
        t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
        done = False
        bracket = bracket_f = bracket_g = bracket_gtd = None
        while ls_iter < self.max_ls:
            if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
                bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
                break
            if abs(gtd_new) <= -c2 * gtd:
                bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
                done = True
                break
            if gtd_new >= 0:
                bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
                break
            min_step = t + 0.01 * (t - t_prev)
            max_step = t * 10
            tmp = t
            t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
            t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
            f_new, g_new = phi(t)
            gtd_new = _dot(g_new, d)
            ls_iter += 1
        if ls_iter == self.max_ls:
            bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]

        insuf_progress = False
        low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
        while not done and ls_iter < self.max_ls:
            if abs(bracket[1] - bracket[0]) * d_norm < tol_change or bracket[1] == bracket[0]:
                break  # the bracket has shrunk to (or below the tolerance of) one point
            t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
            eps = 0.1 * (max(bracket) - min(bracket))
            if min(max(bracket) - t, t - min(bracket)) < eps:
                if insuf_progress or t >= max(bracket) or t <= min(bracket):
                    t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                    insuf_progress = False
                else:
                    insuf_progress = True
            else:
                insuf_progress = False
            f_new, g_new = phi(t)
            gtd_new = _dot(g_new, d)
            ls_iter += 1
            if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
                bracket[high_pos], bracket_f[high_pos], bracket_g[high_pos], bracket_gtd[high_pos] = t, f_new, g_new, gtd_new
                low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
            else:
                if abs(gtd_new) <= -c2 * gtd:
                    done = True
                elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                    bracket[high_pos], bracket_f[high_pos], bracket_g[high_pos], bracket_gtd[high_pos] = (
                        bracket[low_pos], bracket_f[low_pos], bracket_g[low_pos], bracket_gtd[low_pos])
                bracket[low_pos], bracket_f[low_pos], bracket_g[low_pos], bracket_gtd[low_pos] = t, f_new, g_new, gtd_new
        t = bracket[low_pos]
        f_new, g_new = bracket_f[low_pos], bracket_g[low_pos]
        if t in evaluated:
            x_new, info = evaluated[t]
        else:  # t == 0: no acceptable point; stay where we are
            x_new, info = x, self._good[2]
        return f_new, g_new, info, t, x_new


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimizer of the cubic through (x1, f1, g1), (x2, f2, g2), clamped to ``bounds``
    (Nocedal & Wright eq. 3.59); the bounds' midpoint when the cubic has no minimum."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    if x1 == x2:  # no interval: the cubic is undefined
        return min(max(x1, xmin_bound), xmax_bound)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def make_optimizer(name, lr=None, **options):
    """An optimizer by name (lbfgs | adam | sgd) with its options (see the classes)."""
    classes = {"lbfgs": LBFGS, "adam": Adam, "sgd": SGD}
    if name not in classes:
        raise MiniVGGError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    cls = classes[name]
    try:
        return cls(lr=lr, **options)
    except TypeError as e:
        raise MiniVGGError(f"bad option for optimizer {name}: {e}") from None
