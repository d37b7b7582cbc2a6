"""SNLI loader, vocabulary, batches, GloVe loading, the sample generator, and a short training run."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from rnnfast.data import snli
from rnnfast.data.trees import pad_transitions, parse_to_transitions, random_transitions, transitions_to_parse
from rnnfast.nn.transitions import PAD, REDUCE, SHIFT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_snli_sample  # noqa: E402


def test_parse_round_trip():
    parse = "( ( A man ) ( ( is ( sleeping . ) ) now ) )"
    tokens, tr = parse_to_transitions(parse)
    assert tokens == ["A", "man", "is", "sleeping", ".", "now"]
    S, R = SHIFT, REDUCE
    assert tr == [S, S, R, S, S, S, R, R, S, R, R]
    assert transitions_to_parse(tokens, tr) == parse
    assert parse_to_transitions(parse, lower=True)[0][0] == "a"
    rng = random.Random(0)
    for n in [1, 2, 3, 7, 30]:
        words = [f"w{i}" for i in range(n)]
        tr = random_transitions(n, rng)
        assert len(tr) == 2 * n - 1
        assert parse_to_transitions(transitions_to_parse(words, tr)) == (words, tr)
    with pytest.raises(ValueError, match="transitions: expected a complete parse"):
        transitions_to_parse(["a", "b"], [SHIFT, SHIFT])


def test_pad_transitions_left():
    t = pad_transitions([[SHIFT], [SHIFT, SHIFT, REDUCE], []])
    assert t.tolist() == [[PAD, SHIFT, PAD], [PAD, SHIFT, PAD], [SHIFT, REDUCE, PAD]]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_read_jsonl_vocab_batches(tmp_path):
    pairs = [
        ("entailment", "( ( A dog ) runs )", "( A dog )"),
        ("-", "( a b )", "( c d )"),
        ("contradiction", "( ( A cat ) ( sits down ) )", "( no ( cat here ) )"),
        ("neutral", "( cats ( sleep ( a lot ) ) )", "dogs"),
    ]
    keys = ("gold_label", "sentence1_binary_parse", "sentence2_binary_parse")
    rows = [dict(zip(keys, p)) for p in pairs]
    _write(tmp_path / "x.jsonl", rows)
    ex = snli.read_jsonl(tmp_path / "x.jsonl")
    assert [e.label for e in ex] == [0, 2, 1]  # '-' dropped
    assert ex[0].premise == ["a", "dog", "runs"] and ex[0].premise_transitions == [
        SHIFT,
        SHIFT,
        REDUCE,
        SHIFT,
        REDUCE,
    ]
    assert ex[2].hypothesis == ["dogs"] and ex[2].hypothesis_transitions == [SHIFT]
    vocab = snli.Vocab.build(ex)
    assert vocab.itos[:2] == ["<unk>", "<pad>"] and vocab.encode(["dog", "zebra"])[1] == 0
    bs = list(snli.batches(ex, vocab, batch_size=2, shuffle=True, seed=1))
    assert sorted(len(b) for b in bs) == [1, 2]
    for b in bs:
        B = len(b)
        assert b.tokens.shape[0] == 2 * B and b.transitions.shape[1] == 2 * B
        assert (b.tokens[:, -1] == vocab.pad_index).all()  # the null column
        for i in range(2 * B):  # every column is a complete parse of its sentence's tokens
            col = [a for a in b.transitions[:, i].tolist() if a != PAD]
            n = int((b.tokens[i] != vocab.pad_index).sum())
            assert col.count(SHIFT) == n and col.count(REDUCE) == n - 1
            assert all(a == PAD for a in b.transitions[: b.transitions.shape[0] - len(col), i].tolist())
    _write(tmp_path / "bad.jsonl", [{"gold_label": "neutral"}])
    with pytest.raises(ValueError, match="bad.jsonl:1: not an SNLI jsonl line"):
        snli.read_jsonl(tmp_path / "bad.jsonl")


def test_load_glove(tmp_path):
    vocab = snli.Vocab(["<unk>", "<pad>", "dog", "cat", "zebra"])
    (tmp_path / "g.txt").write_text("dog 0.5 -1.0 2.0\nthe 1 1 1\ncat 0.25 0.0 -0.5\n")
    w, found = snli.load_glove(tmp_path / "g.txt", vocab)
    assert found == 2 and w.shape == (5, 3)
    assert w[2].tolist() == [0.5, -1.0, 2.0] and w[3].tolist() == [0.25, 0.0, -0.5]
    assert (w[1] == 0).all() and (w[4] != 0).any()
    (tmp_path / "bad.txt").write_text("dog 0.5 -1.0 2.0\ncat 1 2\n")
    with pytest.raises(ValueError, match="bad.txt:2: expected 3 values"):
        snli.load_glove(tmp_path / "bad.txt", vocab)


def test_sample_generator_is_deterministic_and_snli_like(tmp_path):
    make_snli_sample.main(
        ["--out", str(tmp_path), "--train", "300", "--dev", "10", "--test", "10", "--seed", "3"]
    )
    first = (tmp_path / "train.jsonl").read_text()
    make_snli_sample.main(
        ["--out", str(tmp_path), "--train", "300", "--dev", "10", "--test", "10", "--seed", "3"]
    )
    assert (tmp_path / "train.jsonl").read_text() == first
    ex = snli.read_jsonl(tmp_path / "train.jsonl")
    mean_p = sum(len(e.premise) for e in ex) / len(ex)
    mean_h = sum(len(e.hypothesis) for e in ex) / len(ex)
    assert 12 <= mean_p <= 16 and 6.5 <= mean_h <= 9.5, (mean_p, mean_h)
    assert {e.label for e in ex} == {0, 1, 2}


def test_shipped_sample_is_small_and_readable():
    folder = ROOT / "data" / "snli_sample"
    files = [folder / f"{s}.jsonl" for s in ("train", "dev", "test")]
    assert sum(f.stat().st_size for f in files) < 3 * 2**20
    assert len(snli.read_jsonl(files[1])) > 400


@pytest.fixture
def one_thread():
    """The training tests run tiny ops, where OpenMP's fork/join costs more than a second thread gains (and
    far more on a loaded machine); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_short_training_lowers_the_loss(one_thread):
    """A few updates on one tiny batch of the sample: the training loss must drop (not a speed test)."""
    from rnnfast.models import SNLIClassifier

    ex = snli.read_jsonl(ROOT / "data" / "snli_sample" / "dev.jsonl")[:24]
    vocab = snli.Vocab.build(ex)
    torch.manual_seed(0)
    model = SNLIClassifier(len(vocab), 16, 16, 8, 32, embed_dropout=0.0, mlp_dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    batch = snli.make_batch(ex, vocab)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(batch.tokens, batch.transitions), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_cli_runs(tmp_path, one_thread):
    from rnnfast.spinn_train import main

    make_snli_sample.main(["--out", str(tmp_path), "--train", "64", "--dev", "16", "--test", "16"])
    rc = main([
        "--train", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev.jsonl"),
        "--test", str(tmp_path / "test.jsonl"), "--epochs", "1", "--batch-size", "32", "--d-embed", "8",
        "--d-hidden", "8", "--d-tracker", "4", "--d-mlp", "16", "--out", str(tmp_path / "out"), "--no-plot",
    ])  # fmt: skip
    assert rc == 0
    ckpt = torch.load(tmp_path / "out" / "spinn_snli.pt")
    assert ckpt["vocab"][:2] == ["<unk>", "<pad>"] and "encoder.reduce.left.weight" in ckpt["model"]
