"""SNLI classifier of the classic PyTorch SPINN example, with the batched SPINN encoder.

Dimensions: B sentence pairs, N leaves (longest sentence), T transitions, E embedding, H hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnfast.nn.spinn import SPINN


class Feature(nn.Module):
    """[p, h, p − h, p·h] -> BatchNorm -> dropout (the example's ``Feature``)."""

    def __init__(self, size: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm1d(size * 4)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, prem: Tensor, hypo: Tensor) -> Tensor:
        return self.dropout(self.bn(torch.cat([prem, hypo, prem - hypo, prem * hypo], 1)))


class SNLIClassifier(nn.Module):
    """embedding -> Linear(E, 2H) -> BatchNorm -> dropout -> SPINN over premises and hypotheses in one
    encoder call -> features -> MLP (``n_mlp_layers`` × [Linear, ReLU, BatchNorm, dropout]) -> 3 logits.

    forward(tokens (2B, N+1) premises then hypotheses, right-padded with ``pad_index`` (column N all
    padding), transitions (T, 2B)) -> logits (B, 3); with ``predict`` also the transition logits
    (T, 2B, 4). The encoder's null state is each sentence's projected padding token, as in the example.
    """

    def __init__(
        self,
        n_embed: int,
        d_embed: int = 300,
        d_hidden: int = 300,
        d_tracker: int | None = 64,
        d_mlp: int = 1024,
        n_mlp_layers: int = 2,
        d_out: int = 3,
        embed_dropout: float = 0.08,
        mlp_dropout: float = 0.07,
        predict: bool = False,
        fix_emb: bool = False,
        pad_index: int = 1,
        backend: str = "auto",
    ):
        super().__init__()
        self.config = dict(
            n_embed=n_embed, d_embed=d_embed, d_hidden=d_hidden, d_tracker=d_tracker, d_mlp=d_mlp,
            n_mlp_layers=n_mlp_layers, d_out=d_out, embed_dropout=embed_dropout, mlp_dropout=mlp_dropout,
            predict=predict, fix_emb=fix_emb, pad_index=pad_index,
        )  # fmt: skip
        self.pad_index = pad_index
        self.fix_emb = fix_emb
        self.embed = nn.Embedding(n_embed, d_embed)
        self.projection = nn.Linear(d_embed, 2 * d_hidden)
        self.embed_bn = nn.BatchNorm1d(2 * d_hidden)
        self.embed_dropout = nn.Dropout(p=embed_dropout)
        self.encoder = SPINN(d_hidden, d_tracker, predict=predict, backend=backend)
        self.feature = Feature(d_hidden, mlp_dropout)
        layers: list[nn.Module] = []
        d_in = 4 * d_hidden
        for _ in range(n_mlp_layers):
            layers += [nn.Linear(d_in, d_mlp), nn.ReLU(), nn.BatchNorm1d(d_mlp), nn.Dropout(p=mlp_dropout)]
            d_in = d_mlp
        layers.append(nn.Linear(d_in, d_out))
        self.out = nn.Sequential(*layers)

    def forward(self, tokens: Tensor, transitions: Tensor):
        if tokens.dim() != 2 or tokens.shape[0] % 2:
            raise ValueError(
                f"tokens: expected shape (2B, N+1) (premises then hypotheses), got {tuple(tokens.shape)}"
            )
        if transitions.dim() != 2 or transitions.shape[1] != tokens.shape[0]:
            raise ValueError(
                f"transitions: expected shape (T, {tokens.shape[0]}) to match tokens, "
                f"got {tuple(transitions.shape)}"
            )
        S, N1 = tokens.shape
        x = self.embed(tokens)
        if self.fix_emb:
            x = x.detach()
        x = self.projection(x)
        x = self.embed_dropout(self.embed_bn(x.view(S * N1, -1)).view(S, N1, -1))
        out = self.encoder(x[:, :-1], transitions, x[:, -1])
        h, trans_logits = out if self.encoder.predict else (out, None)
        B = S // 2
        logits = self.out(self.feature(h[:B], h[B:]))
        return (logits, trans_logits) if self.encoder.predict else logits
