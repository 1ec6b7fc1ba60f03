"""The CPU backend's ops: the arithmetic behind every layer, on numpy arrays.

Same function names and contract on every backend (see ``minivgg/gpu`` for the CUDA
twin); the math and its derivation live with the layers in ``minivgg/layers``.
Convolution is im2col (numba, parallel) + one GEMM per image (numpy's BLAS).
"""

import numpy as np

from . import im2col as k


def _out_size(n, ksize, stride, pad):
    return (n + 2 * pad - ksize) // stride + 1


def conv2d_forward(x, W, b, stride, pad, state):
    """y[n] = W.reshape(Cout, C*kh*kw) @ im2col(x[n]) + b."""
    N, C, H, Wd = x.shape
    Cout, _, kh, kw = W.shape
    Ho, Wo = _out_size(H, kh, stride, pad), _out_size(Wd, kw, stride, pad)
    W2 = W.reshape(Cout, -1)
    cols = np.empty((C * kh * kw, Ho * Wo), dtype=x.dtype)
    y = np.empty((N, Cout, Ho * Wo), dtype=np.result_type(x.dtype, W.dtype))
    for n in range(N):
        k.im2col(x[n], kh, kw, stride, pad, Ho, Wo, cols)
        np.matmul(W2, cols, out=y[n])
        y[n] += b[:, None]
    return y.reshape(N, Cout, Ho, Wo), (x, W, stride, pad)


def conv2d_backward(dy, cache, param_grads):
    """dx = col2im(W2^T @ dy[n]); dW = sum_n dy[n] @ im2col(x[n])^T; db = sum dy."""
    x, W, stride, pad = cache
    N, C, H, Wd = x.shape
    Cout, _, kh, kw = W.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    W2 = W.reshape(Cout, -1)
    dy2 = dy.reshape(N, Cout, Ho * Wo)
    dtype = np.result_type(dy.dtype, W.dtype)
    dx = np.empty((N, C, H, Wd), dtype=dtype)
    dcols = np.empty((C * kh * kw, Ho * Wo), dtype=dtype)
    for n in range(N):
        np.matmul(W2.T, dy2[n], out=dcols)
        k.col2im(dcols, kh, kw, stride, pad, Ho, Wo, dx[n])
    if not param_grads:
        return dx, None, None
    dW = np.zeros((Cout, C * kh * kw), dtype=dtype)
    cols = np.empty((C * kh * kw, Ho * Wo), dtype=x.dtype)
    for n in range(N):
        k.im2col(x[n], kh, kw, stride, pad, Ho, Wo, cols)
        dW += dy2[n] @ cols.T
    db = dy2.sum(axis=(0, 2))
    return dx, dW.reshape(W.shape), db


def relu_forward(x):
    y = np.empty_like(x)
    k.relu_forward(x, y)
    return y


def relu_backward(dy, y):
    dx = np.empty_like(dy)
    k.relu_backward(dy, y, dx)
    return dx


def _pool_shape(x_shape, ksize, s):
    N, C, H, W = x_shape
    return N, C, (H - ksize) // s + 1, (W - ksize) // s + 1


def avg_pool2d_forward(x, ksize, s):
    N, C, Ho, Wo = _pool_shape(x.shape, ksize, s)
    y = np.empty((N * C, Ho, Wo), dtype=x.dtype)
    k.avg_pool_forward(x.reshape(N * C, *x.shape[2:]), ksize, s, y)
    return y.reshape(N, C, Ho, Wo)


def avg_pool2d_backward(dy, x_shape, ksize, s):
    N, C, H, W = x_shape
    dx = np.empty((N * C, H, W), dtype=dy.dtype)
    k.avg_pool_backward(np.ascontiguousarray(dy).reshape(N * C, *dy.shape[2:]), ksize, s, dx)
    return dx.reshape(x_shape)


def max_pool2d_forward(x, ksize, s):
    N, C, Ho, Wo = _pool_shape(x.shape, ksize, s)
    y = np.empty((N * C, Ho, Wo), dtype=x.dtype)
    arg = np.empty((N * C, Ho, Wo), dtype=np.uint8 if ksize * ksize <= 256 else np.int32)
    k.max_pool_forward(x.reshape(N * C, *x.shape[2:]), ksize, s, y, arg)
    return y.reshape(N, C, Ho, Wo), (arg, x.shape, ksize, s)


def max_pool2d_backward(dy, cache):
    arg, x_shape, ksize, s = cache
    N, C, H, W = x_shape
    dx = np.empty((N * C, H, W), dtype=dy.dtype)
    k.max_pool_backward(np.ascontiguousarray(dy).reshape(N * C, *dy.shape[2:]), arg, ksize, s, dx)
    return dx.reshape(x_shape)


def linear_forward(x, W, b):
    return x @ W.T + b


def linear_backward(dy, x, W, param_grads):
    dx = dy @ W
    if not param_grads:
        return dx, None, None
    return dx, dy.T @ x, dy.sum(axis=0)
