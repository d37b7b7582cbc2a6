"""The figures of a benchmark run, drawn from its rows: a run just finished or any results JSON.

Two kinds, chosen from the cases a run holds:

- **heat maps** for sweeps: per (op, mode, dtype) and T, the speed-up of the fastest rnnfast provider
  over the baseline on a B × H grid (R × H for the tree ops), a diverging colour map centred on 1×,
  the value in every cell. A group of cases becomes a heat map where it has at least two batch sizes
  and two hidden sizes at one T (one layer, one direction, unpacked) and fills more than half of that
  grid.
- **bars** for everything else (the quick grid, a run with few sizes per op, and the variants a sweep
  has besides its grid): a row per case, a bar per provider on a log speed-up axis from the 1× line of
  the baseline, the fastest rnnfast provider's value printed at its bar.

A run with both writes the heat maps to ``<stem>.png`` and the bars to ``<stem>-bars.png``; otherwise
``<stem>.png`` holds the one kind it has. matplotlib is optional: without it nothing is drawn and
:func:`write_figures` says why. Figures are built on ``matplotlib.figure.Figure`` (no pyplot, no global
backend), at a fixed size per row and cell, so the PNG's size follows from the rows (:func:`bar_size`,
:func:`heat_size`).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

# The providers that are rnnfast: its backends, and "auto" (the module as a user gets it, which may hand
# the call to torch.nn itself where that is faster). The plots and scripts/results_table.py take the
# fastest of them per case.
RNNFAST_PROVIDERS = ("reference", "cpu", "triton", "cuda", "auto")
# Bar order within a case and fixed colours, so a provider looks the same in every figure.
PROVIDER_ORDER = ("cpu", "auto", "triton", "cuda", "reference", "compile")
COLOURS = {
    "cpu": "#1f77b4",
    "auto": "#ff7f0e",
    "triton": "#2ca02c",
    "cuda": "#d62728",
    "reference": "#7f7f7f",
    "compile": "#9467bd",
}
DPI = 110
BAR_WIDTH_IN = 10.0
BAR_IN = 0.17  # one bar's height
CASE_PAD_IN = 0.16  # between two cases
SECTION_IN = 0.75  # a section's axis and its title
HEAD_IN = 1.15  # the title and the legend
FOOT_IN = 0.35
CELL_W_IN, CELL_H_IN = 0.62, 0.36
PANEL_PAD_W_IN, PANEL_PAD_H_IN = 0.85, 0.75
COLORBAR_IN = 1.1


def _matplotlib():
    """(Figure, ticker) or raise ImportError."""
    from matplotlib import ticker
    from matplotlib.figure import Figure

    return Figure, ticker


def _cases(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["case"], []).append(r)
    return out


def _timed(rs: list[dict]) -> list[dict]:
    """Rows of one case with a speed-up, the baseline left out."""
    return [r for r in rs if r["status"] == "ok" and r.get("speedup") and r["provider"] != r["baseline"]]


def fastest_rnnfast(rs: list[dict]) -> dict | None:
    """The fastest rnnfast provider's row of one case (checked and timed), or None."""
    ours = [r for r in _timed(rs) if r["provider"] in RNNFAST_PROVIDERS]
    return min(ours, key=lambda r: r["median_ms"]) if ours else None


def _failed(rs: list[dict]) -> list[dict]:
    return [r for r in rs if r["status"] in ("MISMATCH", "ERROR") and r["provider"] != r["baseline"]]


def _batch(r: dict) -> tuple[str, int]:
    return ("R", r["R"]) if r.get("R") else ("B", r["B"])


def _panel_key(r: dict) -> tuple | None:
    """The heat-map group of a row's case: everything but the batch and H, or None for a variant
    (layers, directions, packing) that the grids do not sweep."""
    if r.get("layers", 1) != 1 or r.get("bidir") or r.get("packed"):
        return None
    width = "I=H" if r.get("I") == r["H"] else f"I{r.get('I')}"
    return (r["op"], r["mode"], r["dtype"], r.get("T"), r.get("HT"), width, _batch(r)[0])


