"""The adapter's two blocks (conv -> norm -> ReLU -> max-pool) computed in a cheaper order, exact up to rounding.

`models.dsaml.Adapter` keeps the modules in the paper's order (so the state dict is the authors'); its forward
calls `block_forward` here, which computes the same function with fewer passes over the large activations:

- ReLU after the max-pool: max and ReLU commute, so ReLU touches a quarter of the values.
- A BatchNorm whose statistics are known before the convolution runs (the running statistics in eval mode;
  in train mode the first block's batch statistics, a quadratic form of four sums over the input, since that
  convolution has one input channel and a 3 x 1 kernel) folds into the convolution's weights and bias.
- The first block's convolution and pool are one step (`_ConvPool`): every 2 x 2 pooling window holds one
  pixel of each of four phases (odd / even row, odd / even column), each phase of the convolution is a
  [C, 3] x [3, pixels] matmul over shifted views of the input, and the pool is the max over the phases. Its
  backward needs only the weight gradient (the input is data): one more matmul, with each window's gradient
  at its winner, instead of a convolution backward and a pool backward over the full-resolution map.

Activations are channels-last. Ties inside a pooling window go to the first pixel in row-major order, as in
nn.MaxPool2d. Everything is differentiable to second order (MAML's second-order meta-gradient).
Measured on a 2-core CPU: docs/performance.md.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsaml_utils.errors import UserError

NEG_INF = float("-inf")


def pooled_size(n: int) -> int:
    """Output length of MaxPool2d(2, padding=1) along an axis of length n."""
    return n // 2 + 1


def _valid(n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per phase (0: odd source index 2i - 1, 1: even 2i), the range of pooled indices with a real source pixel."""
    return (1, n // 2 + 1), (0, (n + 1) // 2)


def _regions(H: int, W: int) -> list[tuple[int, int, int, int]]:
    """Per phase p = 2r + s (row-major in the window): (i0, i1, j0, j1), its pooled indices with a pixel."""
    rows, cols = _valid(H), _valid(W)
    return [(*rows[r], *cols[s]) for r in (0, 1) for s in (0, 1)]


def _winners(phases: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """[4, ...] as 0 / 1 in phases' dtype: each window's first pixel (row-major) holding its max `best` [...].

    Ties are common, not rare: the first convolution's padding columns hold the same value down a window.
    (A float mask: comparing into a float tensor and multiplying by it is several times faster here than
    a bool mask with torch.where.)"""
    win = torch.eq(phases, best, out=torch.empty_like(phases))
    taken = win[0].clone()
    for p in (1, 2, 3):  # a later phase that ties with an earlier winner loses, as in nn.MaxPool2d
        win[p].addcmul_(win[p], taken, value=-1.0)
        taken.add_(win[p])
    return win


def _fill_border(cell: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
    """Set the pooled rows and columns of one phase [N, Ho, Wo, ...] outside [i0, i1) x [j0, j1) to -inf."""
    cell[:, :i0] = NEG_INF
    cell[:, i1:] = NEG_INF
    cell[:, :, :j0] = NEG_INF
    cell[:, :, j1:] = NEG_INF


def _taps(x: torch.Tensor) -> torch.Tensor:
    """[N, F, M] -> [4, 3, N, Ho, Wo]: per phase p and tap k, the input pixel each window's conv pixel reads.

    The first convolution (3 x 1 kernel, padding (2, 1)) makes a [F + 2, M + 2] map whose pixel (h, w) reads
    input rows h - 2 .. h at column w - 1 (zero outside); pooling window (i, j) holds pixels
    (2i - 1 + r, 2j - 1 + s), so phase (r, s), tap k reads input (2i + r + k - 3, 2j + s - 2).
    """
    N, Fr, M = x.shape
    Ho, Wo = pooled_size(Fr + 2), pooled_size(M + 2)
    xp = F.pad(x, (2, 2 * Wo - M - 2, 3, 2 * Ho + 2 - Fr - 3))  # padded input: xp[a, b] = x[a - 3, b - 2]
    cols = [xp[:, :, s::2].contiguous() for s in (0, 1)]  # [N, 2 Ho + 2, Wo]: whole rows copy fast below
    views = [cols[s][:, r + k: r + k + 2 * Ho - 1: 2] for r in (0, 1) for s in (0, 1) for k in range(3)]
    return torch.stack(views).view(4, 3, N, Ho, Wo)


class _ConvPool(torch.autograd.Function):
    """MaxPool2d(2, padding=1)(Conv2d(1, C, (3, 1), padding=(2, 1))) of [N, F, M], as [C, N, Ho, Wo].

    Takes the convolution's weight [C, 3] and bias [C]; no gradient to the input (it is data). The four
    phases of the convolution are a [C, 3] x [4, 3, pixels] matmul; the pool is a max over the phases.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        taps = _taps(x)
        _, _, N, Ho, Wo = taps.shape
        C = weight.shape[0]
        y = torch.bmm(weight.expand(4, C, 3), taps.view(4, 3, -1)).view(4, C, N, Ho, Wo)
        for p, region in enumerate(_regions(x.shape[1] + 2, x.shape[2] + 2)):
            _fill_border(y[p].permute(1, 2, 3, 0), *region)  # outside the conv's map: the pool's -inf padding
        best = y.amax(0)  # the bias is the same in every phase: added after the max
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ctx.save_for_backward(taps, _winners(y, best))
        return best + bias[:, None, None, None]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        if ctx.needs_input_grad[0]:
            raise RuntimeError("adapter: the fused first block gives no gradient to its input")
        taps, win = ctx.saved_tensors
        C = g.shape[0]
        cells = win * g.contiguous()  # [4, C, N, Ho, Wo]: each window's gradient at its winner
        grad_w = torch.bmm(cells.view(4, C, -1), taps.view(4, 3, -1).transpose(1, 2)).sum(0)
        return None, grad_w, g.sum((1, 2, 3))


def _fused_first_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv (3 x 1) -> max-pool of [N, 1, F, M] channels-last, as a channels-last [N, C, Ho, Wo] map."""
    if x.requires_grad:  # a gradient to the input is asked for: the plain convolution and pool
        return F.max_pool2d(F.conv2d(x, weight[:, None, :, None], bias, padding=(2, 1)), 2, padding=1)
    out = _ConvPool.apply(x[:, 0], weight, bias)  # [C, N, Ho, Wo]
    return out.permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)


def block_forward(block: nn.Sequential, x: torch.Tensor, first: bool) -> torch.Tensor:
    """conv -> norm -> ReLU -> max-pool of one adapter block, computed as described in the module docstring.

    x: [N, C_in, H, W], channels-last. The second block in train mode, and blocks with another norm
    (GroupNorm), run module by module.
    """
    conv, norm, relu, pool = block
    batch = isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None)
    if not isinstance(norm, nn.BatchNorm2d) or (batch and not first):
        return relu(pool(norm(conv(x))))
    if batch:
        n = x.shape[0] * _out_pixels(x, conv)  # values per channel of the conv's output
        mean, var = _first_block_stats(x, conv, n)
        _update_running_stats(norm, mean, var, n)
    else:
        mean, var = norm.running_mean, norm.running_var
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = ((conv.bias - mean) if conv.bias is not None else -mean) * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    weight = conv.weight * scale[:, None, None, None]
    if first:
        return relu(_fused_first_block(x, weight.reshape(weight.shape[0], 3), shift))
    return relu(pool(F.conv2d(x, weight, shift, conv.stride, conv.padding)))


def _out_pixels(x: torch.Tensor, conv: nn.Conv2d) -> int:
    """Output pixels per slice of a stride-1 convolution."""
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    return (x.shape[-2] + 2 * ph - kh + 1) * (x.shape[-1] + 2 * pw - kw + 1)


def _first_block_stats(x: torch.Tensor, conv: nn.Conv2d, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and biased variance per channel of conv(x) for a 1-channel, 3 x 1, row-padding-2 conv.

    Every output pixel is w . (x[h-2], x[h-1], x[h]) + b over the zero-padded input, and each of the three
    shifted copies holds all of x; so over the n output pixels the mean is mu * sum(w) + b and the
    variance w^T C w, with C[k, l] = (lag_|k-l| / n) - mu^2 (lag_d = sum of x[h] x[h + d] along frames).
    Sums in float64: the log-mel mean is large against its spread.
    """
    if conv.kernel_size != (3, 1) or conv.padding != (2, 1) or conv.in_channels != 1 or conv.stride != (1, 1):
        raise UserError(f"adapter: no closed-form statistics for {conv}")
    x = x[:, 0]
    f64 = torch.float64
    mu = x.sum(dtype=f64) / n
    lags = torch.stack([(x * x).sum(dtype=f64), (x[:, 1:] * x[:, :-1]).sum(dtype=f64),
                        (x[:, 2:] * x[:, :-2]).sum(dtype=f64)]) / n
    idx = torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]], device=x.device)
    cov = lags[idx] - mu * mu  # [3, 3]
    w = conv.weight.reshape(conv.out_channels, 3).to(f64)
    mean = mu * w.sum(1) + (conv.bias.to(f64) if conv.bias is not None else 0.0)
    var = ((w @ cov) * w).sum(1).clamp(min=0.0)
    return mean.to(x.dtype), var.to(x.dtype)


@torch.no_grad()
def _update_running_stats(norm: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """What nn.BatchNorm2d does to its running statistics in a train-mode forward (unbiased variance)."""
    if not (norm.training and norm.track_running_stats and norm.running_mean is not None):
        return
    norm.num_batches_tracked.add_(1)
    m = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    norm.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
    norm.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
