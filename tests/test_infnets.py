"""Inference networks (CNN, BLSTM, seq2seq) and their losses (Tu & Gimpel 2019, §4)."""
from __future__ import annotations


import pytest
import torch

from core.crf import LinearChainCRF, crf_energy
from core.infnets import ARCHITECTURES, InferenceNetwork, InfnetConfig
from core.objectives import infnet_loss, token_loss
from helpers import tiny_infnet, tiny_inputs


def mask_of(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)


class TestArchitectures:
    @pytest.mark.parametrize("arch", ARCHITECTURES)
    def test_outputs(self, arch):
        net = tiny_infnet(arch)
        words, chars, lengths = tiny_inputs([5, 2, 4])
        out = net(words, chars, lengths)
        assert out.logits.shape == out.probs.shape == (3, 5, 4) and out.labels.shape == (3, 5)
        torch.testing.assert_close(out.probs.sum(-1), torch.ones(3, 5))
        mask = mask_of(lengths, 5)
        assert torch.equal(out.labels, out.logits.argmax(-1) * mask)

    @pytest.mark.parametrize("arch", ARCHITECTURES)
    def test_padding_does_not_change_a_sentence(self, arch):
        net = tiny_infnet(arch)
        words, chars, lengths = tiny_inputs([5, 2, 4])
        batch = net(words, chars, lengths).logits
        alone = net(words[1:2, :2], chars[1:2, :2], lengths[1:2]).logits
        torch.testing.assert_close(batch[1:2, :2], alone)

    @pytest.mark.parametrize("arch,reach", [("cnn13", 1), ("cnn15", 2)])
    def test_cnn_window(self, arch, reach):
        net = tiny_infnet(arch, char_filters=0)
        words, chars, lengths = tiny_inputs([7])
        base = net(words, chars, lengths).logits
        changed = words.clone()
        changed[0, 3] = 2 if words[0, 3] != 2 else 3
        after = net(changed, chars, lengths).logits
        moved = (after - base).abs().amax(-1)[0]  # (T,)
        assert all(moved[t] > 0 for t in range(3 - reach, 4 + reach))
        assert all(moved[t] == 0 for t in range(7) if abs(t - 3) > reach)

    @pytest.mark.parametrize("activation,g", [("tanh", torch.tanh), ("relu", torch.relu)])
    def test_cnn_feature_maps_by_hand(self, activation, g):
        """f_n(x, t) = g(W_n [v_{t-n}; ...; v_{t+n}] + b_n), zero vectors past either end (§4.1.1)."""
        net = tiny_infnet("cnn15", char_filters=0, cnn_activation=activation)
        words, chars, lengths = tiny_inputs([6])
        cnn = net.net
        v = cnn.embed.word_embedding(words)[0]  # (T, D)
        padded = torch.cat([torch.zeros(2, v.shape[1]), v, torch.zeros(2, v.shape[1])])  # (T + 4, D)
        rows = []
        for t in range(6):
            window = padded[t:t + 5]  # (5, D): v_{t-2} .. v_{t+2}
            f0 = g(cnn.unigram.weight[:, :, 0] @ v[t] + cnn.unigram.bias)  # (H,)
            f2 = g(torch.einsum("hdk,kd->h", cnn.window.weight, window) + cnn.window.bias)  # (H,)
            rows.append(cnn.output(torch.cat([f0, f2])))  # (L,)
        torch.testing.assert_close(net(words, chars, lengths).logits[0], torch.stack(rows))

    def test_cnn_activation_config(self):
        with pytest.raises(ValueError, match="cnn_activation must be one of"):
            InfnetConfig(arch="cnn13", n_words=2, n_chars=2, n_labels=2, cnn_activation="gelu")
        # The recurrent networks have no such g: the same setting over a grid of architectures
        # leaves them as they are.
        words, chars, lengths = tiny_inputs([5, 3])
        for arch in ("blstm", "seq2seq"):
            plain, relu = tiny_infnet(arch), tiny_infnet(arch, cnn_activation="relu")
            torch.testing.assert_close(plain(words, chars, lengths).logits, relu(words, chars, lengths).logits)
        # A checkpoint saved before the choice existed has no such field: it was trained with tanh.
        old = {k: v for k, v in InfnetConfig(arch="cnn15", n_words=2, n_chars=2, n_labels=2).to_dict().items()
               if k != "cnn_activation"}
        assert InfnetConfig.from_dict(old).cnn_activation == "tanh"

    def test_two_layer_blstm_and_config_errors(self):
        net = tiny_infnet("blstm", layers=2)
        assert net.net.lstm.num_layers == 2
        with pytest.raises(ValueError, match="arch must be one of"):
            InfnetConfig(arch="cnn", n_words=2, n_chars=2, n_labels=2)
        with pytest.raises(ValueError, match="layers applies to arch 'blstm' only"):
            InfnetConfig(arch="cnn13", n_words=2, n_chars=2, n_labels=2, layers=2)
        with pytest.raises(ValueError, match="layers must be 1 or 2"):
            InfnetConfig(arch="blstm", n_words=2, n_chars=2, n_labels=2, layers=3)
        config = InfnetConfig(arch="seq2seq", n_words=2, n_chars=2, n_labels=2)
        assert InfnetConfig.from_dict(config.to_dict()) == config
        with pytest.raises(ValueError, match="unknown fields"):
            InfnetConfig.from_dict({**config.to_dict(), "heads": 2})

    def test_seq2seq_is_fed_its_predictions(self):
        net = tiny_infnet("seq2seq")
        words, chars, lengths = tiny_inputs([5, 3])
        out = net(words, chars, lengths)
        tagger = net.net.tagger
        memory = tagger.encode(words, chars, lengths)
        fed_pred = tagger.teacher_forced_scores(memory, out.labels, feed="predicted")
        torch.testing.assert_close(out.logits, fed_pred)
        assert torch.allclose(out.probs, fed_pred.exp())

    def test_frozen_embeddings(self):
        net = tiny_infnet("blstm", finetune_embeddings=False)
        assert not net.word_embedding().weight.requires_grad


