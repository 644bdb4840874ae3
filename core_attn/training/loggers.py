"""Lightning's CSV and TensorBoard loggers with one folder per run directory, kept across resumes.

Lightning's own loggers start a new ``<name>/version_<N>`` folder at every start, so a run resumed after a
kill (``ckpt_path=auto``) has its metrics split over ``version_0``, ``version_1``, ...; and its CSV writer
deletes a ``metrics.csv`` it finds. These write to ``<save_dir>/<name>/`` whatever the number of starts:
the CSV logger appends to the run's ``metrics.csv`` (widening its header when new metrics appear) and the
TensorBoard logger adds an event file beside the earlier ones. Rows logged after the checkpoint a run resumed
from and before the kill stay in the file, so such steps appear twice (both attempts).
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch import loggers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])  # new keys later rewrite the header, rows kept

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning deletes metrics.csv here


class CSVLogger(loggers.CSVLogger):
    """Lightning's ``CSVLogger`` writing ``<save_dir>/<name>/metrics.csv`` (and ``hparams.yaml``), appended to
    by every start of the run.

    Args:
        save_dir: the run directory.
        name: the folder inside it.
        prefix: put at the beginning of every metric name.
        flush_logs_every_n_steps: how often rows are written to the file.
    """

    def __init__(self, save_dir: str | Path, name: str = "csv", prefix: str = "", flush_logs_every_n_steps: int = 100):
        super().__init__(save_dir, name=name, version=0, prefix=prefix, flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    def log_dir(self) -> str:
        return self.root_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class TensorBoardLogger(loggers.TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` writing its event files to ``<save_dir>/<name>/`` at every start of the
    run (TensorBoard reads all event files of a folder as one run).

    Args:
        save_dir: the run directory.
        name: the folder inside it.
        default_hp_metric: log a placeholder ``hp_metric`` with the hyper-parameters.
        prefix: put at the beginning of every metric name.
    """

    def __init__(self, save_dir: str | Path, name: str = "tensorboard", default_hp_metric: bool = True,
                 prefix: str = ""):
        super().__init__(save_dir, name=name, version=0, default_hp_metric=default_hp_metric, prefix=prefix)

    @property
    def log_dir(self) -> str:
        return self.root_dir
