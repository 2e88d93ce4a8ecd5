"""Inference networks of Tu & Gimpel (2019, §4): A_Psi(x) -> a distribution over labels per position.

Three families, each also usable as a *local baseline* (trained on the token loss only):

- `cnn13`, `cnn15`: word (+ char-CNN) embeddings, two convolutions over windows centred on the word,
  (1, 3)-gram or (1, 5)-gram, H filters each, no pooling, concatenated -> linear -> softmax (§4.1.1);
- `blstm`: BiLSTM tagger with 1 or 2 layers, 2H features -> linear -> softmax (§4.1.2);
- `seq2seq`: the fixed-attention seq2seq tagger of core/seq2seq.py, always fed its own previous
  predicted label (§4.1.3); its token loss is the seq2seq log loss under that feeding.

Every network returns `InfnetOutput(logits, probs, labels)`: the score vectors before the softmax
(where GD can start from, §4.2.2: core.infnet_gd), the relaxed output in Y_R (what the energy is
trained on), and the discretised output (argmax per position).

Shapes: B sentences, T positions, C characters per word, L labels, H hidden units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from core.encoders import CharCNN, check_char_activation
from core.lstm import run_lstm
from core.masks import lengths_to_mask
from core.seq2seq import Seq2SeqTagger, TaggerConfig
from core.checkpoint import JsonConfig

ARCHITECTURES = ("cnn13", "cnn15", "blstm", "seq2seq")
# g of the CNN's feature maps (§4.1.1 leaves it open). The authors' code builds them with Lasagne's
# Conv1DLayer, whose default is the rectifier; tanh stays the default here so that checkpoints
# saved before the choice existed (no field in their config) load as what they were trained as.
CNN_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class InfnetOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, L) scores before the softmax
    probs: torch.Tensor  # (B, T, L) softmax(logits): the relaxed output A_Psi(x)
    labels: torch.Tensor  # (B, T) long argmax (0 past each length)


@dataclass
class InfnetConfig(JsonConfig):
    """Everything needed to rebuild an inference network; stored as JSON in "infnet" checkpoints.
    The "+" variants (§2.1 applied to infnets) are `char_filters > 0, dropout = 0.5`."""

    arch: str
    n_words: int
    n_chars: int
    n_labels: int
    word_dim: int = 100
    char_dim: int = 30
    char_filters: int = 0  # 0: no character CNN
    hidden: int = 100  # H: filters per window (CNN), per direction (BLSTM), encoder and decoder (seq2seq)
    layers: int = 1  # BLSTM only: 1 or 2
    label_dim: int = 32  # seq2seq only: label embedding size
    dropout: float = 0.0
    finetune_embeddings: bool = True
    # g of the CNN's feature maps (CNN_ACTIVATIONS). The BLSTM and seq2seq have no such g and
    # ignore it, so that one study stage can set it over a grid of architectures.
    cnn_activation: str = "tanh"
    char_activation: str = "none"  # g after the char CNN's max-pool (core.encoders.CHAR_ACTIVATIONS)

    def __post_init__(self) -> None:
        check_char_activation("InfnetConfig", self.char_activation)
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"InfnetConfig.arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        for name in ("n_words", "n_chars", "n_labels", "word_dim", "char_dim", "hidden", "label_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"InfnetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.char_filters < 0:
            raise ValueError(f"InfnetConfig.char_filters must be >= 0, got {self.char_filters}")
        if self.layers not in (1, 2):
            raise ValueError(f"InfnetConfig.layers must be 1 or 2, got {self.layers}")
        if self.layers != 1 and self.arch != "blstm":
            raise ValueError(f"InfnetConfig.layers applies to arch 'blstm' only (got arch {self.arch!r} with {self.layers} layers)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"InfnetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.cnn_activation not in CNN_ACTIVATIONS:
            raise ValueError(f"InfnetConfig.cnn_activation must be one of {tuple(CNN_ACTIVATIONS)}, got {self.cnn_activation!r}")




def _output(logits: torch.Tensor, lengths: torch.Tensor) -> InfnetOutput:
    """logits (B, T, L), lengths (B,) -> InfnetOutput with labels zeroed past each length."""
    T = logits.shape[1]
    mask = lengths_to_mask(lengths, T, logits.device)  # (B, T)
    labels = logits.detach().argmax(dim=-1) * mask  # (B, T)
    return InfnetOutput(logits, logits.softmax(dim=-1), labels)


class _Embedder(nn.Module):
    """Word embedding (+ char CNN, dropout on its character embeddings) -> dropout: (B, T) -> (B, T, D)."""

    def __init__(self, config: InfnetConfig):
        super().__init__()
        self.word_embedding = nn.Embedding(config.n_words, config.word_dim, padding_idx=0)
        self.word_embedding.weight.requires_grad_(config.finetune_embeddings)
        self.char_cnn = (CharCNN(config.n_chars, config.char_dim, config.char_filters, dropout=config.dropout,
                                 activation=config.char_activation) if config.char_filters else None)
        self.output_dim = config.word_dim + config.char_filters
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, words: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        x = self.word_embedding(words)  # (B, T, word_dim)
        if self.char_cnn is not None:
            x = torch.cat([x, self.char_cnn(chars)], dim=-1)  # (B, T, word_dim + char_filters)
        return self.dropout(x)


class CNNInfnet(nn.Module):
    """f_n(x, t) = g(W_n [v_{t-n}; ...; v_{t+n}] + b_n) for n = 0 and n = 1 (cnn13) or 2 (cnn15);
    g = config.cnn_activation (tanh or the rectifier)."""

    def __init__(self, config: InfnetConfig):
        super().__init__()
        self.embed = _Embedder(config)
        n = 1 if config.arch == "cnn13" else 2
        D, H = self.embed.output_dim, config.hidden
        self.unigram = nn.Conv1d(D, H, kernel_size=1)
        self.window = nn.Conv1d(D, H, kernel_size=2 * n + 1, padding=n)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(2 * H, config.n_labels)
        self.g = CNN_ACTIVATIONS[config.cnn_activation]

    def forward(self, words, chars, lengths) -> InfnetOutput:
        T = words.shape[1]
        mask = lengths_to_mask(lengths, T, words.device)  # (B, T)
        x = self.embed(words, chars) * mask.unsqueeze(-1)  # (B, T, D): zero past the end, like the padding
        x = x.transpose(1, 2)  # (B, D, T)
        features = torch.cat([self.g(self.unigram(x)), self.g(self.window(x))], dim=1)  # (B, 2H, T)
        logits = self.output(self.dropout(features.transpose(1, 2)))  # (B, T, L)
        return _output(logits, lengths)


class BLSTMInfnet(nn.Module):
    """BiLSTM tagger (1 or 2 layers, core.lstm.run_lstm) -> linear -> softmax."""

    def __init__(self, config: InfnetConfig):
        super().__init__()
        self.embed = _Embedder(config)
        self.lstm = nn.LSTM(self.embed.output_dim, config.hidden, num_layers=config.layers, batch_first=True,
                            bidirectional=True, dropout=config.dropout if config.layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(2 * config.hidden, config.n_labels)

    def forward(self, words, chars, lengths) -> InfnetOutput:
        x = self.embed(words, chars)  # (B, T, D)
        out = run_lstm(self.lstm, x, lengths)  # (B, T, 2H)
        logits = self.output(self.dropout(out))  # (B, T, L)
        return _output(logits, lengths)


class Seq2SeqInfnet(nn.Module):
    """The fixed-attention seq2seq tagger fed its previous *predicted* label; logits are its
    per-step log-probabilities (softmax of a log-softmax is the same distribution)."""

    def __init__(self, config: InfnetConfig):
        super().__init__()
        self.tagger = Seq2SeqTagger(TaggerConfig(
            n_words=config.n_words, n_chars=config.n_chars, n_labels=config.n_labels, word_dim=config.word_dim,
            char_dim=config.char_dim, char_filters=config.char_filters, encoder_hidden=config.hidden,
            decoder_hidden=config.hidden, label_dim=config.label_dim, attention="fixed", dropout=config.dropout,
            char_activation=config.char_activation,
        ))
        self.tagger.encoder.word_embedding.weight.requires_grad_(config.finetune_embeddings)

    def forward(self, words, chars, lengths) -> InfnetOutput:
        memory = self.tagger.encode(words, chars, lengths)  # states (B, T, 2H)
        placeholder = torch.zeros_like(words)  # (B, T): only its shape is read when feeding predictions
        logits = self.tagger.teacher_forced_scores(memory, placeholder, feed="predicted")  # (B, T, L)
        return _output(logits, lengths)


class InferenceNetwork(nn.Module):
    """A_Psi: one of the architectures above behind one interface."""

    def __init__(self, config: InfnetConfig):
        super().__init__()
        self.config = config
        if config.arch in ("cnn13", "cnn15"):
            self.net = CNNInfnet(config)
        elif config.arch == "blstm":
            self.net = BLSTMInfnet(config)
        else:
            self.net = Seq2SeqInfnet(config)

    @property
    def n_labels(self) -> int:
        return self.config.n_labels

    def word_embedding(self) -> nn.Embedding:
        net = self.net
        return net.tagger.encoder.word_embedding if isinstance(net, Seq2SeqInfnet) else net.embed.word_embedding

    def forward(self, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor) -> InfnetOutput:
        """words (B, T), chars (B, T, C), lengths (B,) -> logits, probs (B, T, L), labels (B, T)."""
        return self.net(words, chars, lengths)