def split(rows: list[dict]) -> tuple[dict[tuple, dict[str, list[dict]]], dict[str, list[dict]]]:
    """(heat-map panels {group key: {case: rows}}, the other cases {case: rows}), in the run's order."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    rest: dict[str, list[dict]] = {}
    for case, rs in _cases(rows).items():
        key = _panel_key(rs[0])
        if key is None:
            rest[case] = rs
        else:
            groups.setdefault(key, {})[case] = rs
    panels = {}
    for key, cases in groups.items():
        batches = {_batch(rs[0])[1] for rs in cases.values()}
        hs = {rs[0]["H"] for rs in cases.values()}
        # A sparse grid (a few rechecked cases) reads better as bars than as a map of grey cells.
        if len(batches) >= 2 and len(hs) >= 2 and 2 * len(cases) > len(batches) * len(hs):
            panels[key] = cases
        else:
            rest.update(cases)
    order = list(_cases(rows))
    rest = dict(sorted(rest.items(), key=lambda kv: order.index(kv[0])))
    return panels, rest


def title_lines(machine: dict | None, meta: dict | None) -> list[str]:
    """Device, versions and commit, for the figure's title."""
    if not machine:
        return []
    meta = meta or {}
    head = f"rnnfast bench {meta.get('grid') or ''}: {machine.get('device_name')}"
    head += f" ({machine.get('device')}, {machine.get('threads')} threads)"
    versions = [f"torch {machine.get('torch')}"]
    if machine.get("triton"):
        versions.append(f"triton {machine['triton']}")
    if machine.get("device") == "cuda":
        versions.append(f"CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')}")
        versions.append(f"cuDNN TF32 {'on' if machine.get('cudnn_allow_tf32') else 'off'}")
    commit = (machine.get("commit") or "unknown commit")[:10]
    versions.append(f"rnnfast {machine.get('rnnfast')} @ {commit}")
    if machine.get("loadavg_1min") is not None:
        versions.append(f"load average {machine['loadavg_1min']}")
    if meta.get("created"):
        versions.append(str(meta["created"])[:10])
    return [head, " · ".join(versions)]


def _x(v: float) -> str:
    """A speed-up as printed: 0.87×, 3.51×, 15.6×, 120×."""
    return f"{v:.0f}×" if v >= 99.5 else f"{v:.1f}×" if v >= 9.995 else f"{v:.2f}×"


def _provider_order(names) -> list[str]:
    names = set(names)
    return [p for p in PROVIDER_ORDER if p in names] + sorted(names - set(PROVIDER_ORDER))


# --------------------------------------------------------------------------------------------------
# Bars


def _sections(cases: dict[str, list[dict]]) -> list[tuple[str, list[str], list[str]]]:
    """[(baseline, its cases in order, the providers drawn in it)], one per baseline."""
    out: dict[str, list[str]] = {}
    for case, rs in cases.items():
        out.setdefault(rs[0]["baseline"], []).append(case)
    return [
        (base, cs, _provider_order({r["provider"] for c in cs for r in _timed(cases[c]) + _failed(cases[c])}))
        for base, cs in out.items()
    ]


def bar_size(sections: list[tuple[str, list[str], list[str]]]) -> tuple[float, float]:
    """Figure size in inches for the bar chart: a fixed width, a height from its cases and providers."""
    h = HEAD_IN + FOOT_IN
    for _, cases, provs in sections:
        h += SECTION_IN + len(cases) * (max(1, len(provs)) * BAR_IN + CASE_PAD_IN)
    return BAR_WIDTH_IN, round(h, 2)


