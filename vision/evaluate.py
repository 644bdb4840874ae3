"""Evaluate a vision checkpoint: ``python -m vision.evaluate ckpt_path=... [data.root=<folder>] [split=...]``.

The model is rebuilt from the checkpoint; the data is the config stored in it, with any ``data.<key>=...``
of the command line replacing stored keys (``data=<option>`` picks another config instead). Which images:

- ``split=auto`` (default): the test split of the data the checkpoint was trained on; for another image
  folder, its ``test/`` folder when it has one, else every image in it (a folder the model has never seen).
- ``split=all``: every image of the folder (``root/<class>/*``, or all of ``root/{train,val,test}/<class>/*``).
- ``split=train|val|test``: the folder ``root/<split>/`` when it exists, else that split as the datamodule
  carves it (fixed seed, as in training; needs exactly the checkpoint's classes).

Class folders are matched by name to the checkpoint's classes (a folder may hold fewer; an unknown one is
an error naming it). Beside ``metrics.json`` go ``confusion_matrix.csv`` (rows: true class, columns:
predicted class, counts) and ``confusion_matrix.png`` (config ``conf/vision_eval.yaml``).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from core_attn.training import evaluate
from core_attn.training.atomic import write_bytes_atomic, write_text_atomic
from core_attn.training.callbacks import CLASS_NAMES_KEY
from core_attn.training.cli import CONF_DIR, run
from core_attn.training.runtime import load_checkpoint, run_config
from core_attn.training.train import eval_data_config
from core_attn.validation import check_choice
from vision.data import ImageFolderDataModule, ImageFolderDataset, image_mode, labelled_images, readable_images

SPLIT_CHOICES = ("auto", "all", "train", "val", "test")


# -- the confusion matrix --------------------------------------------------------------------------
def confusion_csv(counts: torch.Tensor, names: list[str]) -> str:
    """``true/predicted,<class>,...`` then one row of counts per true class (``pandas.read_csv(path, index_col=0)``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true/predicted", *names])
    for name, row in zip(names, counts.tolist()):
        writer.writerow([name, *row])
    return buf.getvalue()


def confusion_png(counts: torch.Tensor, names: list[str]) -> bytes:
    """The confusion matrix as a PNG: counts in the cells (up to 30 classes), class names on both axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, total = len(names), int(counts.sum())
    side = min(40.0, max(4.0, 0.5 * n + 2.5))
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(counts.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = float(counts.diag().sum()) / total if total else 0.0
    ax.set_title(f"{total} images, accuracy {accuracy:.1%}")
    if n <= 30:
        high = float(counts.max()) / 2
        for t in range(n):
            for p in range(n):
                c = int(counts[t, p])
                ax.text(p, t, str(c), ha="center", va="center", fontsize=8, color="white" if c > high else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


class ConfusionMatrix(pl.Callback):
    """Counts (true class, predicted class) over the test run, from a forward hook on the network, and
    writes ``confusion_matrix.csv`` and ``confusion_matrix.png`` into ``folder``.

    Args:
        folder: where the two files go (the run directory, beside ``metrics.json``).
        class_names: the model's classes in label order (``None``: class numbers).
    """

    def __init__(self, folder: str | Path, class_names: list[str] | None = None):
        self.folder, self.names = Path(folder), class_names
        self.counts: torch.Tensor | None = None
        self._predicted: torch.Tensor | None = None

    def _hook(self, module, args, output) -> None:
        self._predicted = output.argmax(-1).cpu()  # (B,)

    def on_test_start(self, trainer, pl_module) -> None:
        net = getattr(pl_module, "net", pl_module)
        self.names = self.names or [str(i) for i in range(net.num_classes)]
        self.counts = torch.zeros(len(self.names), len(self.names), dtype=torch.long)
        self._handle = net.register_forward_hook(self._hook)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._predicted is None:
            raise RuntimeError("ConfusionMatrix saw a test batch without a forward pass of the network")
        target = batch[1].cpu()
        self.counts.index_put_((target, self._predicted), torch.ones_like(target), accumulate=True)
        self._predicted = None

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        # one device: unchanged; several: every process's counts summed
        self.counts = trainer.strategy.reduce(self.counts.to(pl_module.device), reduce_op="sum").cpu()

    def on_test_end(self, trainer, pl_module) -> None:
        self._handle.remove()
        if trainer.is_global_zero:
            write_text_atomic(self.folder / "confusion_matrix.csv", confusion_csv(self.counts, self.names))
            write_bytes_atomic(self.folder / "confusion_matrix.png", confusion_png(self.counts, self.names))

    def results(self) -> dict[str, Any]:
        """What ``evaluate`` adds to metrics.json: the two files and the images counted."""
        return {"confusion_matrix": {"csv": str(self.folder / "confusion_matrix.csv"),
                                     "png": str(self.folder / "confusion_matrix.png")},
                "images": int(self.counts.sum()) if self.counts is not None else 0}


# -- which images ----------------------------------------------------------------------------------
class EvalSet(pl.LightningDataModule):
    """One dataset served as the test split (in order, ``batch_size`` samples per batch)."""

    def __init__(self, dataset: Dataset, *, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())


def checkpoint_class_names(checkpoint: dict[str, Any]) -> list[str] | None:
    """A checkpoint's classes in label order: the names stored in it, else those of its stored data config
    (the class folders of its training folder while that exists); ``None`` when neither is known."""
    if checkpoint.get(CLASS_NAMES_KEY):
        return list(checkpoint[CLASS_NAMES_KEY])
    data = run_config(checkpoint).get("data")
    names = instantiate(data, _convert_="all").class_names() if data is not None else None
    return list(names) if names else None


def _same_folder(a: Any, b: Any) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def resolve_split(split: str, root: Path, trained_root: str | None) -> str:
    """``split`` with ``auto`` made concrete: ``test`` for the training folder or a folder with ``test/``,
    else ``all``."""
    check_choice("split", split, SPLIT_CHOICES)
    if split != "auto":
        return split
    return "test" if _same_folder(root, trained_root) or (root / "test").is_dir() else "all"


def folder_datamodule(datamodule: ImageFolderDataModule, split: str,
                      classes: list[str]) -> tuple[pl.LightningDataModule, dict[str, Any]]:
    """The ``split`` (``all``/``train``/``val``/``test``) of ``datamodule``'s folder as a test set labelled by
    ``classes``, through the evaluation transform; and what was chosen (for metrics.json)."""
    h, root = datamodule.hparams, Path(datamodule.hparams.root)
    mode = image_mode(datamodule)
    if split == "all" or (root / split).is_dir():
        samples, skipped = readable_images(labelled_images(root if split == "all" else root / split, classes), mode,
                                     h.skip_bad)
    else:  # the split the datamodule carves from the training images (fixed seed, as in training)
        found = datamodule.class_names()
        if found != classes:
            raise ValueError(f"split={split!r}: {root} has no {split}/ folder, and carving one needs the "
                             f"checkpoint's classes {classes} as class folders, found {found}; split=all "
                             "evaluates every image of the folder")
        datamodule.setup()
        samples, skipped = datamodule.datasets[split].samples, list(datamodule.skipped)
    dataset = ImageFolderDataset(samples, datamodule.eval_transform(), mode)
    data = EvalSet(dataset, batch_size=h.batch_size, num_workers=h.num_workers)
    present = sorted({classes[t] for _, t in samples}, key=classes.index)
    return data, {"split": split, "root": str(root), "classes_present": present,
                  "skipped": [str(p) for p in skipped]}


def evaluate_vision(cfg: DictConfig) -> dict[str, Any]:
    """Test ``cfg.ckpt_path`` on the images ``cfg.split`` of the data picks; write metrics.json and the
    confusion matrix (CSV and PNG) into ``cfg.paths.output_dir``; return the metrics."""
    ckpt = cfg.get("ckpt_path")
    checkpoint = load_checkpoint(ckpt)
    stored = run_config(checkpoint)
    data = eval_data_config(cfg, stored)
    if data is None:
        raise ValueError(f"{ckpt} stores no data config; choose the data with data=<option> (e.g. data=mega_mnist)")
    split = cfg.get("split", "auto")
    classes = checkpoint_class_names(checkpoint)
    datamodule, chosen = instantiate(data, _convert_="all"), {"split": "test"}
    if issubclass(get_class(data["_target_"]), ImageFolderDataModule):
        trained_root = (stored.get("data") or {}).get("root")
        if classes is None:
            raise ValueError(f"{ckpt} does not record its class names and its training folder {trained_root} "
                             f"is gone, so the class folders of {data['root']} cannot be matched to its classes")
        split = resolve_split(split, Path(data["root"]), trained_root)
        datamodule, chosen = folder_datamodule(datamodule, split, classes)
    elif check_choice("split", split, SPLIT_CHOICES) not in ("auto", "test"):
        raise ValueError(f"split={split!r} needs an image folder (data.root=<folder>); {data['_target_']} is "
                         "evaluated on its test split (split=auto or split=test)")
    return evaluate(cfg, datamodule=datamodule, callbacks=[ConfusionMatrix(cfg.paths.output_dir, classes)],
                    extra=chosen)


# -- the command line ------------------------------------------------------------------------------
def data_overrides(argv: list[str]) -> list[str]:
    """Without a ``data=<option>`` choice, ``data.<key>=<value>`` becomes ``++data.<key>=<value>``: a key of the
    data config stored in the checkpoint (Hydra's config has no ``data`` node to override then)."""
    if any(a.split("=", 1)[0].lstrip("+") == "data" for a in argv if "=" in a):
        return list(argv)
    return ["++" + a if a.startswith("data.") and "=" in a else a for a in argv]


@hydra.main(config_path=str(CONF_DIR), config_name="vision_eval",
            version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    return evaluate_vision(cfg).get("metric")


def main() -> float | None:
    """``python -m vision.evaluate ckpt_path=... [data.root=<folder>] [split=auto]``; returns the test metric."""
    sys.argv = [sys.argv[0], *data_overrides(sys.argv[1:])]
    return _hydra_main()


if __name__ == "__main__":
    run(main, "vision_eval")  # Hydra's errors plus "did you mean" for mistyped overrides
