"""Inference artefacts: ``export_model(model, example_input, format, path)`` and ``load_exported(path, format)``.

Three formats, each written atomically (into a temporary folder beside ``path``, then ``os.replace``):

- ``exported``: ``torch.export`` (an ``ExportedProgram`` saved with ``torch.export.save``, ``.pt2``);
- ``torchscript``: ``torch.jit.trace`` saved with ``torch.jit.save`` (``.pt``);
- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (``.onnx``; needs ``onnx`` and ``onnxscript``, and
  ``onnxruntime`` to run it: ``pip install -e '.[export]'``).

All three record the model at the example input's shape: sparse patterns are built for that sequence
length and frozen into the artefact as constants (run an eager forward first, which
:func:`export_model` does, so cached plans exist). Which attention variants export in which format, and
why the others do not, is tabulated in ``docs/operations.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from core_attn._checks import check_choice

FORMATS = ("exported", "torchscript", "onnx")
SUFFIX = {"exported": ".pt2", "torchscript": ".pt", "onnx": ".onnx"}


def _write(model: nn.Module, x: Tensor, format: str, path: Path) -> None:
    if format == "exported":
        torch.export.save(torch.export.export(model, (x,)), path)
    elif format == "torchscript":
        # check_trace=False: the checker re-runs the model and compares graphs, which our shape-dependent
        # plan caches make noisy; export_model compares outputs instead
        try:
            torch.jit.save(torch.jit.trace(model, (x,), check_trace=False), str(path))
        except RuntimeError as e:  # TorchScript cannot serialise a Python autograd.Function (our block-sparse kernel)
            if "Could not export Python function" not in str(e) and "unordered_map::at" not in str(e):
                raise
            raise ValueError("format='torchscript' cannot save this model: it calls a Python autograd.Function "
                             "(core_attn's block-sparse kernel), which TorchScript cannot serialise; use "
                             "format='exported' or format='onnx' (see docs/operations.md)") from None
    else:
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["output"],
                                    verbose=False)
        program.save(str(path))


def export_model(model: nn.Module, example_input: Tensor, format: str, path: str | Path, *,
                 atol: float = 1e-4) -> float:
    """Write ``model`` (put in eval mode) as an inference artefact at ``path``; return the largest absolute
    difference between the artefact's output and the eager output on ``example_input``.

    Args:
        model: a module taking one tensor and returning one tensor.
        example_input: the input the artefact is traced at (its shape is baked in).
        format: ``exported`` (torch.export), ``torchscript`` (torch.jit.trace) or ``onnx``.
        path: the artefact's file; written atomically (readers never see half a file).
        atol: the largest difference accepted; beyond it ``ValueError`` and nothing is written.

    Raises:
        ValueError: unknown ``format``, or the artefact's output differs from eager by more than ``atol``.
        ImportError: ``format="onnx"`` without ``onnx``/``onnxscript`` installed.
    """
    check_choice("format", format, FORMATS)
    if format == "onnx":
        for pkg in ("onnx", "onnxscript"):
            if not _available(pkg):
                raise ImportError(f"format=onnx needs the {pkg!r} package: pip install -e '.[export]'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        expected = model(example_input)  # also fills shape-keyed plan caches, so they trace as constants
        tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            _write(model, example_input, format, tmp_dir / path.name)  # same name: ONNX refers to its data file by name
            got = load_exported(tmp_dir / path.name, format)(example_input)
            diff = (got.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
            if not diff <= atol:
                raise ValueError(f"the {format} artefact's output differs from the eager model's by {diff:.3g} "
                                 f"(> atol={atol}); nothing was written to {path}")
            main = tmp_dir / path.name
            for extra in sorted(tmp_dir.iterdir()):  # side files (ONNX external data) first, the artefact last
                if extra != main:
                    os.replace(extra, path.parent / extra.name)
            os.replace(main, path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return diff


def _available(pkg: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(pkg) is not None


def load_exported(path: str | Path, format: str) -> Callable[[Tensor], Tensor]:
    """A function running the artefact at ``path`` on a tensor (CPU; ONNX through ``onnxruntime``)."""
    check_choice("format", format, FORMATS)
    path = Path(path)
    if format == "exported":
        return torch.export.load(path).module()
    if format == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    if not _available("onnxruntime"):
        raise ImportError("running an onnx artefact needs the 'onnxruntime' package: pip install -e '.[export]'")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return run