def bar_figure(rows: list[dict], machine: dict | None = None, meta: dict | None = None, title=None):
    """The bar chart of ``rows`` (any cases): a Figure. Each bar has ``gid`` '<case>|<provider>'; the
    printed value is a text with gid 'value'."""
    Figure, ticker = _matplotlib()
    cases = _cases(rows)
    sections = _sections(cases)
    timed = [r["speedup"] for rs in cases.values() for r in _timed(rs)]
    # Room beyond the longest bars for the printed value.
    lo = min([0.5, *(s / 1.7 for s in timed)])
    hi = max([2.0, *(s * 1.7 for s in timed)])
    size = bar_size(sections)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    heights = [len(cs) * (max(1, len(ps)) * BAR_IN + CASE_PAD_IN) + SECTION_IN for _, cs, ps in sections]
    axes = fig.subplots(len(sections) or 1, 1, gridspec_kw={"height_ratios": heights or [1]}, squeeze=False)
    handles = {}
    for ax, (base, case_ids, provs) in zip(axes[:, 0], sections):
        slot = max(1, len(provs))
        height = 0.8 / slot
        for i, case in enumerate(case_ids):
            rs = cases[case]
            by_provider = {r["provider"]: r for r in _timed(rs) + _failed(rs)}
            best = fastest_rnnfast(rs)
            for j, prov in enumerate(provs):
                r = by_provider.get(prov)
                if r is None:
                    continue
                y = i - 0.4 + (j + 0.5) * height
                if r["status"] != "ok":
                    note = f" {prov}: {r['status']}"
                    ax.text(1.0, y, note, va="center", ha="left", fontsize=7, color="#b00000")
                    continue
                s = r["speedup"]
                bar = ax.barh(y, s - 1.0, left=1.0, height=height * 0.92, color=COLOURS.get(prov, "#8c564b"))
                bar.patches[0].set_gid(f"{case}|{prov}")
                handles.setdefault(prov, bar.patches[0])
                if best is not None and r is best:
                    right = s >= 1.0
                    ax.text(
                        s * (1.04 if right else 1 / 1.04), y, _x(s), va="center",
                        ha="left" if right else "right", fontsize=7.5, fontweight="bold", gid="value",
                    )  # fmt: skip
            if not _timed(rs) and not _failed(rs):
                ax.text(1.0, i, " only the baseline ran", va="center", ha="left", fontsize=7, color="0.4")
        ax.axvline(1.0, color="0.2", lw=1.0)
        ax.annotate(
            f"{base} = 1×", xy=(1.0, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -2),
            textcoords="offset points", ha="left", va="top", fontsize=7.5, color="0.25",
        )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(len(case_ids) - 0.45, -0.95)  # room at the top for the 1× label
        ax.set_yticks(range(len(case_ids)), [cases[c][0]["label"] for c in case_ids], fontsize=8)
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", which="major", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        ax.set_title(f"speed-up over {base} (median per call, same run; right of the line is faster)",
                     loc="left", fontsize=8.5)  # fmt: skip
    if not sections:
        axes[0, 0].text(0.5, 0.5, "no case in this run", ha="center", va="center")
        axes[0, 0].axis("off")
    _suptitle(fig, [title or "\n".join(title_lines(machine, meta))])
    if handles:
        names = _provider_order(handles)
        labels = [f"{p} (rnnfast)" if p in RNNFAST_PROVIDERS else p for p in names]
        _legend(fig, [handles[p] for p in names], labels)
    return fig


def _suptitle(fig, lines: list[str], size: float = 9.5) -> None:
    """The title, its lines wrapped to the figure's width (a character is about half the font size)."""
    width = int(fig.get_figwidth() * 72 / (0.55 * size))
    wrapped = [w for text in lines for line in text.split("\n") for w in textwrap.wrap(line, width) or [""]]
    fig.suptitle("\n".join(wrapped), fontsize=size)


def _legend(fig, handles, labels) -> None:
    kw = {"ncol": len(handles), "fontsize": 8, "frameon": False}
    try:
        fig.legend(handles, labels, loc="outside lower center", **kw)
    except ValueError:  # matplotlib before 3.7 has no "outside" placement
        fig.legend(handles, labels, loc="lower center", **kw)


# --------------------------------------------------------------------------------------------------
# Heat maps


