"""Running the models' LSTMs on padded batches: packed (the default) or unrolled (vmap-able).

`run_lstm(lstm, x, lengths)` is what every BiLSTM in core runs its `nn.LSTM` through, and
`run_lstm_cell(cell, x, state)` what the seq2seq decoder runs its `nn.LSTMCell` through. By
default they call torch's fused kernels on packed sequences, exactly as the modules did before.

Inside `with unrolled_lstms():` they compute the same recurrences from the modules' parameters
with plain tensor ops, one time step at a time:

    i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)     (PyTorch's gate order)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t)

with h_0 = c_0 = 0; the reverse direction reads each sentence from its own last token
(positions reversed within its length), so padding never reaches a real position, as packing
guarantees. Every op there has a torch.func.vmap batching rule, which packing (it needs the
lengths' values) and the fused LSTM kernels lack: instance tailoring (core.tailoring) runs B
copies of a recurrent network, each with its own parameters, as one vmapped program.

Equal to the packed path up to float summation order (tests/test_lstm.py: 1e-6 in float32,
1e-12 in float64, 1 and 2 layers, both directions, ragged lengths). Inter-layer dropout
follows the module's training flag, as nn.LSTM's does (its random draws differ).

Shapes: B sentences, T positions, D input features, H hidden units per direction.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.masks import lengths_to_mask

_UNROLLED = contextvars.ContextVar("beamtune_unrolled_lstms", default=False)


@contextlib.contextmanager
def unrolled_lstms() -> Iterator[None]:
    """Within the block, run_lstm and run_lstm_cell compute with plain (vmap-able) tensor ops."""
    token = _UNROLLED.set(True)
    try:
        yield
    finally:
        _UNROLLED.reset(token)


def lstms_unrolled() -> bool:
    """Whether run_lstm and run_lstm_cell compute unrolled here (inside `unrolled_lstms()`)."""
    return _UNROLLED.get()


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) batch-first, lengths (B,) -> outputs (B, T, dirs * H) of the last layer, zero
    past each length (pad_packed_sequence's padding)."""
    if not lstm.batch_first:
        raise ValueError("run_lstm needs a batch_first nn.LSTM")
    if not _UNROLLED.get():
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, dirs*H)
        return out
    if lstm.proj_size or not lstm.bias:
        raise ValueError("unrolled_lstms runs LSTMs with biases and without projections (the models' own)")
    mask = lengths_to_mask(lengths, x.shape[1], x.device).unsqueeze(-1)  # (B, T, 1)
    for layer in range(lstm.num_layers):
        if layer > 0:
            x = nn.functional.dropout(x, lstm.dropout, lstm.training)  # (B, T, dirs*H)
        directions = [_layer(lstm, x, layer, "")]  # (B, T, H)
        if lstm.bidirectional:
            flip = _reversal(lengths.to(x.device), x.shape[1])  # (B, T)
            directions.append(_gather_t(_layer(lstm, _gather_t(x, flip), layer, "_reverse"), flip))  # (B, T, H)
        x = torch.cat(directions, dim=-1) * mask  # (B, T, dirs*H)
    return x


def run_lstm_cell(cell: nn.LSTMCell, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D), state (h, c) each (N, H) -> new (h, c): `cell(x, state)`, unrolled or fused."""
    if not _UNROLLED.get():
        return cell(x, state)
    h, c, _ = _step(x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh, *state, cell.weight_hh)  # (N, H) each
    return h, c


def _layer(lstm: nn.LSTM, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
    """One direction of one layer, left to right over x (B, T, D) -> h (B, T, H)."""
    name = f"l{layer}{suffix}"
    projected = (x @ getattr(lstm, f"weight_ih_{name}").T + getattr(lstm, f"bias_ih_{name}")
                 + getattr(lstm, f"bias_hh_{name}"))  # (B, T, 4H): every input term, all steps in one GEMM
    return recurrence(projected, getattr(lstm, f"weight_hh_{name}"))  # (B, T, H)


def recurrence(projected: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """The LSTM recurrence from h_0 = c_0 = 0: projected (B, T, 4H) = W_ih x_t + b_ih + b_hh,
    w_hh (4H, H) -> h (B, T, H). Backpropagation through time is written out (_Recurrence)."""
    return _Recurrence.apply(projected, w_hh)[0]


def _step(projected: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step: projected = W_ih x + b_ih + b_hh (N, 4H), h, c (N, H) -> (h', c', the gates i, f,
    g, o after their nonlinearities (N, 4H), which _Recurrence's backward reads)."""
    i, f, g, o = (projected + h @ w_hh.T).chunk(4, dim=-1)  # (N, H) each
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g  # (N, H)
    return o * torch.tanh(c), c, torch.cat([i, f, g, o], dim=-1)


