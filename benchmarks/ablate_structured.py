"""Issue 14: one-factor ablations of the Tu & Gimpel training setup, cheap enough to run many.

    python benchmarks/ablate_structured.py VARIANT SEED [TASK [OBJECTIVE [EPOCHS]]]  -> one JSON line

Defaults: conll2003_en, crf+, the first 3,000 training sentences, 3 epochs; other tasks use the whole
training set for EPOCHS (default 3). H = 100, GloVe 6B 50d (BEAMTUNE_DATA/embeddings), Adam at the
*old* default lr 1e-3 unless a variant sets it, batch 32, clip 5, 1 thread. Dev is not scored between
epochs (the last epoch's model is scored on dev and test). VARIANT is one factor or several joined
by "+" (e.g. sumloss+lr1e-2); each patches core in-process (see the branches below). Scratch tool:
the outputs go to /tmp/learn-runs/.
"""
import json, sys, time, math
import torch
from torch import nn
import core.train as T
import core.config as CF
import core.stages.crf as SC
import core.stages.infnet as SI
import core.encoders as E
import core.crf as C
import core.data as D

variant, seed = sys.argv[1], int(sys.argv[2])
task = sys.argv[3] if len(sys.argv) > 3 else "conll2003_en"
objective = sys.argv[4] if len(sys.argv) > 4 else "crf+"
import os
G = os.path.join(os.environ.get("BEAMTUNE_DATA", "/work/shared/data"), "embeddings/glove.6B.50d.txt.gz")
cfg = dict(task=task, out=f"/tmp/learn-runs/{task}-{objective}-{variant}-{seed}", embeddings=G, objective=objective,
           epochs=3, patience=0, seed=seed, train_limit=3000 if task == "conll2003_en" else 0, threads=1,
           progress=False, model={"hidden": 100}, lr=1e-3)  # the old default, explicit
if objective == "infnet":
    cfg["energy"] = f"/tmp/learn-runs/{task}-crf-lr1e-2-0"; cfg["arch"] = "cnn13"
if objective == "local":
    cfg["arch"] = "blstm"
if task != "conll2003_en":
    cfg["epochs"] = int(sys.argv[5]) if len(sys.argv) > 5 else 3

orig_loss = SC.CRFStage.loss
orig_init = C.BLSTMCRF.__init__
orig_enc_init = E.BiLSTMEncoder.__init__
orig_make_batches = T.make_batches


def patch_model(fn):
    def init(self, config):
        orig_init(self, config)
        fn(self)
    C.BLSTMCRF.__init__ = init


