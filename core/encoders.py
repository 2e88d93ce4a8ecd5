"""Input encoders: word embeddings, an optional character CNN, and a BiLSTM over the sentence.

Shapes: B sentences, T positions, C characters per word, H hidden units per LSTM direction.
"""
from __future__ import annotations

import torch
from torch import nn

from core.lstm import run_lstm


# g after the character convolution. Ma & Hovy's code, and Tu & Gimpel's after it, use tanh
# (Lasagne Conv1DLayer(..., nonlinearity=tanh)); "none" is what beamtune ran before the choice
# existed, and the default of every model config so that older checkpoints load as trained.
# tanh is monotonic, so max(tanh(conv)) = tanh(max(conv)): it is applied after the pooling.
CHAR_ACTIVATIONS = {"none": lambda x: x, "tanh": torch.tanh}


def check_char_activation(owner: str, value: str) -> None:
    if value not in CHAR_ACTIVATIONS:
        raise ValueError(f"{owner}.char_activation must be one of {tuple(CHAR_ACTIVATIONS)}, got {value!r}")


class CharCNN(nn.Module):
    """Character CNN of Ma & Hovy (2016): embed characters, dropout, one convolution of width 3,
    max-pool, g (CHAR_ACTIVATIONS).

    Gives each word a vector of `filters` features built from its spelling, which helps with
    unknown and rare words (capitalisation, suffixes, digits). Ma & Hovy apply dropout to the
    character embeddings before the convolution; the taggers pass their own dropout rate here.
    """

    def __init__(self, n_chars: int, char_dim: int = 30, filters: int = 50, width: int = 3, pad_id: int = 0,
                 dropout: float = 0.0, activation: str = "none"):
        super().__init__()
        check_char_activation("CharCNN", activation)
        self.g = CHAR_ACTIVATIONS[activation]
        self.embedding = nn.Embedding(n_chars, char_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(char_dim, filters, kernel_size=width, padding=width // 2)
        self.pad_id = pad_id

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        """chars: (B, T, C) long -> (B, T, filters)."""
        B, T, C = chars.shape
        flat = chars.reshape(B * T, C)  # (B*T, C)
        x = self.dropout(self.embedding(flat)).transpose(1, 2)  # (B*T, char_dim, C)
        x = self.conv(x)  # (B*T, filters, C)
        # Padding characters must not win the max: push them to -inf before pooling.
        pad = (flat == self.pad_id).unsqueeze(1)  # (B*T, 1, C)
        x = x.masked_fill(pad, float("-inf"))
        x = x.max(dim=2).values  # (B*T, filters)
        # Padding *words* have only padding characters: their max is -inf; make it 0.
        x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
        return self.g(x).view(B, T, -1)  # (B, T, filters); g(0) = 0 for both choices


class BiLSTMEncoder(nn.Module):
    """Word embedding (+ char CNN, dropout on its character embeddings) -> dropout -> 1-layer BiLSTM
    -> dropout.

    The LSTM runs on packed sequences, so a sentence's states do not depend on how much padding
    its batch has: decoding one sentence alone or in a batch gives the same result.
    """

    def __init__(
        self,
        n_words: int,
        n_chars: int,
        word_dim: int = 50,
        char_dim: int = 30,
        char_filters: int = 50,
        hidden: int = 128,
        dropout: float = 0.5,
        char_activation: str = "none",
    ):
        super().__init__()
        self.word_embedding = nn.Embedding(n_words, word_dim, padding_idx=0)
        self.char_cnn = (CharCNN(n_chars, char_dim, char_filters, dropout=dropout, activation=char_activation)
                         if char_filters > 0 else None)
        input_dim = word_dim + (char_filters if char_filters > 0 else 0)
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = 2 * hidden

    def forward(self, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """words: (B, T), chars: (B, T, C), lengths: (B,) -> states (B, T, 2H), zeros past each length."""
        x = self.word_embedding(words)  # (B, T, word_dim)
        if self.char_cnn is not None:
            x = torch.cat([x, self.char_cnn(chars)], dim=-1)  # (B, T, word_dim + filters)
        x = self.dropout(x)
        out = run_lstm(self.lstm, x, lengths)  # (B, T, 2H)
        return self.dropout(out)
