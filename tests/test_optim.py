"""The hand-written optimizers against torch.optim on quadratics, step by step, and
their stopping rules (tolerance, divergence guard, interrupt, callback)."""

import numpy as np
import pytest

from minivgg import MiniVGGError
from minivgg.optim import LBFGS, SGD, Adam, make_optimizer


def quadratic(n=12, seed=0, cond=50.0):
    """f(x) = 1/2 x^T A x - b^T x with A SPD of condition number ``cond`` (float64)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = Q @ np.diag(np.geomspace(1.0, cond, n)) @ Q.T
    b = rng.standard_normal(n)

    def f(x):
        return 0.5 * float(x @ A @ x) - float(b @ x), A @ x - b

    return f, A, b


def rows_of(opt, f, x0, iters):
    rows = []
    res = opt.run(f, x0, iters, callback=lambda r: rows.append(r["loss"]) and False)
    return res, rows


def torch_lbfgs_rows(A, b, x0, iters, line_search):
    """torch.optim.LBFGS's objective after k iterations, k = 0..iters (a fresh run per k)."""
    torch = pytest.importorskip("torch")
    At, bt = torch.from_numpy(A), torch.from_numpy(b)
    rows = []
    for k in range(iters + 1):
        x = torch.tensor(x0, requires_grad=True)
        if k:
            opt = torch.optim.LBFGS([x], lr=1, max_iter=k, max_eval=100 * k, history_size=100,
                                    line_search_fn=line_search)

            def closure():
                opt.zero_grad()
                loss = 0.5 * x @ At @ x - bt @ x
                loss.backward()
                return loss

            opt.step(closure)
        with torch.no_grad():
            rows.append(float(0.5 * x @ At @ x - bt @ x))
    return rows


@pytest.mark.torch
@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_lbfgs_matches_torch_on_quadratic(line_search):
    f, A, b = quadratic()
    x0 = np.random.default_rng(1).standard_normal(A.shape[0])
    iters = 8
    res, rows = rows_of(LBFGS(line_search=line_search), f, x0, iters)
    ref = torch_lbfgs_rows(A, b, x0, iters, line_search)
    assert len(rows) == iters + 1
    np.testing.assert_allclose(rows, ref, rtol=1e-9, atol=1e-12)


def test_lbfgs_reaches_scipy_minimum():
    from scipy.optimize import minimize

    f, A, b = quadratic(n=20, cond=1e3)
    x0 = np.zeros(20)
    ref = minimize(lambda x: f(x)[0], x0, jac=lambda x: f(x)[1], method="L-BFGS-B", options={"gtol": 1e-12})
    res = LBFGS(line_search="strong_wolfe", tolerance_grad=0, tolerance_change=0).run(f, x0, 200)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), atol=1e-6)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-4)
    assert res.loss <= ref.fun + 1e-9 * abs(ref.fun)


def test_lbfgs_small_history_still_converges():
    f, A, b = quadratic(n=10, cond=20)
    res = LBFGS(history_size=2, line_search="strong_wolfe", tolerance_change=0).run(f, np.zeros(10), 300)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), atol=1e-5)


@pytest.mark.torch
def test_adam_matches_torch():
    torch = pytest.importorskip("torch")
    f, A, b = quadratic()
    x0 = np.random.default_rng(2).standard_normal(A.shape[0])
    res, rows = rows_of(Adam(lr=0.05), f, x0, 10)
    x = torch.tensor(x0, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.05)
    ref = []
    for _ in range(11):
        opt.zero_grad()
        loss = 0.5 * x @ torch.from_numpy(A) @ x - torch.from_numpy(b) @ x
        ref.append(float(loss.detach()))
        loss.backward()
        opt.step()
    np.testing.assert_allclose(rows, ref, rtol=1e-12)


@pytest.mark.torch
def test_sgd_momentum_matches_torch():
    torch = pytest.importorskip("torch")
    f, A, b = quadratic()
    x0 = np.random.default_rng(3).standard_normal(A.shape[0])
    res, rows = rows_of(SGD(lr=0.01, momentum=0.9), f, x0, 10)
    x = torch.tensor(x0, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.01, momentum=0.9)
    ref = []
    for _ in range(11):
        opt.zero_grad()
        loss = 0.5 * x @ torch.from_numpy(A) @ x - torch.from_numpy(b) @ x
        ref.append(float(loss.detach()))
        loss.backward()
        opt.step()
    np.testing.assert_allclose(rows, ref, rtol=1e-12)


