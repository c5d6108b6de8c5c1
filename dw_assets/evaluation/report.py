"""The weekly offline-evaluation report: one self-contained HTML file.

Inline CSS, plots as base64-embedded PNGs drawn on matplotlib's Agg canvas (no pyplot, so no
global figure state and no display needed), no scripts and nothing fetched from a network.
Every section is optional: a missing input renders "not available this week".
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MISSING = "not available this week"
# Higher is better for these; the systems table highlights each column's best value.
ACCURACY_PREFIXES = ("precision@", "recall@", "ndcg@", "hit_rate@", "map@", "cold_hit_rate")
HEADLINE_METRICS = ("ndcg@30", "recall@30", "precision@30", "hit_rate@30", "map@30")
TREND_METRICS = ("ndcg@30", "recall@30")
PIPELINE = "pipeline"
MAX_SAMPLE_USERS = 4
MAX_AB_METRICS = 4
PNG_DPI = 100
# The north star's systems, in the order its tables list them (any others after).
NORTH_STAR_SYSTEMS = ("pipeline", "ranker_order", "retrieval", "als", "item_cf", "popularity", "last_week",
                      "candidate_oracle", "catalog_oracle")
EXPOSURE_NOTE = ("NDCG@30 (and the other accuracy columns) score next week's logged positives: an exposure "
                 "monitor, not a target; the target is the north star (simulated saves per user).")

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; }
th { background: #f4f4f4; } td.label, th.label { text-align: left; }
td.best { background: #d9f2d9; font-weight: bold; }
tr.PASS td.status { color: #1a7f37; } tr.WARN td { background: #fff4d6; } tr.ERROR td { background: #fde2e1; }
td.status { font-weight: bold; }
.missing { color: #888; font-style: italic; }
.headline { font-size: 1.05em; } .verdict { font-weight: bold; }
img { max-width: 100%; }
"""


# ---------------------------------------------------------------- figures


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure on an Agg canvas and its axes as an array[nrows, ncols]."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def write_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig`` (Agg renderer, no software/version stamp, so the same plot gives the same bytes)."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _missing_panel(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, MISSING, ha="center", va="center", color="#888", style="italic", transform=ax.transAxes)
    ax.set_axis_off()


