"""LSTM language models over token sequences, for Tu & Gimpel (2019) §6.2: one trained on the word
sequences of the training split, one on its gold label sequences; the per-sentence perplexity of
each is then correlated (Spearman's rho) with an inference method's search error
(core.search_correlation).

The model: p(s) = prod_{t=1}^{n+1} p(s_t | s_<t) with s_0 = <s> and s_{n+1} = </s>, an embedding, a
one-layer LSTM and a softmax over the vocabulary (+ <unk>, <s>, </s>). A sentence's perplexity is

    PPL(s) = exp( -1/(n+1) * sum_{t=1}^{n+1} log p(s_t | s_<t) )

(the end symbol counts, as in the usual definition). Tokens unseen in training map to <unk>.
Limits: PPL >= 1; a model whose softmax is uniform over its V output symbols gives PPL = V for
every sentence (tested).

    train_lm(sequences, LMConfig()) -> LanguageModel
    sentence_perplexities(model, sequences) -> list[float]
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from core.masks import lengths_to_mask

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"


@dataclass
class LMConfig:
    embedding_dim: int = 64
    hidden: int = 128
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3  # Adam
    dropout: float = 0.2
    min_count: int = 2  # rarer training tokens become <unk>: a trained row for the unseen words of a test split
    lowercase: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "hidden", "epochs", "batch_size", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"LMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"LMConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LMConfig.dropout must be in [0, 1), got {self.dropout}")


class LanguageModel(nn.Module):
    def __init__(self, itos: list[str], config: LMConfig):
        super().__init__()
        self.itos, self.config = itos, config
        self.stoi = {s: i for i, s in enumerate(itos)}
        self.embedding = nn.Embedding(len(itos), config.embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(config.embedding_dim, config.hidden, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden, len(itos))

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """<s> tokens </s> as ids (unknown tokens -> <unk>)."""
        norm = (lambda t: t.lower()) if self.config.lowercase else (lambda t: t)
        unk = self.stoi[UNK]
        return [self.stoi[BOS], *(self.stoi.get(norm(t), unk) for t in tokens), self.stoi[EOS]]

    def token_log_probs(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids: (B, T+2) <s> s_1..s_n </s> padded with 0; lengths: (B,) n + 2. Returns (B, T+1):
        log p(s_t | s_<t) for t = 1 .. n+1, 0 past each sentence's end."""
        inputs, targets = ids[:, :-1], ids[:, 1:]  # (B, T+1) each
        hidden, _ = self.lstm(self.dropout(self.embedding(inputs)))  # (B, T+1, H)
        log_probs = self.output(self.dropout(hidden)).log_softmax(dim=-1)  # (B, T+1, V)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T+1)
        mask = lengths_to_mask(lengths - 1, targets.shape[1], ids.device)  # (B, T+1): n+1 predictions each
        return picked * mask


def _batch(model: LanguageModel, sequences: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [model.encode(s) for s in sequences]
    lengths = torch.tensor([len(e) for e in encoded])  # (B,) n + 2
    ids = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)  # (B, T+2)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e)
    return ids, lengths


def build_itos(sequences: Sequence[Sequence[str]], config: LMConfig) -> list[str]:
    counts: dict[str, int] = {}
    for sequence in sequences:
        for token in sequence:
            token = token.lower() if config.lowercase else token
            counts[token] = counts.get(token, 0) + 1
    kept = sorted(t for t, c in counts.items() if c >= config.min_count and t not in (PAD, UNK, BOS, EOS))
    return [PAD, UNK, BOS, EOS, *kept]


def train_lm(sequences: Sequence[Sequence[str]], config: LMConfig | None = None) -> LanguageModel:
    """Train on `sequences` (lists of tokens) by maximum likelihood (mean NLL per predicted token)."""
    config = config or LMConfig()
    if not sequences or not all(len(s) for s in sequences):
        raise ValueError("train_lm needs at least one sequence and no empty sequences")
    torch.manual_seed(config.seed)
    model = LanguageModel(build_itos(sequences, config), config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = list(range(len(sequences)))
    for epoch in range(config.epochs):
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        model.train()
        for start in range(0, len(order), config.batch_size):
            ids, lengths = _batch(model, [sequences[i] for i in order[start:start + config.batch_size]])
            loss = -model.token_log_probs(ids, lengths).sum() / (lengths - 1).sum()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
    model.eval()
    return model


@torch.no_grad()
def sentence_perplexities(model: LanguageModel, sequences: Sequence[Sequence[str]], batch_size: int = 256) -> list[float]:
    """PPL(s) = exp(-mean_t log p(s_t | s_<t)) over the n + 1 predictions of each sentence."""
    model.eval()
    out: list[float] = []
    for start in range(0, len(sequences), batch_size):
        ids, lengths = _batch(model, sequences[start:start + batch_size])
        total = model.token_log_probs(ids, lengths).sum(dim=1)  # (B,)
        out += torch.exp(-total / (lengths - 1)).tolist()
    return out
