"""Classify one image and show where the model looked: ``python -m vision.predict image.png ckpt_path=...``.

The model is rebuilt from the checkpoint (its saved hyper-parameters and weights); the image is read and
preprocessed by the evaluation transform of the data config stored in the checkpoint (grayscale or RGB
as the model was trained, resized to its input size; for image folders also centre-cropped and
normalised). Prints the predicted class and the top-k probabilities, and writes an attention overlay PNG
of the image's own size (``output=...``, default ``<run dir>/<image stem>_attention.png``).

The attention map: the q and k of the last block's attention are captured with a forward pre-hook on the
core_attn variant, and the attention weights are recomputed densely, ``softmax(q k^T / sqrt(d))``,
restricted to the variant's pattern for the sparse variants (its ``mask_fn``, so the map shows what the
model really attends to), query chunk by query chunk (never an N x N matrix). The map is the attention
each patch receives, averaged over heads and over the pooled queries: the class token for ``cls``/
``token`` pooling, every token for mean pooling. For the approximate variants (linear, nystrom, ...) it is
the exact softmax of their q and k, which they approximate.

``image=<folder>`` classifies every image file under the folder (recursively, sorted; names starting with
``.`` are left out) in batches of ``batch_size`` and writes one ``predictions.csv`` (columns ``file``,
``label``, ``probability``, then ``top2_label``, ``top2_probability`` ... up to ``topk``) and, unless
``overlays=false``, one overlay per image under ``overlays/`` (the folder's sub-folders mirrored), both in
``output`` (default: the run directory).

A positional argument that is an existing file or folder, or ends in an image suffix, becomes
``image=<path>``, so both ``python -m vision.predict cat.png ckpt_path=...`` and ``... image=cat.png
ckpt_path=...`` work (config ``conf/vision_predict.yaml``).
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from core_attn.attention.base import AttentionBase, PatternAttention
from core_attn.training.atomic import write_text_atomic
from core_attn.training.cli import CONF_DIR, positional_overrides, run
from core_attn.training.runtime import load_checkpoint, run_config
from core_attn.validation import check_int
from vision.data import IMG_EXTENSIONS, image_mode
from vision.module import ImageClassifier

log = logging.getLogger(__name__)

QUERY_CHUNK_ELEMENTS = 1 << 23  # score elements per chunk of the dense recomputation (32 MB in fp32)


# -- inputs ----------------------------------------------------------------------------------------
def load_checkpoint_model(ckpt_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a vision checkpoint (eval mode) and the run config stored in it (``{}`` if none)."""
    ckpt = load_checkpoint(ckpt_path)
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"ckpt_path={str(ckpt_path)!r} is not a Lightning checkpoint of the vision app "
                         "(no hyper_parameters/state_dict)")
    module = ImageClassifier(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.net.eval(), run_config(ckpt)


def read_image(path: str | Path):
    """The image at ``path`` as a PIL image (decoded now); errors name the file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image={str(path)!r}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ValueError(f"unreadable image {path}: {type(e).__name__}: {e}") from e


# -- the attention map -----------------------------------------------------------------------------
class CaptureQK:
    """Context manager: records the (q, k) the last core_attn variant of ``net`` receives."""

    def __init__(self, net: nn.Module):
        variants = [m for m in net.modules() if isinstance(m, AttentionBase)]
        if not variants:
            raise ValueError(f"{type(net).__name__} has no core_attn attention to draw a map from")
        self.variant = variants[-1]
        self.q: Tensor | None = None
        self.k: Tensor | None = None

    def _hook(self, module, args, kwargs) -> None:
        self.q, self.k = args[0].detach(), args[1].detach()  # (B, H, N, D)

    def __enter__(self) -> "CaptureQK":
        self._handle = self.variant.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def attention_received(q: Tensor, k: Tensor, variant: AttentionBase, queries: Tensor) -> Tensor:
    """Attention each key receives from ``queries``, averaged over heads and those queries: (N,).

    Args:
        q, k: (1, H, N, D) from the variant's input.
        variant: its pattern (``mask_fn``) restricts the keys of a sparse variant; ``causal`` is honoured.
        queries: (Q,) query positions to average over.
    """
    _, heads, n, d = k.shape
    q, k = q[0].float(), k[0].float()  # (H, N, D)
    mask_fn = variant.pattern(n).mask_fn(n) if isinstance(variant, PatternAttention) else None
    keys = torch.arange(n)
    total = torch.zeros(n)
    step = max(1, QUERY_CHUNK_ELEMENTS // (heads * n))
    for s in range(0, len(queries), step):
        rows = queries[s:s + step]  # (c,)
        scores = q[:, rows] @ k.transpose(-1, -2) / d ** 0.5  # (H, c, N)
        allowed = torch.ones(len(rows), n, dtype=torch.bool)
        if mask_fn is not None:
            allowed = mask_fn(rows[:, None], keys[None, :])  # (c, N)
        elif variant.causal:
            allowed = keys[None, :] <= rows[:, None]
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
        total += probs.sum(dim=(0, 1))
    return total / (heads * len(queries))


def _net_layout(net: nn.Module) -> tuple[int, tuple[int, int], bool]:
    """(prefix tokens, patch grid (gh, gw), pools the first token) of our ViT or a timm ViT."""
    pe = net.patch_embed
    grid = tuple(getattr(pe, "grid", None) or pe.grid_size)
    cls_pool = getattr(net, "pool", None) == "cls" or getattr(net, "global_pool", None) == "token"
    return int(getattr(net, "num_prefix_tokens", 0)), grid, cls_pool


def attention_map(capture: CaptureQK, net: nn.Module, index: int = 0) -> Tensor:
    """The (gh, gw) map of attention received by each patch in the last block, scaled to [0, 1], for image
    ``index`` of the captured batch."""
    prefix, (gh, gw), cls_pool = _net_layout(net)
    n = capture.k.shape[2]
    if n != prefix + gh * gw:
        raise ValueError(f"captured {n} tokens but the model has {prefix} prefix tokens + {gh}x{gw} patches")
    queries = torch.zeros(1, dtype=torch.long) if cls_pool else torch.arange(n)
    q, k = capture.q[index:index + 1], capture.k[index:index + 1]  # (1, H, N, D)
    received = attention_received(q, k, capture.variant, queries)[prefix:].view(gh, gw)
    lo, hi = received.min(), received.max()
    return (received - lo) / (hi - lo) if hi > lo else torch.zeros_like(received)


def overlay(image, heat: Tensor, box: tuple[float, float, float, float], alpha: float = 0.5):
    """``image`` (PIL) with the colour-mapped ``heat`` (gh, gw in [0, 1]) blended over ``box`` (the region the
    model saw; outside it the image is dimmed); an RGB PIL image of the same size."""
    import torch.nn.functional as F
    from matplotlib import colormaps
    from PIL import Image

    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    height, width = base.shape[:2]
    left, top, right, bottom = box
    bx, by = int(round(left)), int(round(top))
    bw, bh = max(1, int(round(right - left))), max(1, int(round(bottom - top)))
    up = F.interpolate(heat[None, None].float(), size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
    colors = colormaps["jet"](up.clamp(0, 1).numpy())[..., :3].astype(np.float32)  # (bh, bw, 3)
    out = base * 0.4
    x0, y0, x1, y1 = max(bx, 0), max(by, 0), min(bx + bw, width), min(by + bh, height)
    if x1 > x0 and y1 > y0:
        seen = base[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = (1 - alpha) * seen + alpha * colors[y0 - by:y1 - by, x0 - bx:x1 - bx]
    return Image.fromarray((out * 255.0).round().clip(0, 255).astype(np.uint8))  # (H, W, 3) uint8: RGB


# -- the job ---------------------------------------------------------------------------------------
def class_names(datamodule, num_classes: int) -> list[str]:
    """The data's class names, padded with class numbers (``"7"``) where they are unknown."""
    names = list(datamodule.class_names() or [])
    return names[:num_classes] + [str(i) for i in range(len(names), num_classes)]


def _ranked(probs: Tensor, names: list[str], topk: int) -> list[tuple[int, str, float]]:
    """The ``topk`` (class, name, probability) of ``probs`` (num_classes,), most probable first."""
    top = probs.topk(min(topk, len(probs)))
    return [(int(c), names[int(c)], float(p)) for p, c in zip(top.values, top.indices)]


def _need_data_config(config: dict[str, Any], ckpt_path: str) -> None:
    if config.get("data") is None:
        raise ValueError(f"{ckpt_path} stores no data config, so its preprocessing is unknown (checkpoints "
                         "written by python -m vision.train store it)")


def predict(*, image: str, ckpt_path: str, output: str | None = None, topk: int = 5,
            output_dir: str = ".") -> dict[str, Any]:
    """Classify ``image`` with the checkpoint ``ckpt_path`` and write the attention overlay.

    Returns:
        ``{"image", "size", "predicted", "predicted_name", "top": [(class, name, probability), ...],
        "variant", "output"}``.
    """
    check_int("topk", topk, min_value=1)
    net, config = load_checkpoint_model(ckpt_path)
    _need_data_config(config, ckpt_path)
    datamodule = instantiate(config["data"], _convert_="all")
    picture = read_image(image)
    x = datamodule.eval_transform()(picture.convert(image_mode(datamodule)))[None]
    with CaptureQK(net) as capture, torch.no_grad():
        probs = net(x).softmax(-1)[0]  # (num_classes,)
    ranked = _ranked(probs, class_names(datamodule, len(probs)), topk)
    heat = attention_map(capture, net)
    out = Path(output) if output else Path(output_dir) / f"{Path(image).stem}_attention.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(picture, heat, datamodule.eval_box(*picture.size)).save(out)
    return {"image": str(image), "size": list(picture.size), "predicted": ranked[0][0], "predicted_name": ranked[0][1],
            "top": ranked, "variant": capture.variant.name,
            "exact_map": isinstance(capture.variant, PatternAttention) or capture.variant.name == "dense",
            "output": str(out)}


def report(result: dict[str, Any]) -> str:
    """The lines ``main`` prints."""
    c, name, p = result["top"][0]
    lines = [f"image: {result['image']} ({result['size'][0]}x{result['size'][1]})",
             f"predicted: {c} ({name}) p={p:.3f}",
             f"top-{len(result['top'])}: " + ", ".join(f"{c} ({name}) {p:.3f}" for c, name, p in result["top"])]
    how = "" if result["exact_map"] else " (softmax of its q, k: the variant approximates it)"
    lines.append(f"attention map ({result['variant']}, last block{how}): {result['output']}")
    return "\n".join(lines)


# -- a folder of images ----------------------------------------------------------------------------
PREDICTIONS_CSV = "predictions.csv"


def folder_images(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), leaving out names starting with ``.`` and
    anything under ``exclude`` (the output folder, when it lies inside ``folder``)."""
    exclude = exclude.resolve() if exclude is not None else None
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.suffix.lower() not in IMG_EXTENSIONS or any(part.startswith(".") for part in rel.parts):
            continue
        if exclude is not None and p.resolve().is_relative_to(exclude):
            continue
        if p.is_file():
            out.append(p)
    return out


def _overlay_names(files: list[Path]) -> list[Path]:
    """``a/cat.jpg`` -> ``a/cat_attention.png``; ``a/cat.jpg_attention.png`` where another file has the same stem."""
    stems = [f.with_suffix("") for f in files]
    return [f.with_name((f.stem if stems.count(s) == 1 else f.name) + "_attention.png") for f, s in zip(files, stems)]


def predictions_csv(rows: list[tuple[str, list[tuple[int, str, float]]]], topk: int) -> str:
    """The text of ``predictions.csv``: ``file,label,probability,top2_label,top2_probability,...`` with one
    row per ``(file, ranked)`` (``ranked``: (class, name, probability), most probable first)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", "probability"] + [f"top{r}_{c}" for r in range(2, topk + 1)
                                                         for c in ("label", "probability")])
    for file, ranked in rows:
        writer.writerow([file] + [v for _, name, p in ranked for v in (name, f"{p:.6f}")])
    return buf.getvalue()