class TestLosses:
    def test_token_loss_is_summed_cross_entropy(self):
        logits = torch.randn(2, 3, 4)
        labels = torch.tensor([[0, 3, -1], [2, 1, 1]])
        mask = torch.tensor([[True, True, True], [True, True, False]])
        got = token_loss(logits, labels, mask)
        logp = logits.log_softmax(-1)
        expected = torch.stack([-(logp[0, 0, 0] + logp[0, 1, 3]), -(logp[1, 0, 2] + logp[1, 1, 1])])
        torch.testing.assert_close(got, expected)

    def test_infnet_loss_keeps_the_energy_fixed(self):
        crf = LinearChainCRF(4)
        unary = torch.randn(2, 3, 4, requires_grad=True)
        logits = torch.randn(2, 3, 4, requires_grad=True)
        labels = torch.randint(0, 4, (2, 3))
        mask = torch.tensor([[True, True, True], [True, True, False]])
        loss = infnet_loss(crf, unary, logits, labels, mask, lam=0.5)
        energy = crf_energy(unary, crf.transitions, crf.start, crf.end, logits.softmax(-1), mask)
        torch.testing.assert_close(loss, energy + 0.5 * token_loss(logits, labels, mask))
        loss.sum().backward()
        assert logits.grad is not None and unary.grad is None and crf.transitions.grad is None
        torch.testing.assert_close(infnet_loss(crf, unary, logits, labels, mask, lam=0.0), energy)

    def test_training_on_the_energy_lowers_it(self):
        torch.manual_seed(0)
        crf = LinearChainCRF(4)
        with torch.no_grad():
            crf.transitions.normal_(0, 2)
        net = tiny_infnet("blstm")
        net.train()
        words, chars, lengths = tiny_inputs([5, 4, 3])
        mask = mask_of(lengths, 5)
        unary = torch.randn(3, 5, 4) * 2
        labels = torch.zeros(3, 5, dtype=torch.long)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
        first = None
        for _ in range(60):
            out = net(words, chars, lengths)
            loss = infnet_loss(crf, unary, out.logits, labels, mask, lam=0.0).mean()
            first = loss.item() if first is None else first
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert loss.item() < first - 1.0
        viterbi = -crf.viterbi(unary, mask).scores.mean()
        # The relaxed energy is multilinear in (y_1, ..., y_T), so its minimum over distributions
        # is attained at a vertex: no network output can go below the Viterbi energy.
        assert loss.item() >= viterbi.item() - 1e-4


