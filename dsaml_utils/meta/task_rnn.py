"""Recurrent layers of many tasks in one loop: the batched meta-step's LSTMs and GRUs.

In the batched meta-step every task has its own copy of a recurrent layer's weights. Called once per task,
a CPU GRU (which has no fused kernel) or an LSTM differentiated twice (the fused oneDNN kernel's backward is
itself decomposed step by step) records a dozen small autograd nodes per time step and per task: with 16
tasks and 60 steps that bookkeeping, not the arithmetic, was most of a quick-preset CRNN or DNN meta-step
and of a second-order DSAML meta-step. Here the recurrence runs once for all tasks, each step one batched
matmul over the task axis (`torch.baddbmm`) and the gate arithmetic on [tasks, batch, hidden] tensors.

The equations are PyTorch's (`nn.LSTM`, `nn.GRU`, gate order i, f, g, o and r, z, n):

    LSTM  i, f, g, o = W_ih x + b_ih + W_hh h + b_hh;  c' = sig(f) c + sig(i) tanh(g);  h' = sig(o) tanh(c')
    GRU   r, z = sig(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z});  n = tanh(W_in x + b_in + r (W_hn h + b_hn))
          h' = (1 - z) n + z h

from zero initial states, for single-layer, unidirectional, batch-first modules with biases (what
`models.layers.BiRNN` builds); anything else is left to the per-task call (`supported`). A first-order
LSTM is left to it too: its fused kernel per task beat this loop (quick preset, one thread, meta-step
median of 5: MCRNN 0.64 s per task against 0.84-0.90 s here, DAMFF 0.26-0.28 against 0.37-0.42), while for
GRUs (CRNN 0.72 -> 0.33 s, DNN 0.69 -> 0.46 s) and second-order LSTMs (DSAML 1.56 -> 0.44 s) this loop wins.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def supported(module: nn.Module, n_inputs: int, second_order: bool = False) -> bool:
    """Whether the batched meta-step runs this module with `run`: a plain one-layer, one-direction GRU, or
    such an LSTM when differentiating twice, called on its input alone."""
    cells = (nn.LSTM, nn.GRU) if second_order else (nn.GRU,)
    return (type(module) in cells and n_inputs == 1 and module.num_layers == 1
            and not module.bidirectional and module.batch_first and module.bias
            and not getattr(module, "proj_size", 0))


def run(module: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor):
    """What module(x[i]) returns with weights {name: w[i]} for every task i at once; x is [n, B, T, E],
    each weight [n, ...]. Returns (out [n, B, T, H], h [n, 1, B, H]) for a GRU, (out, (h, c)) for an LSTM."""
    w_ih, w_hh = weights["weight_ih_l0"], weights["weight_hh_l0"]
    b_ih, b_hh = weights["bias_ih_l0"], weights["bias_hh_l0"]
    n, b, t, e = x.shape
    gates = w_ih.shape[1]
    # the input's contribution to every gate at every step, one matmul per task
    gi = torch.baddbmm(b_ih.unsqueeze(1), x.reshape(n, b * t, e), w_ih.transpose(1, 2)).view(n, b, t, gates)
    if type(module) is nn.LSTM:
        out, h, c = _lstm(gi + b_hh[:, None, None], w_hh.transpose(1, 2))
        return out, (h.unsqueeze(1), c.unsqueeze(1))
    out, h = _gru(gi, w_hh.transpose(1, 2), b_hh.unsqueeze(1))
    return out, h.unsqueeze(1)


def _lstm(gi: torch.Tensor, w_hh_t: torch.Tensor):
    """gi [n, B, T, 4H] (biases included), w_hh_t [n, H, 4H] -> (out [n, B, T, H], h [n, B, H], c [n, B, H])."""
    hidden = w_hh_t.shape[1]
    h = c = None
    outs = []
    for g in gi.unbind(2):
        if h is not None:  # zero initial state: the first step has no recurrent term
            g = torch.baddbmm(g, h, w_hh_t)
        s = g.sigmoid()
        i, f, o = s[..., :hidden], s[..., hidden:2 * hidden], s[..., 3 * hidden:]
        cand = g[..., 2 * hidden:3 * hidden].tanh()
        c = i * cand if c is None else torch.addcmul(f * c, i, cand)
        h = o * c.tanh()
        outs.append(h)
    return torch.stack(outs, 2), h, c


def _gru(gi: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor):
    """gi [n, B, T, 3H] (input biases included), w_hh_t [n, H, 3H], b_hh [n, 1, 3H] -> (out, h [n, B, H])."""
    hidden = w_hh_t.shape[1]
    h = None
    outs = []
    for g in gi.unbind(2):
        # zero initial state: the recurrent term is the bias alone
        gh = b_hh.expand_as(g) if h is None else torch.baddbmm(b_hh, h, w_hh_t)
        rz = (g[..., :2 * hidden] + gh[..., :2 * hidden]).sigmoid()
        r, z = rz[..., :hidden], rz[..., hidden:]
        cand = torch.addcmul(g[..., 2 * hidden:], r, gh[..., 2 * hidden:]).tanh()
        h = cand * (1 - z) if h is None else torch.addcmul(cand, z, h - cand)
        outs.append(h)
    return torch.stack(outs, 2), h