def _read_batch(paths: list[Path], skip_bad: bool, skipped: list[Path]) -> list[tuple[Path, Any]]:
    out = []
    for path in paths:
        try:
            out.append((path, read_image(path)))
        except ValueError as e:
            if not skip_bad:
                raise ValueError(f"{e}; fix or remove it, or set skip_bad=true to skip unreadable images") from e
            skipped.append(path)
    return out


def predict_folder(*, folder: str, ckpt_path: str, output: str | None = None, topk: int = 5, batch_size: int = 32,
                   overlays: bool = True, skip_bad: bool = False, output_dir: str = ".") -> dict[str, Any]:
    """Classify every image under ``folder`` with the checkpoint ``ckpt_path``; write ``predictions.csv`` and
    (``overlays``) an attention overlay per image into ``output`` (default ``output_dir``).

    Args:
        folder: searched recursively for files with an image suffix (``vision.data.IMG_EXTENSIONS``).
        ckpt_path: a checkpoint written by ``python -m vision.train``.
        output: the folder for ``predictions.csv`` and ``overlays/``; default ``output_dir``.
        topk: ranked classes per image in the CSV (capped at the number of classes).
        batch_size: images per forward pass.
        overlays: write ``overlays/<relative path>_attention.png`` per image (costs a dense recomputation).
        skip_bad: leave out unreadable images (listed in ``skipped``) instead of raising ``ValueError``.
        output_dir: the run directory.

    Returns:
        ``{"folder", "images", "skipped", "csv", "overlays", "counts": {class name: images}}``.
    """
    check_int("topk", topk, min_value=1)
    check_int("batch_size", batch_size, min_value=1)
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image={str(folder)!r}: no such folder")
    out_dir = Path(output) if output else Path(output_dir)
    files = folder_images(root, exclude=out_dir)
    if not files:
        raise ValueError(f"image={str(folder)!r}: no image files ({', '.join(IMG_EXTENSIONS)}) under it")
    net, config = load_checkpoint_model(ckpt_path)
    _need_data_config(config, ckpt_path)
    datamodule = instantiate(config["data"], _convert_="all")
    transform, mode = datamodule.eval_transform(), image_mode(datamodule)
    names: list[str] | None = None
    overlay_of = dict(zip(files, _overlay_names([f.relative_to(root) for f in files])))
    rows, skipped, variant = [], [], None
    for start in range(0, len(files), batch_size):
        batch = _read_batch(files[start:start + batch_size], skip_bad, skipped)
        if not batch:
            continue
        x = torch.stack([transform(picture.convert(mode)) for _, picture in batch])  # (B, C, S, S)
        with CaptureQK(net) as capture, torch.no_grad():
            probs = net(x).softmax(-1)  # (B, num_classes)
        names = names or class_names(datamodule, probs.shape[-1])
        variant = capture.variant.name
        for i, (path, picture) in enumerate(batch):
            rows.append((path.relative_to(root).as_posix(), _ranked(probs[i], names, topk)))
            if overlays:
                target = out_dir / "overlays" / overlay_of[path]
                target.parent.mkdir(parents=True, exist_ok=True)
                overlay(picture, attention_map(capture, net, i), datamodule.eval_box(*picture.size)).save(target)
    if not rows:
        raise ValueError(f"image={str(folder)!r}: none of its {len(files)} image files is readable")
    if skipped:
        log.warning("skipped %d unreadable images (skip_bad=true): %s", len(skipped), ", ".join(map(str, skipped[:5])))
    csv_path = out_dir / PREDICTIONS_CSV
    write_text_atomic(csv_path, predictions_csv(rows, min(topk, len(names))))
    counts: dict[str, int] = {}
    for _, ranked in rows:
        counts[ranked[0][1]] = counts.get(ranked[0][1], 0) + 1
    return {"folder": str(folder), "images": len(rows), "skipped": [str(p) for p in skipped], "csv": str(csv_path),
            "overlays": str(out_dir / "overlays") if overlays else None, "variant": variant,
            "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def folder_report(result: dict[str, Any]) -> str:
    """The lines ``main`` prints for a folder."""
    lines = [f"folder: {result['folder']}: {result['images']} images classified"]
    if result["skipped"]:
        shown = ", ".join(result["skipped"][:5]) + (" ..." if len(result["skipped"]) > 5 else "")
        lines.append(f"skipped {len(result['skipped'])} unreadable images: {shown}")
    lines.append("predicted: " + ", ".join(f"{name} {n}" for name, n in result["counts"].items()))
    lines.append(f"predictions: {result['csv']}")
    if result["overlays"]:
        lines.append(f"attention maps ({result['variant']}, last block): {result['overlays']}")
    return "\n".join(lines)


# -- the command line ------------------------------------------------------------------------------
def image_overrides(argv: list[str]) -> list[str]:
    """Rewrite positional image paths (existing files or folders, or names with an image suffix) as ``image=<path>``."""
    return positional_overrides(argv, "image", lambda a: Path(a).exists() or Path(a).suffix.lower() in IMG_EXTENSIONS)


# an absolute path: Hydra resolves a relative one against the package when main() is called in-process
@hydra.main(config_path=str(CONF_DIR), config_name="vision_predict",
            version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    if Path(cfg.image).is_dir():
        result = predict_folder(folder=cfg.image, ckpt_path=cfg.ckpt_path, output=cfg.output, topk=cfg.topk,
                                batch_size=cfg.batch_size, overlays=cfg.overlays, skip_bad=cfg.skip_bad,
                                output_dir=cfg.paths.output_dir)
        print(folder_report(result))
        return
    result = predict(image=cfg.image, ckpt_path=cfg.ckpt_path, output=cfg.output, topk=cfg.topk,
                     output_dir=cfg.paths.output_dir)
    print(report(result))


def main() -> None:
    """``python -m vision.predict [image.png | folder] ckpt_path=... [output=...] [topk=5]``."""
    sys.argv = [sys.argv[0], *image_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    run(main, "vision_predict")  # Hydra's errors plus "did you mean" for mistyped overrides