def _layout(panels: dict[tuple, dict[str, list[dict]]]):
    """Panel rows (op, dtype, HT, width, batch letter) × columns (mode, T), in the run's order."""
    row_keys, modes, col_keys = [], [], []
    for op, mode, dtype, T, HT, width, letter in panels:
        if (op, dtype, HT, width, letter) not in row_keys:
            row_keys.append((op, dtype, HT, width, letter))
        if mode not in modes:
            modes.append(mode)
        if (mode, T) not in col_keys:
            col_keys.append((mode, T))
    # The modes in the run's order, each with its T ascending.
    col_keys.sort(key=lambda k: (modes.index(k[0]), k[1] or 0))
    return row_keys, col_keys


def _axes_values(cases: dict[str, list[dict]]) -> tuple[list[int], list[int]]:
    batches = sorted({_batch(rs[0])[1] for rs in cases.values()})
    hs = sorted({rs[0]["H"] for rs in cases.values()})
    return batches, hs


def heat_size(panels: dict[tuple, dict[str, list[dict]]]) -> tuple[float, float]:
    """Figure size in inches for the heat maps: columns and rows of panels, each from its cells."""
    row_keys, col_keys = _layout(panels)
    n_b = max((len(_axes_values(c)[0]) for c in panels.values()), default=1)
    n_h = max((len(_axes_values(c)[1]) for c in panels.values()), default=1)
    w = len(col_keys) * (n_h * CELL_W_IN + PANEL_PAD_W_IN) + COLORBAR_IN
    h = len(row_keys) * (n_b * CELL_H_IN + PANEL_PAD_H_IN) + HEAD_IN
    return round(max(w, 6.0), 2), round(h, 2)


def heat_figure(rows: list[dict], machine: dict | None = None, meta: dict | None = None, title=None):
    """The heat maps of the groups of ``rows`` that form B × H grids (:func:`split`): a Figure. Each
    panel's image holds one value per grid cell (masked where no rnnfast provider was timed); each
    printed value is a text with gid 'cell'."""
    Figure, ticker = _matplotlib()
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    panels, _ = split(rows)
    row_keys, col_keys = _layout(panels)
    best = {key: {case: fastest_rnnfast(rs) for case, rs in cases.items()} for key, cases in panels.items()}
    logs = [math.log10(r["speedup"]) for b in best.values() for r in b.values() if r is not None]
    # Centred on 1× (log 0), each side scaled to its own extreme (at least 0.5× and 2×), so that a
    # cell below 1× is visibly red even where others reach 20×.
    low, high = min([-math.log10(2.0), *logs]), max([math.log10(2.0), *logs])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)
    cmap = _cmap()
    fig = Figure(figsize=heat_size(panels), dpi=DPI, layout="constrained")
    axes = fig.subplots(max(1, len(row_keys)), max(1, len(col_keys)), squeeze=False)
    image = None
    used = set()
    for key, cases in panels.items():
        op, mode, dtype, T, HT, width, letter = key
        ax = axes[row_keys.index((op, dtype, HT, width, letter)), col_keys.index((mode, T))]
        used.add(id(ax))
        batches, hs = _axes_values(cases)
        grid = np.full((len(batches), len(hs)), np.nan)
        notes: dict[tuple[int, int], str] = {}
        for case, rs in cases.items():
            i, j = batches.index(_batch(rs[0])[1]), hs.index(rs[0]["H"])
            r = best[key][case]
            if r is not None:
                grid[i, j] = math.log10(r["speedup"])
            else:
                notes[(i, j)] = "fail" if _failed(rs) else "—"
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                dark = abs(float(norm(v)) - 0.5) > 0.3
                ax.text(j, i, _x(10**v), ha="center", va="center", fontsize=7.5,
                        color="white" if dark else "black", gid="cell")  # fmt: skip
            elif (i, j) in notes:
                ax.text(j, i, notes[(i, j)], ha="center", va="center", fontsize=7, color="#b00000")
        ax.set_xticks(range(len(hs)), [str(h) for h in hs], fontsize=7.5)
        ax.set_yticks(range(len(batches)), [str(b) for b in batches], fontsize=7.5)
        ax.set_xlabel("H", fontsize=8, labelpad=1)
        ax.set_ylabel(letter, fontsize=8, labelpad=1)
        base = next(iter(cases.values()))[0]["baseline"]
        where = f"T={T}" if op not in ("tree_lstm", "tree_lstm_reduce") else (f"HT={HT}" if HT else "")
        ax.set_title(f"{op} {mode} {_short(dtype)} {where} · vs {base}".replace("  ", " "), fontsize=8.5)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    for ax in axes.flat:
        if id(ax) not in used:
            ax.axis("off")
    if image is not None:
        steps = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
        ticks = [t for t in steps if low - 1e-9 <= math.log10(t) <= high + 1e-9]
        bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / max(1, len(row_keys))), aspect=30)
        bar.set_ticks([math.log10(t) for t in ticks], labels=[f"{t:g}×" for t in ticks])
        bar.ax.tick_params(labelsize=8)
        bar.set_label("speed-up", fontsize=8)
    else:
        axes[0, 0].text(0.5, 0.5, "no B × H grid in this run", ha="center", va="center")
    providers = sorted({r["provider"] for b in best.values() for r in b.values() if r is not None})
    what = (
        f"each cell: the speed-up of the fastest rnnfast provider ({', '.join(providers) or 'none timed'}) "
        "over the baseline, medians of the same run; grey: not timed"
    )
    _suptitle(fig, [title or "\n".join(title_lines(machine, meta)), what])
    return fig


