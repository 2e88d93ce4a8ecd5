"""The seq2seq tagger of Goyal et al. (2018, §3) and Tu & Gimpel (2019, §4.1.3).

A BiLSTM reads the sentence into states s_1..s_T. An LSTM decoder, fed the embedding of the
previous label, produces h_t; the label scores are f(h_t, .) = W [h_t; c_t], where the context c_t
is s_t under the papers' *fixed* attention (position t attends to input t only), or a learned
attention over all s_j (dot, general, MLP; seed 002's lecture) as an option.

Everything that searches this model (greedy, beam, soft beam, gradient descent) drives it through
one function, `Seq2SeqTagger.step`, batched over N = sentences x beam entries.

Shapes: B sentences, T positions, L labels, N rows (= B or B*k), E label-embedding size,
H decoder hidden size, S = encoder output size (2 x encoder hidden).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from core.encoders import BiLSTMEncoder, check_char_activation
from core.lstm import lstms_unrolled, recurrence, run_lstm_cell
from core.checkpoint import JsonConfig

ATTENTIONS = ("fixed", "dot", "general", "mlp")
FEEDS = ("gold", "predicted")


@dataclass
class TaggerConfig(JsonConfig):
    """Everything needed to rebuild a tagger; stored as JSON in checkpoints."""

    n_words: int
    n_chars: int
    n_labels: int
    word_dim: int = 50
    char_dim: int = 30
    char_filters: int = 50  # 0 turns the character CNN off
    char_activation: str = "none"  # g after the char CNN's max-pool (core.encoders.CHAR_ACTIVATIONS)
    encoder_hidden: int = 128  # per direction
    decoder_hidden: int = 128
    label_dim: int = 32
    attention: str = "fixed"
    dropout: float = 0.5

    def __post_init__(self) -> None:
        check_char_activation("TaggerConfig", self.char_activation)
        for name in ("n_words", "n_chars", "n_labels", "word_dim", "encoder_hidden", "decoder_hidden", "label_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"TaggerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"TaggerConfig.attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention == "dot" and self.decoder_hidden != 2 * self.encoder_hidden:
            raise ValueError(
                "TaggerConfig.attention='dot' needs decoder_hidden == 2 * encoder_hidden "
                f"(got {self.decoder_hidden} and {self.encoder_hidden}); use 'general' for other sizes"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TaggerConfig.dropout must be in [0, 1), got {self.dropout}")




class Memory(NamedTuple):
    """The encoded sentence that every decoder step reads."""

    states: torch.Tensor  # (N, T, S) encoder states
    mask: torch.Tensor  # (N, T) bool, True on real tokens

    def repeat_beams(self, k: int) -> "Memory":
        """(B, ...) -> (B*k, ...): each sentence repeated k times, beam entries adjacent."""
        return Memory(self.states.repeat_interleave(k, dim=0), self.mask.repeat_interleave(k, dim=0))


class DecoderState(NamedTuple):
    h: torch.Tensor  # (N, H)
    c: torch.Tensor  # (N, H)


class StepCache(NamedTuple):
    """Per-search constants of the fixed-attention step (see `Seq2SeqTagger.step_cache`)."""

    hidden_weight: torch.Tensor  # (L, H): W_h, the decoder-state columns of the output layer
    context: tuple[torch.Tensor, ...]  # T tensors (B, L): W_s s_t + b


class Attention(nn.Module):
    """Learned attention of the lecture notes (seed 002): score(h_t, s_j) -> softmax over j -> context."""

    def __init__(self, kind: str, query_dim: int, key_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.W = nn.Linear(key_dim, query_dim, bias=False)
        elif kind == "mlp":
            self.Wq = nn.Linear(query_dim, query_dim, bias=False)
            self.Wk = nn.Linear(key_dim, query_dim, bias=True)
            self.v = nn.Linear(query_dim, 1, bias=False)

    def forward(self, query: torch.Tensor, memory: Memory) -> torch.Tensor:
        """query: (N, H) -> context (N, S)."""
        keys = memory.states  # (N, T, S)
        if self.kind == "dot":
            scores = torch.einsum("nh,nth->nt", query, keys)  # (N, T)
        elif self.kind == "general":
            scores = torch.einsum("nh,nth->nt", query, self.W(keys))  # (N, T)
        else:  # mlp (Bahdanau)
            hidden = torch.tanh(self.Wq(query).unsqueeze(1) + self.Wk(keys))  # (N, T, H)
            scores = self.v(hidden).squeeze(-1)  # (N, T)
        scores = scores.masked_fill(~memory.mask, float("-inf"))
        weights = scores.softmax(dim=-1)  # (N, T)
        return torch.einsum("nt,nts->ns", weights, keys)  # (N, S)


class Seq2SeqTagger(nn.Module):
    """BiLSTM encoder + LSTM decoder tagger with a shared step function."""

    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.config = config
        self.encoder = BiLSTMEncoder(
            config.n_words,
            config.n_chars,
            word_dim=config.word_dim,
            char_dim=config.char_dim,
            char_filters=config.char_filters,
            hidden=config.encoder_hidden,
            dropout=config.dropout,
            char_activation=config.char_activation,
        )
        S = self.encoder.output_dim
        # Row n_labels is the start symbol <s>, fed at position 0.
        self.label_embedding = nn.Embedding(config.n_labels + 1, config.label_dim)
        self.decoder = nn.LSTMCell(config.label_dim, config.decoder_hidden)
        self.attention = None if config.attention == "fixed" else Attention(config.attention, config.decoder_hidden, S)
        self.output = nn.Linear(config.decoder_hidden + S, config.n_labels)

    @property
    def n_labels(self) -> int:
        return self.config.n_labels

    @property
    def start_label(self) -> int:
        """Index of <s> in `label_embedding`."""
        return self.config.n_labels

    # -- the pieces every search routine uses -------------------------------------------------
    def encode(self, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor) -> Memory:
        """words: (B, T), chars: (B, T, C), lengths: (B,) -> Memory with states (B, T, S)."""
        states = self.encoder(words, chars, lengths)  # (B, T, S)
        positions = torch.arange(words.shape[1], device=words.device)  # (T,)
        mask = positions.unsqueeze(0) < lengths.to(words.device).unsqueeze(1)  # (B, T)
        return Memory(states, mask)

    def initial_state(self, n: int, device: torch.device | None = None) -> DecoderState:
        """Zero decoder state for n rows (Alg. 1: h_0 = 0)."""
        H = self.config.decoder_hidden
        weight = self.output.weight  # the dtype and, by default, device of the model
        zeros = torch.zeros(n, H, device=device or weight.device, dtype=weight.dtype)
        return DecoderState(zeros, zeros.clone())

    def start_embedding(self, n: int) -> torch.Tensor:
        """Embedding of <s> for n rows: (n, E)."""
        return self.label_embedding.weight[self.start_label].expand(n, -1)

    def embed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """labels: (...) long -> (..., E). Soft-beam code instead multiplies distributions by
        `label_embedding.weight[:n_labels]`."""
        return self.label_embedding(labels)

    def step_cache(self, memory: Memory) -> "StepCache | None":
        """What every step of one search over `memory` (B, T, S) can share, for fixed attention;
        None for learned attention (its context depends on h_t).

        The label scores split as W [h_t; s_t] + b = W_h h_t + (W_s s_t + b). The second part does
        not depend on the decoder, so it is computed for all T positions in one GEMM and shared by
        the k beam entries of a sentence; per step only W_h h_t remains (H instead of H + S inputs
        per row). Equal to the unsplit projection up to float summation order.
        """
        if self.attention is not None:
            return None
        H = self.config.decoder_hidden
        weight = self.output.weight  # (L, H + S)
        context = torch.nn.functional.linear(memory.states, weight[:, H:], self.output.bias)  # (B, T, L)
        # unbind, not context[:, t] per step: its backward stacks T gradients once instead of
        # zero-filling a (B, T, L) tensor at every step.
        return StepCache(weight[:, :H], context.unbind(dim=1))

    def step(
        self,
        state: DecoderState,
        prev_label_emb: torch.Tensor,
        position: int,
        memory: Memory,
        cache: "StepCache | None" = None,
    ) -> tuple[DecoderState, torch.Tensor]:
        """One decoder step for N rows.

        state: DecoderState with (N, H) tensors, prev_label_emb: (N, E), position: t,
        memory: Memory with (N, T, S) states -> (new state, scores (N, L)) where scores are
        log p(y_t = . | y_<t, x), locally normalised.
        cache: `step_cache(memory_B)` of the B sentences, N = B x beams rows with each sentence's
        beam entries adjacent; `memory` is then not read (pass the B-row memory).
        """
        h, c = run_lstm_cell(self.decoder, prev_label_emb, (state.h, state.c))  # (N, H) each
        if cache is not None:
            context = cache.context[position]  # (B, L): W_s s_t + b
            own = torch.nn.functional.linear(h, cache.hidden_weight)  # (N, L): W_h h_t
            logits = (own.view(context.shape[0], -1, own.shape[-1]) + context.unsqueeze(1)).view_as(own)  # (N, L)
            return DecoderState(h, c), logits.log_softmax(dim=-1)
        if self.attention is None:
            context = memory.states[:, position]  # (N, S): fixed attention on input t
        else:
            context = self.attention(h, memory)  # (N, S)
        logits = self.output(torch.cat([h, context], dim=-1))  # (N, L)
        return DecoderState(h, c), logits.log_softmax(dim=-1)

    # -- training-time helpers ------------------------------------------------------------------
    def teacher_forced_scores(self, memory: Memory, labels: torch.Tensor, feed: str = "gold") -> torch.Tensor:
        """Scores at every position when the decoder is fed gold labels, or its own previous
        argmax prediction (`feed="predicted"`, as Tu & Gimpel train their seq2seq nets).

        memory: (B, T, S) states, labels: (B, T) -> log-probabilities (B, T, L).
        """
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
        if lstms_unrolled() and self.attention is None:
            return self._unrolled_scores(memory, labels, feed)
        return self._step_loop(memory, labels, feed)

    def _step_loop(self, memory: Memory, labels: torch.Tensor, feed: str) -> torch.Tensor:
        """teacher_forced_scores one decoder step at a time: (B, T, L)."""
        B, T = labels.shape
        state = self.initial_state(B, labels.device)
        prev = self.start_embedding(B)  # (B, E)
        out = []
        # Not through `step_cache` (10-20 % faster here): its different float summation order
        # changes CE training trajectories, and tests/test_train.py's synthetic DL-vs-CE margin
        # with them; kept bit-identical to the CE runs already made.
        for t in range(T):
            state, scores = self.step(state, prev, t, memory)  # scores: (B, L)
            out.append(scores)
            fed = labels[:, t] if feed == "gold" else scores.detach().argmax(dim=-1)  # (B,)
            # Unseen dev/test tags are encoded -1; feed label 0 instead (they are only scored).
            prev = self.embed_labels(fed.clamp(min=0))  # (B, E)
        return torch.stack(out, dim=1)  # (B, T, L)

    def _unrolled_scores(self, memory: Memory, labels: torch.Tensor, feed: str) -> torch.Tensor:
        """teacher_forced_scores inside core.lstm.unrolled_lstms, fixed attention: the decoder
        run once over the whole sequence of fed labels (core.lstm.recurrence, one GEMM for every
        input and output term). Fed its own predictions, the decoder is first run without
        gradients to find them: no gradient flows through an argmax, so feeding them as gold
        labels has the same value and the same gradient.

        memory: (B, T, S) states, labels: (B, T) -> log-probabilities (B, T, L)."""
        if feed == "predicted":
            with torch.no_grad():
                labels = self._step_loop(memory, labels, feed).argmax(dim=-1)  # (B, T): what each step fed
        B, T = labels.shape
        start = self.start_embedding(B).unsqueeze(1)  # (B, 1, E)
        fed = torch.cat([start, self.embed_labels(labels[:, :-1].clamp(min=0))], dim=1)  # (B, T, E): y_{t-1}
        cell = self.decoder
        projected = fed @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh  # (B, T, 4H)
        h = recurrence(projected, cell.weight_hh)  # (B, T, H)
        return self.output(torch.cat([h, memory.states], dim=-1)).log_softmax(dim=-1)  # (B, T, L)

    def sequence_score(self, memory: Memory, labels: torch.Tensor) -> torch.Tensor:
        """Model score s(y) = sum_t log p(y_t | y_<t, x) over real positions.

        memory: (B, T, S), labels: (B, T) -> (B,).
        """
        scores = self.teacher_forced_scores(memory, labels, feed="gold")  # (B, T, L)
        picked = scores.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        return (picked * memory.mask).sum(dim=1)