@pytest.mark.parametrize("name", ["lbfgs", "adam", "sgd"])
def test_rows_and_float32(name):
    """Row 0 is f(x0); iters updates give iters + 1 rows; float32 stays float32."""
    f64, A, b = quadratic(n=6, cond=5)

    def f(x):
        v, g = f64(x.astype(np.float64))
        return v, g.astype(np.float32), {"tag": 1}

    x0 = np.ones(6, np.float32)
    seen = []
    res = make_optimizer(name, lr={"lbfgs": 1.0, "adam": 0.1, "sgd": 0.05}[name]).run(f, x0, 5, callback=seen.append)
    assert [r["iter"] for r in seen] == list(range(6))
    assert seen[0]["loss"] == pytest.approx(f64(np.ones(6))[0])
    assert seen[-1]["loss"] < seen[0]["loss"]
    assert res.x.dtype == np.float32 and res.iters == 5 and res.stopped == "iterations"
    assert seen[3]["info"] == {"tag": 1}
    for r in seen:  # every row's loss is f at exactly the row's x
        assert r["loss"] == pytest.approx(f(r["x"])[0], rel=1e-6)


def test_divergence_guard_keeps_last_good_x():
    f0, A, b = quadratic(n=4)
    calls = []

    def f(x):
        calls.append(1)
        v, g = f0(x)
        return (float("nan"), g) if len(calls) == 4 else (v, g)

    rows = []
    res = Adam(lr=0.1).run(f, np.zeros(4), 10, callback=rows.append)
    assert res.stopped == "diverged" and "diverged" in res.message
    assert res.iters == 2 and res.x is rows[-1]["x"]
    assert np.isfinite(res.loss)


def test_nonfinite_gradient_is_caught():
    f0, A, b = quadratic(n=4)

    def f(x):
        v, g = f0(x)
        return v, g * np.inf if abs(x).sum() > 0 else g

    res = LBFGS().run(f, np.zeros(4), 5)
    assert res.stopped == "diverged" and res.iters == 0


def test_nonfinite_at_start_is_an_error():
    with pytest.raises(MiniVGGError):
        Adam().run(lambda x: (float("inf"), x), np.zeros(3), 3)


def test_interrupt_keeps_last_iterate():
    f0, A, b = quadratic(n=4)
    calls = []

    def f(x):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return f0(x)

    rows = []
    res = SGD(lr=0.01).run(f, np.zeros(4), 10, callback=rows.append)
    assert res.stopped == "interrupted" and res.iters == 3 and res.x is rows[-1]["x"]


def test_callback_can_stop_and_tolerance_stops():
    f, A, b = quadratic(n=4, cond=2)
    res = Adam(lr=0.1).run(f, np.zeros(4), 50, callback=lambda r: r["iter"] == 2)
    assert res.stopped == "callback" and res.iters == 2
    res = LBFGS(line_search="strong_wolfe", tol=1e-6).run(f, np.zeros(4), 500)
    assert res.stopped == "tolerance" and res.iters < 50


def test_bad_options():
    with pytest.raises(MiniVGGError):
        make_optimizer("rmsprop")
    with pytest.raises(MiniVGGError):
        LBFGS(history_size=0)
    with pytest.raises(MiniVGGError):
        LBFGS(line_search="armijo")
    with pytest.raises(MiniVGGError):
        Adam(lr=-1)
    with pytest.raises(MiniVGGError):
        SGD(momentum=1.5)


def test_sgd_first_step_sets_the_rate_once():
    f, A, b = quadratic(n=5, cond=3)
    x0 = np.zeros(5)
    g1 = f(x0)[1]
    rows = []
    res = SGD(first_step=0.01, momentum=0.0).run(f, x0, 3, callback=rows.append)
    np.testing.assert_allclose(rows[1]["x"], -0.01 / np.abs(g1).mean() * g1)
    assert res.stopped == "iterations"
    assert SGD(lr=0.5, first_step=0.01).first_step is None


def test_cubic_interpolate_on_a_collapsed_bracket():
    """A zoom bracket can shrink to one point (tolerance_change=0): no division by zero."""
    from minivgg.optim import _cubic_interpolate

    assert _cubic_interpolate(0.5, 1.0, -1e-18, 0.5, 1.0, -1e-18) == 0.5
    assert _cubic_interpolate(0.5, 1.0, -1.0, 0.5, 1.0, -1.0, bounds=(0.6, 1.0)) == 0.6
    # a genuine interval still gives the cubic's minimizer: f = (t - 1)^2 from t = 0 and 3
    assert abs(_cubic_interpolate(0.0, 1.0, -2.0, 3.0, 4.0, 4.0) - 1.0) < 1e-12