def _cmap():
    """Red below 1×, white at 1×, blue above; grey where nothing was timed."""
    from matplotlib import colormaps

    return colormaps["RdBu"].with_extremes(bad="#e6e6e6")


def _short(dtype: str) -> str:
    return {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}.get(dtype, dtype)


# --------------------------------------------------------------------------------------------------
# Files


def write_figures(
    stem: Path, rows: list[dict], machine: dict | None = None, meta: dict | None = None, title=None
) -> tuple[list[Path], str | None]:
    """Draw the run's figures: ``<stem>.png`` (heat maps where the run has B × H grids, else the bar
    chart) and, when it has both, ``<stem>-bars.png`` for the cases outside the grids. Returns the
    paths written and None, or ([], why not) when matplotlib is missing."""
    try:
        _matplotlib()
    except ImportError as e:
        return [], f"matplotlib is not installed ({e}); pip install matplotlib for the plot"
    stem = Path(stem)
    panels, rest = split(rows)
    out = []
    if panels:
        out.append((stem.with_name(stem.name + ".png"), heat_figure(rows, machine, meta, title)))
        if rest:
            bars = [r for case in rest for r in rest[case]]
            out.append((stem.with_name(stem.name + "-bars.png"), bar_figure(bars, machine, meta, title)))
    else:
        out.append((stem.with_name(stem.name + ".png"), bar_figure(rows, machine, meta, title)))
    for path, fig in out:
        fig.savefig(path, dpi=DPI)
    return [p for p, _ in out], None


def load(path: Path) -> dict:
    """A results JSON written by ``rnnfast bench`` (ValueError naming the file otherwise)."""
    doc = json.loads(Path(path).read_text())
    if not (isinstance(doc, dict) and doc.get("schema") == 1 and "rows" in doc):
        raise ValueError(f"{path}: not an 'rnnfast bench' results file (expected schema 1 with rows)")
    return doc


def replot(path: Path, out: Path | None = None) -> tuple[list[Path], str | None]:
    """Redraw the figures of a results JSON into ``out`` (default: beside it, same stem)."""
    path = Path(path)
    doc = load(path)
    meta = {k: v for k, v in doc.items() if k not in ("rows", "machine", "peak")}
    folder = Path(out) if out is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / path.stem
    return write_figures(stem, doc["rows"], doc.get("machine"), meta)