def _system_colors(names: Sequence[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _finite(values) -> np.ndarray:
    if values is None:
        return np.empty(0)
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def _popularity_panel(ax, popularity: Mapping[str, np.ndarray]) -> None:
    title = "popularity of recommended vs history tracks"
    samples = {label: _finite(popularity.get(key)) for key, label in
               (("history", "users' history"), ("recommended", "recommended"))}
    samples = {label: values for label, values in samples.items() if values.size}
    if not samples:
        _missing_panel(ax, title)
        return
    everything = np.concatenate(list(samples.values()))
    bins = np.linspace(min(0.0, everything.min()), max(1.0, everything.max()), 21)
    for label, values in samples.items():
        ax.hist(values, bins=bins, density=True, alpha=0.55, label=f"{label} (median {np.median(values):.2f})")
    ax.set_title(title)
    ax.set_xlabel("popularity percentile")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")


def _bars_by_system(ax, values: pd.Series, colors: dict[str, str], title: str, ylabel: str,
                    notes: pd.Series | None = None) -> None:
    """One bar per system, labelled with its value (and ``notes[system]`` below it when given)."""
    values = values.dropna()
    if values.empty:
        _missing_panel(ax, title)
        return
    names = [str(n) for n in values.index]
    bars = ax.bar(names, values.to_numpy(np.float64), color=[colors.get(n, "C7") for n in names])
    labels = [f"{v:.3f}" for v in values]
    if notes is not None:
        labels = [label + (f"\n{notes[n]}" if n in notes.index and pd.notna(notes[n]) else "")
                  for label, n in zip(labels, values.index, strict=True)]
    ax.bar_label(bars, labels=labels, fontsize="small")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    ax.margins(y=0.15)


def _headline_metric(systems: pd.DataFrame | None) -> str | None:
    if systems is None:
        return None
    return next((m for m in HEADLINE_METRICS if m in systems.columns and systems[m].notna().any()), None)


def _cold_frame(cold_exposure: pd.DataFrame | None, systems: pd.DataFrame | None) -> pd.DataFrame | None:
    """Cold exposure by system: the given table, else the systems table's cold columns."""
    cold = _indexed(cold_exposure, "system")
    if cold is not None and "cold_share" in cold.columns:
        return cold
    if systems is not None and "cold_share" in systems.columns:
        return systems[[c for c in ("cold_share", "cold_hit_rate") if c in systems.columns]]
    return None


def _cold_panel(ax, cold: pd.DataFrame | None, colors: dict[str, str]) -> None:
    title = "cold-track share of playlists (label: cold hit rate)"
    if cold is None:
        _missing_panel(ax, title)
        return
    notes = cold["cold_hit_rate"].map(lambda h: f"hit {h:.3f}" if pd.notna(h) else None) \
        if "cold_hit_rate" in cold.columns else None
    _bars_by_system(ax, cold["cold_share"], colors, title, "share of slots", notes)


def _arms_frame(ab: Mapping | None) -> pd.DataFrame | None:
    if not ab or ab.get("arms") is None:
        return None
    arms = ab["arms"]
    frame = arms.copy() if isinstance(arms, pd.DataFrame) else pd.DataFrame(list(arms))
    needed = {"arm", "mean"}
    return frame if not frame.empty and needed <= set(frame.columns) else None


def _ab_panel(ax, arms: pd.DataFrame | None, metric: str | None) -> None:
    title = "A/B test by arm" if metric is None else f"A/B test: {metric} by arm"
    if arms is None:
        _missing_panel(ax, title)
        return
    rows = arms if metric is None else arms[arms["metric"].astype(str) == metric]
    means = rows["mean"].to_numpy(np.float64)
    low = rows["ci_low"].to_numpy(np.float64) if "ci_low" in rows.columns else means
    high = rows["ci_high"].to_numpy(np.float64) if "ci_high" in rows.columns else means
    x = np.arange(len(rows))
    # Error bars are distances from the mean; NaN bounds draw none.
    yerr = np.nan_to_num(np.vstack([means - low, high - means]), nan=0.0).clip(min=0.0)
    for i in x:
        ax.errorbar([i], [means[i]], yerr=yerr[:, [i]], fmt="o", capsize=6, color=f"C{i % 10}")
    ax.set_xticks(x, [str(a) for a in rows["arm"]])
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_title(title + (" (mean, CI)" if "ci_low" in rows.columns else ""))
    ax.margins(y=0.2)


def _ab_metrics(arms: pd.DataFrame | None) -> list[str | None]:
    if arms is None:
        return [None]
    if "metric" not in arms.columns:
        return [None]
    return list(dict.fromkeys(arms["metric"].astype(str)))[:MAX_AB_METRICS]


def _main_figure(systems, popularity, cold, arms, colors) -> Figure:
    fig, axes = _figure(12, 8.5, 2, 2)
    _popularity_panel(axes[0, 0], popularity)
    metric = _headline_metric(systems)
    if metric is None:
        _missing_panel(axes[0, 1], "accuracy by system")
    else:
        _bars_by_system(axes[0, 1], systems[metric], colors, f"{metric} by system", metric)
    _cold_panel(axes[1, 0], cold, colors)
    _ab_panel(axes[1, 1], arms, _ab_metrics(arms)[0])
    return fig


def _trends_figure(trends: pd.DataFrame | None, colors: dict[str, str]) -> Figure | None:
    if trends is None or trends.empty or not {"week", "system"} <= set(trends.columns):
        return None
    metrics = [m for m in TREND_METRICS if m in trends.columns and trends[m].notna().any()]
    if not metrics:
        return None
    frame = trends.assign(week=trends["week"].astype(str), system=trends["system"].astype(str))
    weeks = sorted(frame["week"].unique())
    position = {w: i for i, w in enumerate(weeks)}
    fig, axes = _figure(5.5 * len(metrics), 3.8, 1, len(metrics))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for system, rows in frame.groupby("system", sort=False):
            rows = rows.dropna(subset=[metric]).sort_values("week")
            ax.plot(rows["week"].map(position), rows[metric], marker="o", label=system,
                    color=colors.get(system))
        ax.set_xticks(range(len(weeks)), weeks)
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlim(-0.5, len(weeks) - 0.5)
        ax.set_title(f"{metric} by week")
        ax.set_ylabel(metric)
    axes[0, -1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _genre_mix_figure(genre_mix: pd.DataFrame | None) -> Figure | None:
    needed = {"user_id", "genre", "history_share", "playlist_share"}
    if genre_mix is None or genre_mix.empty or not needed <= set(genre_mix.columns):
        return None
    users = sorted(genre_mix["user_id"].unique())[:MAX_SAMPLE_USERS]
    fig, axes = _figure(4.2 * len(users), 3.8, 1, len(users))
    for ax, user in zip(axes[0], users, strict=True):
        rows = genre_mix[genre_mix["user_id"] == user].sort_values(["history_share", "genre"], ascending=[False, True])
        x = np.arange(len(rows))
        ax.bar(x - 0.2, rows["history_share"].fillna(0.0), width=0.4, label="history")
        ax.bar(x + 0.2, rows["playlist_share"].fillna(0.0), width=0.4, label="playlist")
        ax.set_xticks(x, [str(g) for g in rows["genre"]])
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_title(f"user {user}")
        ax.set_ylabel("share")
    axes[0, 0].legend(fontsize="small")
    return fig


def _ab_figure(arms: pd.DataFrame | None) -> Figure | None:
    if arms is None:
        return None
    metrics = _ab_metrics(arms)
    fig, axes = _figure(4.5 * len(metrics), 3.6, 1, len(metrics))
    for ax, metric in zip(axes[0], metrics, strict=True):
        _ab_panel(ax, arms, metric)
    return fig


# ---------------------------------------------------------------- html


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    """A cell's text: thousands separators for counts, 4 decimals for rates, a dash for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _missing() -> str:
    return f'<p class="missing">{MISSING}</p>'


def _is_accuracy(column) -> bool:
    return str(column).startswith(ACCURACY_PREFIXES)


def _best_cells(frame: pd.DataFrame) -> set[tuple[int, str]]:
    """(row position, column) of each accuracy column's maximum (all ties)."""
    best = set()
    for column in frame.columns:
        if not _is_accuracy(column):
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
        if np.isfinite(values).any():
            top = np.nanmax(values)
            best |= {(int(i), column) for i in np.flatnonzero(np.isclose(values, top, rtol=1e-9, atol=0.0))}
    return best


def _table(frame: pd.DataFrame, index_label: str | None, best: set[tuple[int, str]] = frozenset(),
           row_class_column: str | None = None) -> str:
    """An HTML table of ``frame`` (the index becomes the first column when ``index_label`` is given)."""
    head = [f'<th class="label">{_esc(index_label)}</th>'] if index_label is not None else []
    head += [f"<th>{_esc(c)}</th>" for c in frame.columns]
    body = []
    for i, (index, row) in enumerate(zip(frame.index, frame.itertuples(index=False), strict=True)):
        cells = [f'<td class="label">{_esc(index)}</td>'] if index_label is not None else []
        for column, value in zip(frame.columns, row, strict=True):
            classes = []
            if (i, column) in best:
                classes.append("best")
            if isinstance(value, str):
                classes.append("label")
            if column == row_class_column:
                classes.append("status")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{_esc(_fmt(value))}</td>")
        row_class = f' class="{_esc(getattr(row, row_class_column, ""))}"' if row_class_column else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _indexed(frame: pd.DataFrame | None, key: str) -> pd.DataFrame | None:
    """``frame`` indexed by ``key`` (if it is a column) with string labels; None when absent or empty."""
    if frame is None or frame.empty:
        return None
    frame = frame.set_index(key) if key in frame.columns else frame.copy()
    frame.index = frame.index.astype(str)
    return frame


def _headline(systems: pd.DataFrame | None, checks: pd.DataFrame | None, ab: Mapping | None) -> str:
    lines = []
    metric = _headline_metric(systems)
    if metric is not None and PIPELINE in systems.index and pd.notna(systems.loc[PIPELINE, metric]):
        ours = float(systems.loc[PIPELINE, metric])
        others = systems.drop(index=PIPELINE)[metric].dropna()
        text = f"{PIPELINE} {metric} {ours:.4f}"
        if not others.empty:
            rival, theirs = str(others.idxmax()), float(others.max())
            lift = f" ({(ours / theirs - 1):+.0%})" if theirs > 0 else ""
            text += f"; best other system {rival} {theirs:.4f}{lift}"
        lines.append(text)
    if checks is not None and not checks.empty and "status" in checks.columns:
        counts = checks["status"].value_counts()
        lines.append("checks: " + ", ".join(f"{int(counts.get(s, 0))} {s.lower()}" for s in ("PASS", "WARN", "ERROR")))
    if ab and ab.get("verdict"):
        lines.append(f"A/B: {ab['verdict']}")
    return "".join(f'<p class="headline">{_esc(line)}</p>' for line in lines)


def _ab_section(ab: Mapping | None, arms: pd.DataFrame | None) -> str:
    if not ab:
        return _missing()
    parts = []
    if ab.get("verdict"):
        parts.append(f'<p class="verdict">{_esc(ab["verdict"])}</p>')
    parts.append(_table(arms, None) if arms is not None else _missing())
    extras = {k: v for k, v in ab.items() if k not in ("arms", "verdict")}
    for key, value in extras.items():
        if isinstance(value, pd.DataFrame):
            parts.append(f"<h3>{_esc(key)}</h3>{_table(value, None)}")
    scalars = [(k, v) for k, v in extras.items() if not isinstance(v, pd.DataFrame | Mapping | list | np.ndarray)]
    if scalars:
        rows = "".join(f'<tr><td class="label">{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>' for k, v in scalars)
        parts.append(f"<table><tbody>{rows}</tbody></table>")
    figure = _ab_figure(arms)
    if figure is not None:
        parts.append(_img(write_png(figure), "A/B arms with confidence intervals"))
    return "".join(parts)


def _ns(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def north_star_frames(summary: Mapping) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The north star's two tables from ``north_star.north_star_summary``: systems × saves/user (with CI),
    positive plays, early-skip share, cold-slot share, cold saves, popularity TPR max/min and cold/median;
    then per listener model the decomposition. None when it was not measured (no simulator truth)."""
    found = summary.get("north_star") or {}
    if not found.get("measured"):
        return None
    systems = found["systems"]
    names = [s for s in NORTH_STAR_SYSTEMS if s in systems] + [s for s in systems if s not in NORTH_STAR_SYSTEMS]
    rows = []
    for name in names:
        s = systems[name]
        low, high = s.get("saves_per_user_ci") or (None, None)
        rows.append({"system": name, "saves/user (95 % CI)": f"{_ns(s.get('saves_per_user'))} "
                     f"({_ns(low)}–{_ns(high)})", "positive plays/user": _ns(s.get("positives_per_user"), 2),
                     "early-skip share": _ns(s.get("early_skip_share")), "cold-slot share": _ns(s.get("cold_slot_share")),
                     "cold saves/user": _ns(s.get("cold_saves_per_user")),
                     "pop. TPR max/min": _ns(s.get("max_min_tpr_ratio"), 2),
                     "cold TPR / median": _ns(s.get("cold_tpr_over_median"), 2)})
    table = pd.DataFrame(rows).set_index("system")
    listeners = {"base": {**summary, "systems": {k: v.get("saves_per_user") for k, v in systems.items()}},
                 **found.get("robustness", {})}
    rows = []
    for name, r in listeners.items():
        rows.append({"listener model": name, "pipeline saves/user": _ns(r.get("saves_per_user")),
                     "ALS": _ns(r["systems"].get("als")), "catalog oracle": _ns(r.get("oracle_saves_per_user")),
                     "candidate oracle": _ns(r.get("candidate_oracle_saves_per_user")),
                     "retrieval eff.": _ns(r.get("retrieval_efficiency")), "ranking eff.": _ns(r.get("ranking_efficiency")),
                     "re-rank eff.": _ns(r.get("rerank_efficiency")), "pipeline / oracle": _ns(r.get("oracle_efficiency"))})
    return table, pd.DataFrame(rows).set_index("listener model")


def north_star_markdown(summary: Mapping) -> str:
    """The north star as markdown (the offline evaluation's metadata, ``dw evaluate``): both tables, or why
    there are none."""
    frames = north_star_frames(summary)
    found = summary.get("north_star") or {}
    if frames is None:
        return f"north star not measured: {found.get('reason', 'no simulator truth')}"
    head = (f"north star: simulated saves of week {found['listened_week']}'s listeners, {found['users']:,} users "
            f"drawn by seeded hash, listener seeds {found['seeds']}")
    from dw_assets.evaluation.north_star import north_star_targets

    targets = north_star_targets(summary)
    return "\n\n".join([head, frames[0].to_markdown(), "decomposition (pipeline / catalog oracle = retrieval × "
                         "ranking × re-rank efficiency) under the base and perturbed listener models:",
                         frames[1].to_markdown(), "north-star targets (the issue's, judged on `small`):",
                         targets.to_markdown(index=False, floatfmt=".3f")])


def _north_star_section(summary: Mapping) -> str:
    frames = north_star_frames(summary)
    if frames is None:
        reason = (summary.get("north_star") or {}).get("reason", "no simulator truth")
        return f'<p class="missing">not measured: {_esc(reason)}</p>'
    found = summary["north_star"]
    return (f"<p>Tracks the world's hidden listeners save from each system's 30 (week {_esc(found['listened_week'])}, "
            f"{found['users']:,} users, listener seeds {_esc(found['seeds'])}); oracles built from the hidden truth "
            "with the same hygiene.</p>" + _table(frames[0], "system")
            + "<h3>Decomposition and robustness</h3>" + _table(frames[1], "listener model"))


def render_report(week: str, systems: pd.DataFrame, segments: pd.DataFrame | None,
                  trends: pd.DataFrame | None, popularity: dict[str, np.ndarray],
                  genre_mix: pd.DataFrame | None, cold_exposure: pd.DataFrame | None,
                  ab: dict | None, checks: pd.DataFrame | None,
                  north_star: Mapping | None = None) -> tuple[str, bytes]:
    """(html, main_plot_png) for one week's offline evaluation.

    systems: one row per system (index, or a ``system`` column), metric columns such as
        ``ndcg@30``, ``recall@30``, ``coverage``, ``cold_share`` (any subset).
    segments: the pipeline's metrics per user segment (index or ``segment`` column) plus ``users``.
    trends: ``week``, ``system`` and metric columns for earlier weeks (``ndcg@30``/``recall@30`` plotted).
    popularity: {"recommended": float[n], "history": float[m]} popularity percentiles in 0..1.
    genre_mix: ``user_id``, ``genre``, ``history_share``, ``playlist_share`` for a few sample users.
    cold_exposure: ``system``, ``cold_share``, ``cold_hit_rate``.
    ab: {"arms": DataFrame or list of dicts (arm, users, metric, mean, ci_low, ci_high),
        "verdict": str, other scalar/DataFrame entries shown as given}.
    checks: :func:`dw_assets.evaluation.monitoring.summarize` output.
    north_star: ``north_star.north_star_summary`` (the simulated saves; "not measured" when it says so);
        None leaves the section out.
    The main plot (2x2: popularity, headline accuracy by system, cold exposure, A/B) summarises
    the week for the asset page. Every text is HTML-escaped; any input may be None.
    """
    systems = _indexed(systems, "system")
    segments = _indexed(segments, "segment")
    popularity = popularity or {}
    arms = _arms_frame(ab)
    cold = _cold_frame(cold_exposure, systems)
    names = list(systems.index) if systems is not None else []
    if trends is not None and "system" in trends.columns:
        names += [s for s in dict.fromkeys(trends["system"].astype(str)) if s not in names]
    colors = _system_colors(names)

    main_png = write_png(_main_figure(systems, popularity, cold, arms, colors))
    trends_figure = _trends_figure(trends, colors)
    genre_figure = _genre_mix_figure(genre_mix)
    checks_frame = checks if checks is not None and not checks.empty else None

    sections = [
        ("Summary", _headline(systems, checks_frame, ab) + _img(main_png, f"week {week} summary")),
        ("Checks", _table(checks_frame, None, row_class_column="status" if "status" in checks_frame.columns else None)
         if checks_frame is not None else _missing()),
        *([("North star: simulated saves", _north_star_section(north_star))] if north_star is not None else []),
        ("Systems (exposure monitor)", f'<p>{_esc(EXPOSURE_NOTE)} Best value of each accuracy column highlighted.</p>'
         + _table(systems, "system", _best_cells(systems)) if systems is not None else _missing()),
        ("Segments (pipeline)", _table(segments, "segment") if segments is not None else _missing()),
        ("Trends", _img(write_png(trends_figure), "metrics by week") if trends_figure is not None else _missing()),
        ("Genre mix of sample users",
         _img(write_png(genre_figure), "genre mix: history vs playlist") if genre_figure is not None else _missing()),
        ("Cold-start exposure", _table(cold, "system") if cold is not None else _missing()),
        ("A/B test", _ab_section(ab, arms)),
    ]
    title = f"Weekly discovery playlists: offline evaluation, week {week}"
    body = "".join(f"<section><h2>{_esc(name)}</h2>{content}</section>" for name, content in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>{body}</body></html>")
    return page, main_png
