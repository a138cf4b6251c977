"""The report of a sweep: seed statistics, paired AME-on/off comparisons with Holm's correction, figures,
Markdown and HTML.
"""

from __future__ import annotations

import html
import json
import math
import os
import statistics
import time
from pathlib import Path

from ..runs import read_json
from .index import _csv_text, _write_text, collect_runs
from .spec import ReportSettings, SPEC_RECORD, _format_value


def _sort_key(value):
    if isinstance(value, bool) or value is None:
        return (0, str(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, json.dumps(value, sort_keys=True))


def _norm(value) -> str:
    """A text key under which equal parameter values match (``0`` and ``0.0`` alike)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _label(names: list[str], key: tuple) -> str:
    return ", ".join(f"{n}={_format_value(v) if not isinstance(v, str) else v}" for n, v in zip(names, key)) or "all runs"


def summarize(records: list[dict], settings: ReportSettings = ReportSettings()) -> dict:
    """Grouped statistics over seeds and paired on/off comparisons of done ``records``.

    Groups are the combinations of every parameter that varies among the done runs except
    ``settings.seed`` and ``settings.sweep``; within a group, runs are split by the sweep value.
    Returns ``{"groups": [names], "metrics": [found], "missing_metrics": [...], "summary": rows,
    "paired": rows}``: a summary row holds the group's parameters, the sweep value, ``metric`` and
    :func:`workbench.analysis.seed_summary`'s mean/std/ci_low/ci_high/n; a paired row compares each
    sweep value with ``settings.off_value`` on the seeds both have (:func:`~workbench.analysis.paired_comparison`;
    NaN statistics below two pairs).
    """
    from ..analysis import paired_comparison, seed_summary

    done = [r for r in records if r["status"] == "done"]
    for r in done:
        r.setdefault("parameters", {})
    names = {}
    for r in done:
        names.update(dict.fromkeys(r["parameters"]))
    if len({r["notebook"] for r in done}) > 1:
        names = {"notebook": None, **names}

    def value(r, name):
        return r["notebook"] if name == "notebook" and name not in r["parameters"] else r["parameters"].get(name)

    varying = [n for n in names if len({_norm(value(r, n)) for r in done}) > 1]
    groups = [n for n in varying if n not in (settings.seed, settings.sweep)]
    has_sweep = any(settings.sweep in r["parameters"] for r in done)
    available = {m for r in done for m in r["metrics"]}
    metrics = [m for m in settings.metrics if m in available]
    missing = [m for m in settings.metrics if m not in available]

    def cell_key(group, sweep_value):
        return tuple(map(_norm, group)), _norm(sweep_value)

    cells = {}  # (group key, sweep value) -> records
    for r in done:
        key = (tuple(value(r, n) for n in groups), value(r, settings.sweep) if has_sweep else None)
        cells.setdefault(cell_key(*key), (key, []))[1].append(r)
    ordered = sorted(cells.values(), key=lambda c: ([_sort_key(v) for v in c[0][0]], _sort_key(c[0][1])))

    summary, paired = [], []
    for (group, sweep_value), members in ordered:
        base = {**dict(zip(groups, group)), **({settings.sweep: sweep_value} if has_sweep else {})}
        for metric in metrics:
            values = [(value(r, settings.seed), r["metrics"][metric]) for r in members
                      if _finite(r["metrics"].get(metric))]
            if not values:
                continue
            stats = seed_summary([v for _, v in values], confidence=settings.confidence)
            summary.append({**base, "metric": metric, **stats,
                            "seeds": sorted((s for s, _ in values), key=_sort_key)})
        if not has_sweep or _norm(sweep_value) == _norm(settings.off_value):
            continue
        off = cells.get(cell_key(group, settings.off_value))
        if off is None:
            continue
        off_by_seed = {_norm(value(r, settings.seed)): r for r in off[1]}
        for metric in metrics:
            pairs = []
            for r in members:
                partner = off_by_seed.get(_norm(value(r, settings.seed)))
                if partner and _finite(r["metrics"].get(metric)) and _finite(partner["metrics"].get(metric)):
                    pairs.append((value(r, settings.seed), r["metrics"][metric], partner["metrics"][metric]))
            if not pairs:
                continue
            pairs.sort(key=lambda p: _sort_key(p[0]))
            on_values, off_values = [p[1] for p in pairs], [p[2] for p in pairs]
            if len(pairs) >= 2:
                comparison = paired_comparison(on_values, off_values, confidence=settings.confidence)
            else:
                comparison = {"mean_diff": on_values[0] - off_values[0], "ci_low": math.nan, "ci_high": math.nan,
                              "exceeds_noise": False, "p_value": math.nan, "n": 1}
            paired.append({**base, "off": settings.off_value, "metric": metric,
                           "mean_on": sum(on_values) / len(pairs), "mean_off": sum(off_values) / len(pairs),
                           **comparison, "seeds": [p[0] for p in pairs]})
    from ..analysis import holm_adjust

    for metric in metrics:  # each metric's comparisons are one family: Holm's correction over all of them
        rows = [r for r in paired if r["metric"] == metric]
        counted = sum(1 for r in rows if _finite(r["p_value"]))
        for r, adjusted in zip(rows, holm_adjust([r["p_value"] for r in rows])):
            r.update(p_holm=float(adjusted), comparisons=counted,
                     holds_after_holm=bool(adjusted < 1 - settings.confidence))
    return {"groups": groups, "sweep": settings.sweep if has_sweep else None, "metrics": metrics,
            "missing_metrics": missing, "summary": summary, "paired": paired}


def training_dynamics(output: str | os.PathLike, records: list[dict], groups: list[str],
                      settings: ReportSettings = ReportSettings(), term: str = "ame") -> list[dict]:
    """What the ``on_value`` runs' training logs say about the regulariser, one row per group.

    Reads each done run's ``train.jsonl`` (:func:`workbench.analysis.term_push`): H(M) at the first and last
    logged step (means over the runs) and ``term``'s gradient share on the student, pooled over every
    diagnosed step of the group's runs (median and maximum). Groups whose runs logged no diagnostics are left
    out; ``groups`` are :func:`summarize`'s.
    """
    from ..analysis import term_push
    from ..runs import RunDir

    output = Path(output)
    pooled: dict[tuple, list] = {}
    for r in records:
        parameters = r.get("parameters", {})
        if r["status"] != "done" or _norm(parameters.get(settings.sweep)) != _norm(settings.on_value):
            continue
        try:
            log = RunDir.find(output / r["run_id"], needs="log").log
        except FileNotFoundError:
            continue
        key = tuple(_norm(parameters.get(g, r.get(g))) for g in groups)
        pooled.setdefault(key, []).append(term_push(log, term))
    rows = []
    for key in sorted(pooled, key=lambda k: [_sort_key(json.loads(v)) for v in k]):
        pushes = pooled[key]
        shares = [s for p in pushes for s in p["share"]]
        if not shares:
            continue
        first = [p["entropy_first"] for p in pushes if _finite(p["entropy_first"])]
        last = [p["entropy_last"] for p in pushes if _finite(p["entropy_last"])]
        rows.append({**{g: json.loads(v) for g, v in zip(groups, key)}, settings.sweep: settings.on_value,
                     "runs": len(pushes), "entropy_first": sum(first) / len(first) if first else math.nan,
                     "entropy_last": sum(last) / len(last) if last else math.nan,
                     f"{term}_share_median": float(statistics.median(shares)),
                     f"{term}_share_max": float(max(shares))})
    return rows


def report_figures(result: dict, settings: ReportSettings = ReportSettings()) -> list:
    """Plotly figures of :func:`summarize`'s result, per metric: the sweep curve (mean ± std over seeds),
    on vs off bars per group and the paired difference with its confidence interval."""
    import plotly.graph_objects as go

    figures = []
    groups, sweep = result["groups"], result["sweep"]
    pct = int(round(100 * settings.confidence))
    for metric in result["metrics"]:
        rows = [r for r in result["summary"] if r["metric"] == metric]
        by_group = {}
        for r in rows:
            by_group.setdefault(tuple(_norm(r[g]) for g in groups), []).append(r)
        sweep_values = {_norm(r[sweep]) for r in rows} if sweep else set()
        if sweep and len(sweep_values) > 1:
            fig = go.Figure()
            for members in by_group.values():
                members = sorted(members, key=lambda r: _sort_key(r[sweep]))
                fig.add_trace(go.Scatter(
                    x=[_format_value(r[sweep]) for r in members], y=[r["mean"] for r in members],
                    error_y=dict(type="data", array=[0 if math.isnan(r["std"]) else r["std"] for r in members]),
                    mode="lines+markers", name=_label(groups, tuple(members[0][g] for g in groups)),
                    customdata=[[r["n"], r["ci_low"], r["ci_high"]] for r in members],
                    hovertemplate=(f"{sweep}=%{{x}}<br>{metric} %{{y:.4f}}<br>n=%{{customdata[0]}}<br>"
                                   f"{pct}% CI [%{{customdata[1]:.4f}}, %{{customdata[2]:.4f}}]<extra></extra>")))
            fig.update_layout(title=f"{metric} against {sweep} (mean ± std over seeds)",
                              xaxis=dict(title=sweep, type="category"), yaxis_title=metric, template="plotly_white")
            figures.append(fig)
        paired = [r for r in result["paired"] if r["metric"] == metric]
        if not paired:
            continue
        on_values = {_norm(r[sweep]): r[sweep] for r in paired}
        on = settings.on_value if _norm(settings.on_value) in on_values else max(on_values.values(), key=_sort_key)
        chosen = [r for r in paired if _norm(r[sweep]) == _norm(on)]
        labels = [_label(groups, tuple(r[g] for g in groups)) for r in chosen]
        stats = {(tuple(_norm(r[g]) for g in groups), _norm(r[sweep])): r for r in rows}

        def std_of(r, sweep_value):
            s = stats.get((tuple(_norm(r[g]) for g in groups), _norm(sweep_value)))
            return 0 if s is None or math.isnan(s["std"]) else s["std"]

        fig = go.Figure([
            go.Bar(name=f"off ({sweep}={_format_value(settings.off_value)})", x=labels, y=[r["mean_off"] for r in chosen],
                   error_y=dict(type="data", array=[std_of(r, settings.off_value) for r in chosen])),
            go.Bar(name=f"on ({sweep}={_format_value(on)})", x=labels, y=[r["mean_on"] for r in chosen],
                   error_y=dict(type="data", array=[std_of(r, r[sweep]) for r in chosen]),
                   customdata=[[r["mean_diff"], r["ci_low"], r["ci_high"], r["n"]] for r in chosen],
                   hovertemplate=("%{x}<br>on %{y:.4f}<br>on − off %{customdata[0]:+.4f} "
                                  f"[{pct}% CI %{{customdata[1]:+.4f}}, %{{customdata[2]:+.4f}}], "
                                  "n=%{customdata[3]}<extra></extra>"))])
        fig.update_layout(barmode="group", title=f"{metric}: {sweep} on vs off (mean ± std over seeds)",
                          yaxis_title=metric, template="plotly_white")
        figures.append(fig)
        fig = go.Figure()
        by_group = {}
        for r in paired:
            by_group.setdefault(tuple(_norm(r[g]) for g in groups), []).append(r)
        for members in by_group.values():
            members = sorted(members, key=lambda r: _sort_key(r[sweep]))
            fig.add_trace(go.Scatter(
                x=[_format_value(r[sweep]) for r in members], y=[r["mean_diff"] for r in members],
                error_y=dict(type="data", symmetric=False,
                             array=[0 if math.isnan(r["ci_high"]) else r["ci_high"] - r["mean_diff"] for r in members],
                             arrayminus=[0 if math.isnan(r["ci_low"]) else r["mean_diff"] - r["ci_low"]
                                         for r in members]),
                mode="markers+lines", name=_label(groups, tuple(members[0][g] for g in groups))))
        fig.add_hline(y=0, line_dash="dot", line_color="grey")
        fig.update_layout(title=f"{metric}: paired difference on − off over shared seeds ({pct}% bootstrap CI)",
                          xaxis=dict(title=sweep, type="category"), yaxis_title=f"Δ {metric}", template="plotly_white")
        figures.append(fig)
    return figures


def _html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value, signed: bool = False) -> str:
    if not _finite(value):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def build_report(output: str | os.PathLike, settings: ReportSettings | None = None,
                 report_dir: str | os.PathLike | None = None) -> dict:
    """Summarise the done runs of ``output`` into ``report_dir`` (default ``<output>/report``).

    Writes ``summary.csv`` (mean, std and bootstrap CI over seeds per group, sweep value and metric),
    ``paired.csv`` (each sweep value against ``settings.off_value`` on shared seeds), ``report.html``, a
    static page with plotly.js inlined (opens offline), and ``report.md`` (:func:`markdown_report`). ``settings`` default to the ``report:`` block of
    the spec recorded in ``<output>/pipeline.json``. Returns the paths and :func:`summarize`'s result.
    """
    import plotly.io as pio

    output = Path(output)
    if not output.is_dir():
        raise FileNotFoundError(f"pipeline output directory {output} not found")
    record = {}
    if (output / SPEC_RECORD).is_file():
        record = read_json(output / SPEC_RECORD)
    if settings is None:
        settings = ReportSettings.from_dict(record.get("report"), str(output / SPEC_RECORD))
    report_dir = Path(report_dir) if report_dir else output / "report"
    records = collect_runs(output)
    result = summarize(records, settings)
    groups = result["groups"] + ([result["sweep"]] if result["sweep"] else [])
    stats = ["mean", "std", "ci_low", "ci_high", "n", "seeds"]
    summary_csv = _write_text(report_dir / "summary.csv",
                              _csv_text(groups + ["metric"] + stats, result["summary"]))
    paired_cols = ["off", "metric", "n", "mean_on", "mean_off", "mean_diff", "ci_low", "ci_high", "p_value",
                   "exceeds_noise", "p_holm", "comparisons", "holds_after_holm", "seeds"]
    paired_csv = _write_text(report_dir / "paired.csv", _csv_text(groups + paired_cols, result["paired"]))
    dynamics = training_dynamics(output, records, result["groups"], settings) if result["sweep"] else []
    dynamics_csv = (_write_text(report_dir / "dynamics.csv", _csv_text(list(dynamics[0]), dynamics))
                    if dynamics else None)

    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    versions = sorted({str(r["code_version"]) for r in records if r["status"] == "done"})
    figures = report_figures(result, settings)
    pct = int(round(100 * settings.confidence))
    parts = [f"<h1>{html.escape(record.get('name', output.name))}: pipeline report</h1>",
             f"<p>{html.escape(record.get('description', ''))}</p>",
             f"<p>Output directory <code>{html.escape(str(output))}</code>; generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Runs: "
             + html.escape(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + ".</p>",
             f"<p>Statistics over <code>{html.escape(settings.seed)}</code>: mean ± sample std, {pct}% "
             "percentile bootstrap CI of the mean; paired comparisons use only seeds present in both arms "
             "(bootstrap over seeds, paired t-test p-value, and that p-value Holm-adjusted over all of the "
             "report's comparisons of the metric).</p>"]
    if len(versions) > 1:
        parts.append(f"<p class='warn'>Done runs come from {len(versions)} code versions: "
                     f"{html.escape(', '.join(versions))}.</p>")
    if result["missing_metrics"]:
        parts.append(f"<p class='warn'>Metrics not found in any done run: "
                     f"{html.escape(', '.join(result['missing_metrics']))}.</p>")
    failed = [r for r in records if r["status"] != "done"]
    for i, fig in enumerate(figures):
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=i == 0, default_width="100%",
                                 default_height="480px"))
    if result["paired"]:
        parts.append("<h2>Paired comparisons (on − off)</h2>")
        parts.append(_html_table(
            result["groups"] + [result["sweep"], "metric", "n", "on", "off", "on − off", f"{pct}% CI", "p", "beyond noise",
                                "p (Holm)", "holds after Holm"],
            [[r[g] for g in result["groups"]] + [r[result["sweep"]], r["metric"], r["n"], _num(r["mean_on"]),
              _num(r["mean_off"]), _num(r["mean_diff"], True), f"[{_num(r['ci_low'], True)}, {_num(r['ci_high'], True)}]",
              _num(r["p_value"]), "yes" if r["exceeds_noise"] else "no",
              f"{_num(r['p_holm'])} of {r['comparisons']}", "yes" if r["holds_after_holm"] else "no"]
             for r in result["paired"]]))
    if dynamics:
        parts.append(f"<h2>Training dynamics of the {html.escape(str(result['sweep']))} = "
                     f"{html.escape(str(settings.on_value))} runs</h2>")
        parts.append(_html_table(list(dynamics[0]), [[_num(v) if isinstance(v, float) else v for v in r.values()]
                                                     for r in dynamics]))
    if result["summary"]:
        parts.append("<h2>Summary over seeds</h2>")
        parts.append(_html_table(
            groups + ["metric", "n", "mean ± std", f"{pct}% CI"],
            [[r[g] for g in groups] + [r["metric"], r["n"], f"{_num(r['mean'])} ± {_num(r['std'])}",
                                       f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"] for r in result["summary"]]))
    if failed:
        parts.append("<h2>Runs not done</h2>")
        parts.append(_html_table(["run", "status", "error"],
                                 [[r["run_id"], r["status"], (r["error"] or "")[:300]] for r in failed]))
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.9em;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}.warn{color:#a40}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(record.get('name', output.name))}"
            f" report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    report_html = _write_text(report_dir / "report.html", page)
    report_md = _write_text(report_dir / "report.md", markdown_report(result, settings, dynamics))
    return {"summary_csv": summary_csv, "paired_csv": paired_csv, "dynamics_csv": dynamics_csv, "html": report_html,
            "markdown": report_md, "result": result, "counts": counts, "dynamics": dynamics}


def markdown_report(result: dict, settings: ReportSettings = ReportSettings(), dynamics: list[dict] = ()) -> str:
    """One Markdown table per metric: a row per group, ``mean ± std`` over seeds per sweep value, and the
    paired difference ``on_value − off_value`` with its CI, the number of seed pairs n and the Holm-adjusted
    p-value over all the metric's comparisons (what README tables quote); then, when given,
    :func:`training_dynamics`' rows."""
    groups, sweep = result["groups"], result["sweep"]
    pct = int(round(100 * settings.confidence))
    sections = []
    for metric in result["metrics"]:
        rows = [r for r in result["summary"] if r["metric"] == metric]
        values = sorted({_norm(r[sweep]) for r in rows}, key=lambda v: _sort_key(json.loads(v))) if sweep else []
        cells: dict[tuple, dict] = {}
        for r in rows:
            key = tuple(_norm(r[g]) for g in groups)
            entry = cells.setdefault(key, {"group": [r[g] for g in groups]})
            entry[_norm(r[sweep]) if sweep else None] = f"{_num(r['mean'])} ± {_num(r['std'])}"
        diffs = {tuple(_norm(r[g]) for g in groups): r for r in result["paired"]
                 if r["metric"] == metric and sweep and _norm(r[sweep]) == _norm(settings.on_value)}
        header = list(groups) + ([f"{sweep}={json.loads(v)}" for v in values] if sweep else ["mean ± std"])
        with_diff = bool(diffs)
        if with_diff:
            family = next(iter(diffs.values()))["comparisons"]
            header += [f"{settings.on_value} − {settings.off_value} [{pct}% CI]", "n",
                       f"p, Holm over {family}"]
        lines = [f"**{metric}** (mean ± std over {settings.seed})", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(groups) + "---:|" * (len(header) - len(groups))]
        for key in sorted(cells, key=lambda k: [_sort_key(json.loads(v)) for v in k]):
            entry = cells[key]
            row = [str(v) for v in entry["group"]] + [entry.get(v, "–") for v in (values or [None])]
            if with_diff:
                d = diffs.get(key)
                row += ([f"{_num(d['mean_diff'], True)} [{_num(d['ci_low'], True)}, {_num(d['ci_high'], True)}]",
                         str(d["n"]), _num(d["p_holm"])] if d else ["–", "–", "–"])
            lines.append("| " + " | ".join(row) + " |")
        sections.append("\n".join(lines))
    if dynamics:
        header = list(dynamics[0])
        lines = [f"**Training dynamics** of the {result['sweep']} = {settings.on_value} runs: H(M) at the first and "
                 "last logged step (mean over runs); AME's gradient on the student divided by the other terms' "
                 "(summed norms), median and maximum over every diagnosed step of the runs", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(groups) + "---:|" * (len(header) - len(groups))]
        for r in dynamics:
            lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
