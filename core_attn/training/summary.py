"""A Hydra callback that tabulates a sweep: ``summary.csv`` and ``summary.md`` in the sweep directory.

Enabled in ``conf/hydra/default.yaml``; after every job (so a sweep that stops early still leaves a
table) and at the end of the sweep it reads each job's ``metrics.json`` and writes one row per job:
variant, overrides, status, test metric, samples/s, peak memory, parameter count.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from core_attn.training.atomic import write_json_atomic, write_text_atomic
from core_attn.training.train import variant_name

log = logging.getLogger(__name__)

COLUMNS = ("job", "variant", "overrides", "status", "metric_name", "metric", "train_samples_per_s",
           "test_samples_per_s", "peak_memory_mb", "params", "fit_seconds")


def _job_sort_key(path: Path) -> tuple:
    rel = path.parent.name
    return (0, int(rel), "") if rel.isdigit() else (1, 0, rel)


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per ``metrics.json`` found below ``sweep_dir``, in job order."""
    rows = []
    for path in sorted(Path(sweep_dir).rglob("metrics.json"), key=_job_sort_key):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            m = {"status": f"unreadable metrics.json: {e}"}
        row = {c: m.get(c) for c in COLUMNS}
        row["job"] = str(path.parent.relative_to(sweep_dir))
        row["overrides"] = " ".join(m.get("overrides") or [])
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``; return the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect_rows(sweep_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep_dir / "summary.csv", buf.getvalue())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]).replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    write_text_atomic(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: keep ``summary.csv``/``summary.md`` of the sweep directory up to date.

    A job that raised gets a ``metrics.json`` with ``status: failed: <error>`` so it shows in the table.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.FAILED:
            try:
                job_return.return_value  # re-raises the job's exception
            except Exception as err:  # noqa: BLE001 - recorded, Hydra re-raises it after the callbacks
                write_json_atomic(Path(config.hydra.runtime.output_dir) / "metrics.json", {
                    "status": f"failed: {type(err).__name__}: {err}"[:500],
                    "variant": variant_name(config.get("attention")),
                    "overrides": list(job_return.overrides or []),
                })
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_summary(sweep_dir)
            log.info("sweep summary of %d jobs: %s", len(rows), sweep_dir / "summary.md")
