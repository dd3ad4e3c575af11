"""A change optimised below full resolution, and exactly what the network sees of it.

On a 9 MP photo the network sees 288 x 461 pixels, yet the paper's delta has one value per full-resolution pixel:
each iteration then spends ~10 memory-bound passes over 28 M values on the chain around a network pass of a
few hundred thousand. Here delta lives at ``factor`` times the network's size; the change is

    change = m * k * U(tanh(delta))

with U the bilinear upsampling to full resolution, m the full-resolution budget map (JND x scaling) and k the
channels' factors, so the JND still shapes it pixel by pixel. What the network sees of it, D(m * U(t)) with D
the preprocessing's resize, is linear in t = tanh(delta): at output pixel q it is a weighted sum of K x K values
of t around ``factor`` x q. The weights depend on m only, so they are computed once, with sparse products over
m; its MSE is a quadratic form in t, computed the same way. Every iteration then runs at the network's size,
and nothing is approximated: the released change is exactly the one optimised.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .extractor import PreprocessConfig, resize_to

__all__ = ["CoarseChange", "resize_matrix", "upsample_matrix"]

class CoarseChange:
    """The change of one image, parametrised at ``factor`` x the network's size.

    Args:
        budget: (H, W) the full-resolution budget map (JND x scaling).
        network_size: (h, w) what the network sees (`preprocessed_size`).
        factor: delta's size is ``factor`` x ``network_size`` (an integer: the weights' stride).
        preprocessing: the network's resize.
    """

    def __init__(self, budget: torch.Tensor, network_size: Sequence[int], factor: int,
                 preprocessing: PreprocessConfig):
        (full_h, full_w), (h, w) = budget.shape, network_size
        self.budget, self.factor = budget, factor
        self.size = (factor * h, factor * w)
        axes = [(resize_matrix(n, m, preprocessing), upsample_matrix(factor * m, n))
                for n, m in ((full_h, h), (full_w, w))]
        (rows, self._pad_y), (cols, self._pad_x) = (_bands(resize, upsample, factor) for resize, upsample in axes)
        host = budget.cpu()  # built on the CPU (a few passes over the map), used where the budget lives
        # weights[a, b, q] = sum_p Dy[qy, py] Uy[py, f qy + a] Dx[qx, px] Ux[px, f qx + b] m[p] (pads included)
        ky, kx = rows.shape[0] // h, cols.shape[0] // w
        weights = _sandwich(rows, host, cols).view(ky, h, kx, w).permute(0, 2, 1, 3)
        # squares[i, j, r] = sum_p Uy[py, ry] Uy[py, ry + i] Ux[px, rx] Ux[px, rx + j] m[p]^2, i, j in {0, 1}
        (pairs_y, pairs_x), (ry, rx) = (_pairs(upsample) for _, upsample in axes), self.size
        squares = _sandwich(pairs_y, host.square(), pairs_x).view(2, ry, 2, rx).permute(0, 2, 1, 3)
        self.weights, self.squares = weights.contiguous().to(budget.device), squares.contiguous().to(budget.device)

    def seen(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, *size) -> (B, C, h, w): D(m * U(t)), what the network's resize makes of the change."""
        (y, top, bottom), (x, left, right) = self._pad_y, self._pad_x
        return _Stencil.apply(F.pad(t, (left, right, top, bottom)), self.weights, self.factor, y, x)

    def square_sums(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, *size) -> (B, C): sum over full-resolution pixels of (m * U(t))^2 = t . Q t."""
        return _QuadraticForm.apply(t, self.squares)

    @torch.no_grad()
    def full(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, *size) -> (B, C, H, W): m * U(t) at full resolution."""
        return _upsample(t, tuple(self.budget.shape)).mul_(self.budget)


class _Stencil(torch.autograd.Function):
    """out[q] = sum_ab weights[a, b, q] * padded[y + a + f qy, x + b + f qx], accumulated in place both ways: as
    36 autograd nodes the backward pass zero-filled a padded copy per term, 4x slower than the network's resize."""

    @staticmethod
    def forward(ctx, padded: torch.Tensor, weights: torch.Tensor, f: int, y: int, x: int) -> torch.Tensor:
        ky, kx, h, w = weights.shape
        out = padded.new_zeros((*padded.shape[:2], h, w))
        for a in range(ky):
            for b in range(kx):
                out.addcmul_(weights[a, b], padded[..., y + a:y + a + f * h:f, x + b:x + b + f * w:f])
        ctx.save_for_backward(weights)
        ctx.geometry = padded.shape, f, y, x
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weights,), (shape, f, y, x) = ctx.saved_tensors, ctx.geometry
        ky, kx, h, w = weights.shape
        padded = grad.new_zeros(shape)
        for a in range(ky):
            for b in range(kx):
                padded[..., y + a:y + a + f * h:f, x + b:x + b + f * w:f].addcmul_(weights[a, b], grad)
        return padded, None, None, None, None