for v in variant.split("+"):
    if v == "base":
        pass
    elif v == "clip0":
        cfg["clip"] = 0.0
    elif v.startswith("lr"):
        cfg["lr"] = float(v[2:])
    elif v.startswith("eps"):
        eps = float(v[3:])
        T.make_optimizer = lambda config, model: torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr, eps=eps)
    elif v == "sumloss":  # summed over the batch (flair / pytorch-crf reduction='sum')
        def loss(self, batch, epoch):
            unary = self.model.unary(batch.words, batch.chars, batch.lengths)
            return self.model.nll(unary, batch.labels, batch.mask).sum()
        SC.CRFStage.loss = loss
    elif v == "sentmean":
        def loss(self, batch, epoch):
            unary = self.model.unary(batch.words, batch.chars, batch.lengths)
            return self.model.nll(unary, batch.labels, batch.mask).mean()
        SC.CRFStage.loss = loss
    elif v == "nobucket":
        def mb(sentences, vocabs, batch_size, *, shuffle=False, seed=0, bucket=True):
            return orig_make_batches(sentences, vocabs, batch_size, shuffle=shuffle, seed=seed, bucket=bucket and not shuffle)
        T.make_batches = mb
    elif v.startswith("drop"):  # drop0.25 : all dropout rates
        cfg["model"]["dropout"] = float(v[4:])
    elif v == "nochardrop":
        patch_model(lambda m: setattr(m.encoder.char_cnn, "dropout", nn.Dropout(0.0)))
    elif v == "noindrop":
        def f(m):
            enc = m.encoder; d = enc.dropout
            def fwd(words, chars, lengths, enc=enc):
                from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
                x = enc.word_embedding(words)
                if enc.char_cnn is not None:
                    x = torch.cat([x, enc.char_cnn(chars)], dim=-1)
                packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                out, _ = enc.lstm(packed)
                out, _ = pad_packed_sequence(out, batch_first=True, total_length=words.shape[1])
                return enc.dropout(out)
            enc.forward = fwd
        patch_model(f)
    elif v == "nochar":
        cfg["model"]["char_filters"] = 0
    elif v == "nonorm":  # the vocabulary before 9aba3e6: @mentions and URLs looked up as they are
        D.word_shape_key = lambda token: token
    elif v == "twnorm":  # @mentions and URLs -> one token each before the vocabulary lookup
        import re
        pat = [(re.compile(r"^@\w"), "<@mention>"), (re.compile(r"^(https?://|www\.)", re.I), "<url>")]
        def norm(t):
            for r, k in pat:
                if r.match(t):
                    return k
            return t
        ob, oe = D.Vocab.build.__func__, D.Vocab.encode
        D.Vocab.build = classmethod(lambda cls, tokens, **kw: ob(cls, (norm(t) for t in tokens), **kw))
        D.Vocab.encode = lambda self, token: oe(self, norm(token))
    elif v == "finetune":
        cfg["model"]["finetune_embeddings"] = True
    elif v == "frozen":
        cfg["model"]["finetune_embeddings"] = False
    elif v == "trainvocab":  # no dev/test GloVe words in the vocabulary
        orig_glove_words = CF.glove_words
        CF.glove_words = lambda path: set()
    elif v == "noglove":
        cfg["embeddings"] = None; cfg["model"]["word_dim"] = 50
    elif v == "cased":
        cfg["lowercase"] = False
    elif v == "lstm_orth":  # orthogonal recurrent, xavier input, forget bias 1
        def f(m):
            for name, p in m.encoder.lstm.named_parameters():
                if "weight_hh" in name:
                    for k in range(4):
                        nn.init.orthogonal_(p.data[k * p.shape[1]:(k + 1) * p.shape[1]])
                elif "weight_ih" in name:
                    nn.init.xavier_uniform_(p.data)
                elif "bias" in name:
                    p.data.zero_(); H = p.shape[0] // 4; p.data[H:2 * H] = 0.5  # two biases sum to 1
        patch_model(f)
    elif v == "lin_xavier":
        patch_model(lambda m: (nn.init.xavier_uniform_(m.unary_layer.weight), nn.init.zeros_(m.unary_layer.bias)))
    elif v == "trans0":
        patch_model(lambda m: [p.data.zero_() for p in (m.crf.transitions, m.crf.start, m.crf.end)])
    elif v == "transrandn":
        patch_model(lambda m: [p.data.normal_() for p in (m.crf.transitions, m.crf.start, m.crf.end)])
    elif v == "char_xavier":
        patch_model(lambda m: (nn.init.uniform_(m.encoder.char_cnn.embedding.weight, -math.sqrt(3 / 30), math.sqrt(3 / 30)),))
    elif v == "reproj":  # flair: Linear(emb, emb) before the LSTM
        def f(m):
            enc = m.encoder
            d = enc.lstm.input_size
            enc.reproj = nn.Linear(d, d)
            old_lstm = enc.lstm
            class L(nn.Module):
                def __init__(s):
                    super().__init__(); s.inner = old_lstm
                def forward(s, packed):
                    from torch.nn.utils.rnn import PackedSequence
                    data = enc.reproj(packed.data)
                    return s.inner(PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices))
            enc.lstm = L()
        patch_model(f)
    elif v.startswith("wdrop"):  # training tokens -> UNK with prob p (flair word dropout ~ zero vector)
        p = float(v[5:])
        orig_loss2 = SC.CRFStage.loss
        def loss(self, batch, epoch, p=p, f=orig_loss2):
            unk = self.vocabs.words.stoi["<unk>"]
            drop = (torch.rand(batch.words.shape) < p) & batch.mask
            batch = D.Batch(batch.words.masked_fill(drop, unk), batch.chars, batch.labels, batch.lengths, batch.mask, batch.index)
            return f(self, batch, epoch)
        SC.CRFStage.loss = loss
    elif v == "sgd":
        cfg["optimizer"] = "sgd"; cfg["momentum"] = 0.0; cfg["lr"] = 0.1
    else:
        raise SystemExit(f"unknown variant {v}")

# Score only the epoch-N model: dev is not scored after each epoch (saves a third of the time);
# a rising fake score makes the last epoch the "best" checkpoint that final_scores evaluates.
_calls = [0]
def _fake_dev(self):
    _calls[0] += 1
    return {"score": float(_calls[0])}
SC.CRFStage.dev_score = SI.InfnetStage.dev_score = _fake_dev
start = time.time()
final = T.train(T.TrainConfig(**cfg))
dec = "viterbi" if objective in ("crf", "crf+") else "infnet"
print(json.dumps({"variant": variant, "seed": seed, "task": task, "dev": round(100 * final["dev"][dec]["score"], 2),
                  "test": round(100 * final["test"][dec]["score"], 2), "best_epoch": final["best_epoch"],
                  "s": round(time.time() - start)}), flush=True)