class TestCharCNNDropout:
    """Ma & Hovy's dropout on the character embeddings, before the character convolution."""

    def test_dropout_only_in_training(self):
        from core.encoders import CharCNN

        torch.manual_seed(0)
        chars = torch.randint(1, 20, (2, 5, 7))  # (B, T, C)
        with_dropout, without = CharCNN(20, dropout=0.5), CharCNN(20, dropout=0.0)
        without.load_state_dict(with_dropout.state_dict())
        with_dropout.train(), without.train()
        assert not torch.equal(with_dropout(chars), without(chars))  # dropped character embeddings
        with_dropout.eval()
        assert torch.equal(with_dropout(chars), without(chars))  # eval: identical

    def test_taggers_pass_their_rate(self):
        config = InfnetConfig(arch="cnn13", n_words=10, n_chars=20, n_labels=3, char_filters=4, dropout=0.3)
        assert InferenceNetwork(config).net.embed.char_cnn.dropout.p == 0.3


class TestCharActivation:
    """g after the character CNN's max-pool: tanh in Ma & Hovy's and the authors' code, none before."""

    def test_tanh_of_the_pooled_convolution(self):
        from core.encoders import CharCNN

        torch.manual_seed(0)
        chars = torch.randint(1, 20, (2, 3, 6))  # (B, T, C)
        chars[1, 2] = 0  # a padding word: only padding characters
        chars[0, 1, 4:] = 0  # a short word
        plain, squashed = CharCNN(20, filters=5), CharCNN(20, filters=5, activation="tanh")
        squashed.load_state_dict(plain.state_dict())
        raw = plain(chars)  # (B, T, filters)
        # by hand for one real word: max over its characters of the convolution, then tanh
        x = plain.embedding(chars[0, 1, :4]).T.unsqueeze(0)  # (1, char_dim, 4)
        conv = torch.nn.functional.conv1d(x, plain.conv.weight, plain.conv.bias, padding=1)  # (1, filters, 4)
        torch.testing.assert_close(raw[0, 1], conv[0].amax(dim=1))
        torch.testing.assert_close(squashed(chars), torch.tanh(raw))
        assert torch.equal(squashed(chars)[1, 2], torch.zeros(5))  # padding words stay zero

    def test_every_model_config_carries_it_and_old_ones_load_as_none(self):
        from core.crf import BLSTMCRF, CRFConfig
        from core.seq2seq import TaggerConfig

        crf = BLSTMCRF(CRFConfig(n_words=10, n_chars=20, n_labels=3, char_filters=4, char_activation="tanh"))
        assert crf.encoder.char_cnn.g is torch.tanh
        net = InferenceNetwork(InfnetConfig(arch="seq2seq", n_words=10, n_chars=20, n_labels=3, char_filters=4,
                                            char_activation="tanh"))
        assert net.net.tagger.encoder.char_cnn.g is torch.tanh
        cnn = InferenceNetwork(InfnetConfig(arch="cnn13", n_words=10, n_chars=20, n_labels=3, char_filters=4,
                                            char_activation="tanh"))
        assert cnn.net.embed.char_cnn.g is torch.tanh
        for config_class, required in ((CRFConfig, dict(n_words=2, n_chars=2, n_labels=2)),
                                       (InfnetConfig, dict(arch="blstm", n_words=2, n_chars=2, n_labels=2)),
                                       (TaggerConfig, dict(n_words=2, n_chars=2, n_labels=2))):
            with pytest.raises(ValueError, match=f"{config_class.__name__}.char_activation must be one of"):
                config_class(**required, char_activation="relu")
            old = {k: v for k, v in config_class(**required).to_dict().items() if k != "char_activation"}
            assert config_class.from_dict(old).char_activation == "none"
