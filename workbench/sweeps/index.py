"""The index of a pipeline output: one row per run directory (status, parameters, metrics) as CSV."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

from ..config import flatten
from ..runs import RunDir, read_json
from .spec import INDEX_FILE, META_COLUMNS


def _write_text(path: Path, text: str) -> Path:
    """Atomic write with a temporary name unique to this process and thread (several writers may race)."""
    import threading

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{platform.node()}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def collect_runs(output: str | os.PathLike) -> list[dict]:
    """One record per run directory of ``output`` (those with a ``status.json``), ordered by grid index:
    ``{"run_id", …meta, "parameters": {…}, "metrics": {flattened metrics.json of a done run}}``."""
    records = []
    for status_file in Path(output).glob(f"*/{RunDir.FILES['status']}"):
        run_dir = status_file.parent
        if run_dir.name.startswith("."):
            continue
        try:
            status = read_json(status_file)
        except ValueError as err:
            status = {"status": "unreadable", "error": f"{RunDir.FILES['status']}: {err}"}
        metrics = {}
        if status.get("status") == "done":
            try:
                metrics = flatten(read_json(RunDir(run_dir).metrics))
            except (OSError, ValueError) as err:
                status = {**status, "status": "unreadable", "error": f"{RunDir.FILES['metrics']}: {err}"}
        record = {key: status.get(key) for key in META_COLUMNS}
        record["run_id"] = run_dir.name
        record["parameters"] = status.get("parameters") or {}
        record["metrics"] = metrics
        records.append(record)
    key = (lambda r: (r["grid_index"] if isinstance(r["grid_index"], int) else math.inf, r["run_id"]))
    return sorted(records, key=key)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(float(value))  # numpy's float64 is a float whose repr is "np.float64(...)"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _csv_text(header: list[str], rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(h)) for h in header])
    return buffer.getvalue()


def index_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Flat rows of :func:`collect_runs` records: meta columns, parameters, then ``metrics/<key>``."""
    params, metrics = {}, {}
    for record in records:
        params.update(dict.fromkeys(record["parameters"]))
        metrics.update(dict.fromkeys(record["metrics"]))
    header = list(META_COLUMNS) + list(params) + [f"metrics/{m}" for m in metrics]
    rows = [{**{k: r[k] for k in META_COLUMNS}, **r["parameters"],
             **{f"metrics/{k}": v for k, v in r["metrics"].items()}} for r in records]
    return header, rows


def write_index(output: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Rebuild the results index (``<output>/index.csv``) from the run directories, atomically: one row per
    run (meta columns, parameters, flattened metrics as ``metrics/<key>``)."""
    header, rows = index_rows(collect_runs(output))
    return _write_text(Path(path) if path else Path(output) / INDEX_FILE, _csv_text(header, rows))