class _Recurrence(torch.autograd.Function):
    """h_t, c_t from projected_t and h_{t-1}, c_{t-1}, all t; backward by hand.

    Why by hand: autograd through the step loop adds one (4H, H) outer product h_{t-1} g_t^T to
    W_hh's gradient per step, and under vmap that is one per copy per step, (B, 4H, H) of memory
    traffic each: it made vmapped tailoring slower than a loop over sentences. Here the step loop
    only carries the (B, 4H) gate gradients, and dW_hh = sum_t g_t^T h_{t-1} is one GEMM at the
    end. generate_vmap_rule: vmap batches forward and backward op by op."""

    generate_vmap_rule = True

    @staticmethod
    def forward(projected, w_hh):
        B, T, _ = projected.shape
        h = c = projected.new_zeros(B, w_hh.shape[1])  # (B, H)
        hs, cs, gates = [], [], []
        for t in range(T):
            h, c, step_gates = _step(projected[:, t], h, c, w_hh)  # (B, H), (B, H), (B, 4H)
            hs.append(h), cs.append(c), gates.append(step_gates)
        return torch.stack(hs, 1), torch.stack(cs, 1), torch.stack(gates, 1)  # (B, T, H) x2, (B, T, 4H)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, w_hh = inputs
        hs, cs, gates = output
        ctx.mark_non_differentiable(cs, gates)
        ctx.save_for_backward(w_hh, hs, cs, gates)

    @staticmethod
    def backward(ctx, grad_hs, _grad_cs, _grad_gates):
        w_hh, hs, cs, gates = ctx.saved_tensors  # (4H, H), (B, T, H), (B, T, H), (B, T, 4H)
        B, T, H = hs.shape
        dh = dc = hs.new_zeros(B, H)  # (B, H): gradient from step t + 1
        dgates = []
        for t in reversed(range(T)):
            i, f, g, o = gates[:, t].chunk(4, dim=-1)  # (B, H) each, after their nonlinearities
            c_prev = cs[:, t - 1] if t else torch.zeros_like(dc)  # (B, H)
            tanh_c = torch.tanh(cs[:, t])  # (B, H)
            dh = grad_hs[:, t] + dh  # (B, H)
            dc = dc + dh * o * (1 - tanh_c * tanh_c)  # (B, H)
            d = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                           dh * tanh_c * o * (1 - o)], dim=-1)  # (B, 4H): before the nonlinearities
            dgates.append(d)
            dh, dc = d @ w_hh, dc * f  # (B, H) each
        dprojected = torch.stack(dgates[::-1], 1)  # (B, T, 4H)
        h_prev = torch.cat([hs.new_zeros(B, 1, H), hs[:, :-1]], dim=1)  # (B, T, H)
        return dprojected, dprojected.flatten(0, 1).T @ h_prev.flatten(0, 1)  # (B, T, 4H), (4H, H)


def _reversal(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) positions reversing each sentence within its length, padding left in place: an
    involution, so the same index undoes it."""
    t = torch.arange(T, device=lengths.device).unsqueeze(0)  # (1, T)
    n = lengths.unsqueeze(-1)  # (B, 1)
    return torch.where(t < n, n - 1 - t, t)  # (B, T)


def _gather_t(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, F), index (B, T) -> x[b, index[b, t]] (B, T, F)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