class _QuadraticForm(torch.autograd.Function):
    """t . Q t per (B, C), Q the symmetric operator of `CoarseChange.squares` (couplings to the next row, column
    and diagonals); its gradient is 2 Q t, kept from the forward pass."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
        q = squares[0, 0] * t
        for (i, j), weight in (((1, 0), squares[1, 0]), ((0, 1), squares[0, 1]), ((1, 1), squares[1, 1])):
            _couple(q, t, weight, i, j)
        # squares[1, 1] also couples t[r + (1, 0)] with t[r + (0, 1)]: the anti-diagonal, weight at r
        rows, cols = t.shape[-2] - 1, t.shape[-1] - 1
        q[..., 1:, :cols].addcmul_(squares[1, 1][:rows, :cols], t[..., :rows, 1:])
        q[..., :rows, 1:].addcmul_(squares[1, 1][:rows, :cols], t[..., 1:, :cols])
        ctx.save_for_backward(q)
        return (t * q).sum((-2, -1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (q,) = ctx.saved_tensors
        return 2.0 * q * grad[..., None, None], None


def _couple(q: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, i: int, j: int) -> None:
    """q[r] += weight[r] t[r + (i, j)] and q[r + (i, j)] += weight[r] t[r]: one symmetric coupling of Q t."""
    rows, cols = t.shape[-2] - i, t.shape[-1] - j
    q[..., :rows, :cols].addcmul_(weight[:rows, :cols], t[..., i:, j:])
    q[..., i:, j:].addcmul_(weight[:rows, :cols], t[..., :rows, :cols])


def resize_matrix(n_in: int, n_out: int, preprocessing: PreprocessConfig) -> torch.Tensor:
    """(n_out, n_in): what `resize_to` does along one axis (it is separable)."""
    return _measured(n_in, n_out, lambda x, size: resize_to(x, size, preprocessing))


def upsample_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): the bilinear upsampling of `CoarseChange.full` along one axis."""
    return _measured(n_in, n_out, _upsample)


def _upsample(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """U: the one upsampling the change goes through, and whose matrix the stencil and the MSE are built from."""
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def _measured(n_in: int, n_out: int, resize: Callable) -> torch.Tensor:
    """(n_out, n_in): a separable resize along one axis, measured rather than re-derived, so that it is exactly
    the one applied whatever its kernel. One resize of a comb: column j holds ones every ``period`` rows from row
    j, farther apart than any output's kernel is wide, so each output of column j is the weight of the one one
    under its kernel. (A 1-pixel-wide probe would not do: the antialiased resize of such an image is not the 1-D
    resize of its column.)"""
    period = 4 * (-(-n_in // n_out)) + 4  # the bicubic kernel spans 2 input pixels per output pixel each side
    comb = (torch.arange(n_in)[:, None] % period == torch.arange(period)).float()[None, None]
    responses = resize(comb, (n_out, period))[0, 0]  # (n_out, period)
    centre = (torch.arange(n_out) + 0.5) * n_in / n_out - 0.5
    j = torch.arange(period)
    under = j + period * torch.round((centre[:, None] - j) / period).long()  # (n_out, period)
    inside = (under >= 0) & (under < n_in)
    out = torch.zeros(n_out, n_in)
    out[torch.arange(n_out)[:, None].expand_as(under)[inside], under[inside]] = responses[inside]
    return out


def _bands(resize: torch.Tensor, upsample: torch.Tensor, factor: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The stencil's rows along one axis: a sparse (K n, N) matrix whose row a n + q holds D[q, p] U[p, f q + c + a]
    (c the first offset; indices outside delta read its zero padding), and (where offset a = 0 reads the padded
    delta, the padding before, after)."""
    n, n_delta = resize.shape[0], upsample.shape[1]
    (d_first, d_last), (u_first, u_last) = _support(resize), _support(upsample)
    first, last = u_first[d_first], u_last[d_last]  # the delta entries output q depends on (both are monotone)
    base = torch.arange(n) * factor
    offset = int((first - base).min())
    k = int((last - base - offset).max()) + 1
    pad = (max(0, -offset), max(0, factor * (n - 1) + offset + k - n_delta))  # where the stencil overhangs delta
    cols = _window(d_first, d_last, resize.shape[1])
    padded = F.pad(upsample, pad)
    values = [resize.gather(1, cols) * padded[cols, (base + offset + a + pad[0])[:, None]] for a in range(k)]
    return _csr(torch.cat(values), cols.repeat(k, 1), resize.shape[1]), (offset + pad[0], *pad)


def _pairs(upsample: torch.Tensor) -> torch.Tensor:
    """Sparse (2 n_delta, N): rows U[p, r] U[p, r + i] for i = 0, 1 (the bilinear upsampling couples neighbours
    only), the factors of the MSE's quadratic form."""
    columns = upsample.T.contiguous()  # (n_delta, N)
    first, last = _support(columns)
    cols = _window(first, torch.maximum(last, F.pad(last[1:], (0, 1))), upsample.shape[0])  # r's and r + 1's
    here, after = columns.gather(1, cols), F.pad(columns[1:], (0, 0, 0, 1)).gather(1, cols)
    return _csr(torch.cat([here * here, here * after]), cols.repeat(2, 1), upsample.shape[0])


def _support(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last non-zero column of each row of a banded matrix."""
    nonzero = (matrix != 0).to(torch.uint8)
    return nonzero.argmax(1), matrix.shape[1] - 1 - nonzero.flip(1).argmax(1)


def _window(first: torch.Tensor, last: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(rows, L) column indices: the same number L of consecutive columns per row, covering first..last."""
    width = int((last - first).max()) + 1
    return first.clamp(max=n_cols - width)[:, None] + torch.arange(width)


def _csr(values: torch.Tensor, cols: torch.Tensor, n_cols: int) -> torch.Tensor:
    """A sparse CSR matrix of ``cols.shape[1]`` stored values a row."""
    rows, width = cols.shape
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(torch.arange(0, rows * width + 1, width), cols.flatten(), values.flatten(),
                                       (rows, n_cols), check_invariants=True)


def _sandwich(rows: torch.Tensor, image: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ image @ cols.T for sparse ``rows`` and ``cols``: one pass over the full-resolution ``image``."""
    return (cols @ (rows @ image).T.contiguous()).T
