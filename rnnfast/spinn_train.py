"""Train the SPINN SNLI classifier (``rnnfast spinn-train``).

    rnnfast spinn-train                                   # the shipped sample, CPU, a couple of minutes
    rnnfast spinn-train --train snli_1.0_train.jsonl --dev snli_1.0_dev.jsonl --test snli_1.0_test.jsonl \\
        --d-embed 300 --d-hidden 300 --d-mlp 1024 --glove glove.840B.300d.txt --device cuda

Prints a progress line (loss, accuracy, sentences/s), evaluates on the dev set after every epoch,
keeps the checkpoint with the best dev accuracy (``--out``/spinn_snli.pt: weights, vocabulary,
config) and reports its test accuracy; draws loss and accuracy curves to ``--out``/spinn_snli.png
when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnfast.data import snli
from rnnfast.models import SNLIClassifier

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "snli_sample"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="rnnfast spinn-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train", help="SNLI-format jsonl (default: the shipped sample)")
    ap.add_argument("--dev", help="dev jsonl (default: the sample's, or none with --train)")
    ap.add_argument("--test", help="test jsonl (default: the sample's, or none with --train)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--d-embed", type=int, default=64)
    ap.add_argument("--d-hidden", type=int, default=64)
    ap.add_argument("--d-tracker", type=int, default=32, help="0: no tracker")
    ap.add_argument("--d-mlp", type=int, default=256)
    ap.add_argument("--n-mlp-layers", type=int, default=2)
    # The example's 0.08 / 0.07 suit full SNLI; the small sample overfits with them.
    ap.add_argument("--embed-dropout", type=float, default=0.1)
    ap.add_argument("--mlp-dropout", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--glove", help="GloVe-format text vectors for the embedding (its width sets --d-embed)")
    ap.add_argument("--fix-emb", action="store_true", help="do not train the embedding")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many updates (0: no limit)")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default="spinn_out", help="folder for the checkpoint and the plot")
    ap.add_argument("--no-plot", action="store_true")
    return ap


def evaluate(model: SNLIClassifier, examples, vocab, batch_size: int, device) -> tuple[float, float]:
    """(mean loss, accuracy) over ``examples``, in eval mode."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for b in snli.batches(examples, vocab, batch_size, shuffle=False):
            b = b.to(device)
            logits = model(b.tokens, b.transitions)
            loss += F.cross_entropy(logits, b.labels, reduction="sum").item()
            correct += int((logits.argmax(1) == b.labels).sum())
            n += len(b)
    model.train()
    return loss / max(n, 1), correct / max(n, 1)


def _plot(history: dict, path: Path, title: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or rnnfast[plot]): no plot written"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(history["step"], history["loss"], label="train (running)")
    a1.plot(history["dev_step"], history["dev_loss"], "o-", label="dev")
    a1.set_xlabel("update")
    a1.set_ylabel("cross-entropy")
    a1.legend()
    a2.plot(history["step"], history["acc"], label="train (running)")
    a2.plot(history["dev_step"], history["dev_acc"], "o-", label="dev")
    a2.set_xlabel("update")
    a2.set_ylabel("accuracy")
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    if a.train is None:
        if not (SAMPLE / "train.jsonl").exists():
            print(f"error: no --train given and the sample is missing at {SAMPLE} "
                  "(run scripts/make_snli_sample.py)", file=sys.stderr)  # fmt: skip
            return 2
        a.train = str(SAMPLE / "train.jsonl")
        a.dev = a.dev or str(SAMPLE / "dev.jsonl")
        a.test = a.test or str(SAMPLE / "test.jsonl")
    train = snli.read_jsonl(a.train)
    dev = snli.read_jsonl(a.dev) if a.dev else []
    test = snli.read_jsonl(a.test) if a.test else []
    if not train:
        print(f"error: no labelled pairs in {a.train}", file=sys.stderr)
        return 2
    vocab = snli.Vocab.build(train)
    print(f"data: {len(train)} train, {len(dev)} dev, {len(test)} test pairs; vocabulary {len(vocab)}")
    glove = None
    if a.glove:
        glove, found = snli.load_glove(a.glove, vocab)
        a.d_embed = glove.shape[1]
        print(f"glove: {found}/{len(vocab)} words found in {a.glove} (d={a.d_embed})")
    model = SNLIClassifier(
        len(vocab), a.d_embed, a.d_hidden, a.d_tracker or None, a.d_mlp, a.n_mlp_layers,
        embed_dropout=a.embed_dropout, mlp_dropout=a.mlp_dropout, fix_emb=a.fix_emb,
        pad_index=vocab.pad_index,
    )  # fmt: skip
    if glove is not None:
        model.embed.weight.data.copy_(glove)
    model.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "spinn_snli.pt"
    history: dict[str, list] = {k: [] for k in ("step", "loss", "acc", "dev_step", "dev_loss", "dev_acc")}
    step, best = 0, -1.0
    run_loss = run_acc = None
    t_start = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        t0, sents = time.perf_counter(), 0
        for b in snli.batches(train, vocab, a.batch_size, shuffle=True, seed=a.seed + epoch):
            b = b.to(device)
            logits = model(b.tokens, b.transitions)
            loss = F.cross_entropy(logits, b.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sents += 2 * len(b)
            acc = (logits.argmax(1) == b.labels).float().mean().item()
            lv = loss.item()
            if not math.isfinite(lv):
                print(f"error: loss is {lv} at update {step}", file=sys.stderr)
                return 1
            run_loss = lv if run_loss is None else 0.9 * run_loss + 0.1 * lv
            run_acc = acc if run_acc is None else 0.9 * run_acc + 0.1 * acc
            history["step"].append(step)
            history["loss"].append(run_loss)
            history["acc"].append(run_acc)
            if step % a.log_every == 0:
                rate = sents / (time.perf_counter() - t0)
                print(f"epoch {epoch} update {step}: loss {run_loss:.4f} acc {run_acc:.3f} "
                      f"{rate:,.0f} sentences/s", flush=True)  # fmt: skip
            if a.max_steps and step >= a.max_steps:
                break
        if dev:
            dl, da = evaluate(model, dev, vocab, a.batch_size, device)
            history["dev_step"].append(step)
            history["dev_loss"].append(dl)
            history["dev_acc"].append(da)
            elapsed = time.perf_counter() - t_start
            print(f"epoch {epoch}: dev loss {dl:.4f} dev acc {da:.3f} ({elapsed:.0f} s)")
            if da > best:
                best = da
                torch.save({"model": model.state_dict(), "config": model.config, "vocab": vocab.itos}, ckpt)
        if a.max_steps and step >= a.max_steps:
            break
    if not dev:
        torch.save({"model": model.state_dict(), "config": model.config, "vocab": vocab.itos}, ckpt)
    print(f"checkpoint: {ckpt}" + (f" (best dev acc {best:.3f})" if dev else ""))
    if test:
        model.load_state_dict(torch.load(ckpt, map_location=device)["model"])
        tl, ta = evaluate(model, test, vocab, a.batch_size, device)
        print(f"test loss {tl:.4f} test acc {ta:.3f}")
    if not a.no_plot:
        print(_plot(history, out / "spinn_snli.png", f"SPINN classifier on {Path(a.train).name}"))
    print(f"trained {step} updates in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
