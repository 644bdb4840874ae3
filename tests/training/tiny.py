"""A tiny vision run (64x64 canvas, one small block) that trains in seconds, for the runtime and app tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

TINY = [
    "data.image_size=64", "data.digit_size=16", "data.clutter_size=4", "data.num_clutter=4",
    "data.train_samples=48", "data.val_samples=16", "data.test_samples=16", "data.batch_size=8",
    "model.patch_size=8", "model.dim=32", "model.depth=1", "model.num_heads=2", "attention.window=16",
    "extras.print_config=false", "callbacks.rich_progress_bar=null",
]


def compose_config(name: str, overrides: list[str], output_dir: Path | None = None, **kw):
    """Compose ``conf/<name>.yaml`` with ``overrides`` (and ``paths.output_dir``) via Hydra's compose API."""
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=[*overrides, *extra], **kw)


