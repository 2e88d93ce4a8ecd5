"""core.lstm: the unrolled LSTMs equal torch's packed ones (values and gradients), the hand-written
backpropagation through time equals autograd's, and both run under torch.func.vmap with per-copy
weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

from core.lstm import lstms_unrolled, recurrence, run_lstm, run_lstm_cell, unrolled_lstms
from core.seq2seq import Seq2SeqTagger, TaggerConfig
from helpers import tiny_inputs

LENGTHS = [5, 2, 4, 1]  # ragged, unsorted: packing sorts them, the unrolled path must not need to


def stepwise_recurrence(projected, w_hh):
    """The recurrence through autograd, one step at a time: the reference for _Recurrence."""
    h = c = projected.new_zeros(projected.shape[0], w_hh.shape[1])  # (B, H)
    out = []
    for t in range(projected.shape[1]):
        i, f, g, o = (projected[:, t] + h @ w_hh.T).chunk(4, dim=-1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 1)  # (B, T, H)


def lstm_case(layers, bidirectional, dtype, seed=0):
    torch.manual_seed(seed)
    lstm = nn.LSTM(3, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional).to(dtype)
    x = torch.randn(len(LENGTHS), max(LENGTHS), 3, dtype=dtype, requires_grad=True)  # (B, T, D)
    return lstm, x, torch.tensor(LENGTHS)


class TestRunLstm:
    @pytest.mark.parametrize("layers", [1, 2])
    @pytest.mark.parametrize("bidirectional", [True, False])
    @pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
    def test_unrolled_equals_packed(self, layers, bidirectional, dtype, tol):
        lstm, x, lengths = lstm_case(layers, bidirectional, dtype)
        packed = run_lstm(lstm, x, lengths)  # (B, T, dirs*H)
        with unrolled_lstms():
            unrolled = run_lstm(lstm, x, lengths)
        torch.testing.assert_close(unrolled, packed, atol=tol, rtol=tol)
        weights = torch.randn_like(packed)
        g_packed = torch.autograd.grad((packed * weights).sum(), [x, *lstm.parameters()])
        g_unrolled = torch.autograd.grad((unrolled * weights).sum(), [x, *lstm.parameters()])
        for a, b in zip(g_unrolled, g_packed):
            torch.testing.assert_close(a, b, atol=10 * tol, rtol=10 * tol)

    def test_zero_past_each_length(self):
        lstm, x, lengths = lstm_case(2, True, torch.float64)
        with unrolled_lstms():
            out = run_lstm(lstm, x, lengths)
        for b, n in enumerate(LENGTHS):
            assert (out[b, n:] == 0).all() and (out[b, :n] != 0).all()

    def test_a_sentence_alone_equals_it_in_a_batch(self):
        # The reverse direction starts at each sentence's own last token, not at the batch's.
        lstm, x, lengths = lstm_case(1, True, torch.float64)
        with unrolled_lstms():
            batch = run_lstm(lstm, x, lengths)
            alone = run_lstm(lstm, x[2:3, :4], lengths[2:3])
        torch.testing.assert_close(batch[2:3, :4], alone)

    def test_needs_batch_first(self):
        with pytest.raises(ValueError, match="batch_first"):
            run_lstm(nn.LSTM(3, 4), torch.zeros(2, 1, 3), torch.tensor([2]))

    @pytest.mark.parametrize("options", [{"proj_size": 2}, {"bias": False}])
    def test_unrolled_refuses_what_it_does_not_compute(self, options):
        lstm = nn.LSTM(3, 4, batch_first=True, **options)
        run_lstm(lstm, torch.zeros(1, 2, 3), torch.tensor([2]))  # the packed path runs them
        with unrolled_lstms(), pytest.raises(ValueError, match="biases and without projections"):
            run_lstm(lstm, torch.zeros(1, 2, 3), torch.tensor([2]))


class TestRecurrence:
    def test_backward_is_autograds(self):
        torch.manual_seed(0)
        projected = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)  # (B, T, 4H)
        w_hh = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)  # (4H, H)
        torch.autograd.gradcheck(recurrence, (projected, w_hh))
        weights = torch.randn(3, 5, 2, dtype=torch.float64)
        mine = torch.autograd.grad((recurrence(projected, w_hh) * weights).sum(), [projected, w_hh])
        reference = torch.autograd.grad((stepwise_recurrence(projected, w_hh) * weights).sum(), [projected, w_hh])
        for a, b in zip(mine, reference):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)

    def test_vmap_over_per_copy_weights_equals_a_loop(self):
        # What instance tailoring does: each sentence its own W_hh, gradients per copy.
        torch.manual_seed(0)
        projected = torch.randn(4, 1, 3, 8, dtype=torch.float64)  # (copies, B = 1, T, 4H)
        w_hh = torch.randn(4, 8, 2, dtype=torch.float64)  # (copies, 4H, H)

        def loss(p, w):
            return recurrence(p, w).pow(2).sum()

        batched = vmap(grad(loss, argnums=(0, 1)))(projected, w_hh)
        for k in range(4):
            looped = grad(lambda p, w: stepwise_recurrence(p, w).pow(2).sum(), argnums=(0, 1))(projected[k], w_hh[k])
            torch.testing.assert_close(batched[0][k], looped[0], atol=1e-12, rtol=1e-12)
            torch.testing.assert_close(batched[1][k], looped[1], atol=1e-12, rtol=1e-12)


class TestRunLstmCell:
    def test_unrolled_equals_fused(self):
        torch.manual_seed(0)
        cell = nn.LSTMCell(3, 4).double()
        x, h, c = torch.randn(2, 3).double(), torch.randn(2, 4).double(), torch.randn(2, 4).double()
        fused = run_lstm_cell(cell, x, (h, c))
        with unrolled_lstms():
            unrolled = run_lstm_cell(cell, x, (h, c))
        for a, b in zip(unrolled, fused):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


class TestUnrolledLstms:
    def test_the_block_is_the_only_place_it_is_on(self):
        assert not lstms_unrolled()
        with pytest.raises(RuntimeError, match="inside"):
            with unrolled_lstms():
                assert lstms_unrolled()
                raise RuntimeError("inside")
        assert not lstms_unrolled()


class TestSeq2SeqUnrolled:
    @pytest.mark.parametrize("feed", ["gold", "predicted"])
    def test_scores_and_gradients_equal_the_step_loop(self, feed):
        torch.manual_seed(0)
        model = Seq2SeqTagger(TaggerConfig(n_words=20, n_chars=10, n_labels=4, word_dim=5, char_dim=3, char_filters=4,
                                           encoder_hidden=3, decoder_hidden=6, label_dim=5, dropout=0.0)).double().eval()
        words, chars, lengths = tiny_inputs(LENGTHS)
        labels = torch.randint(0, 4, words.shape)
        params = dict(model.named_parameters())

        def scores():
            return model.teacher_forced_scores(model.encode(words, chars, lengths), labels, feed)  # (B, T, L)

        looped = scores()  # (B, T, L)
        with unrolled_lstms():
            unrolled = scores()
        mask = torch.arange(words.shape[1]) < lengths.unsqueeze(1)  # (B, T)
        torch.testing.assert_close(unrolled[mask], looped[mask], atol=1e-12, rtol=1e-12)
        weights = torch.randn_like(looped) * mask.unsqueeze(-1)
        g_looped = torch.autograd.grad((looped * weights).sum(), list(params.values()), allow_unused=True)
        g_unrolled = torch.autograd.grad((unrolled * weights).sum(), list(params.values()), allow_unused=True)
        for name, a, b in zip(params, g_unrolled, g_looped):
            if b is None:
                assert a is None or (a == 0).all(), name
            else:
                torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)
