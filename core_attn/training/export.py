"""Inference artefacts: ``export_model(model, example_input, format, path)`` and ``load_exported(path, format)``.

Three formats, each written atomically (into a temporary folder beside ``path``, then ``os.replace``):

- ``exported``: ``torch.export`` (an ``ExportedProgram`` saved with ``torch.export.save``, ``.pt2``);
- ``torchscript``: ``torch.jit.trace`` saved with ``torch.jit.save`` (``.pt``);
- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (``.onnx``; needs ``onnx`` and ``onnxscript``, and
  ``onnxruntime`` to run it: ``pip install -e '.[export]'``).

All three record the model at the example input's shape: sparse patterns are built for that sequence
length and frozen into the artefact as constants (run an eager forward first, which
:func:`export_model` does, so cached plans exist). ``exported`` and ``onnx`` can instead keep chosen
dimensions dynamic (``dynamic_dims``, e.g. the time axis of audio features) when the model traces that way.
``quantize="int8"`` (:func:`export_artefact`, ONNX only) also writes ``<name>.int8.onnx``: the ONNX model with the
weights of its matrix products (``MatMul``, ``Gemm``: the linear layers) quantised to int8 by onnxruntime's
dynamic quantisation, checked against the eager model relative to the output's scale (:func:`quantize_onnx`).

Which attention variants export in which format, and why the others do not, is tabulated in
``docs/operations.md``; a model that cannot be traced raises ``ValueError`` naming its attention variants
and the reason (:func:`untraceable_reasons`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core_attn.attention.base import BACKENDS, AttentionBase, PatternAttention
from core_attn.training.atomic import temporary_dir_beside, write_json_atomic
from core_attn.training.runtime import check_checkpoint_path
from core_attn.validation import check_choice, check_float

FORMATS = ("exported", "torchscript", "onnx")
SUFFIX = {"exported": ".pt2", "torchscript": ".pt", "onnx": ".onnx"}
QUANTIZE = ("none", "int8")
# Convolutions stay fp32: quantised too (onnxruntime's ConvInteger), the audio Conformer ran slower than in fp32
# on one CPU thread and the trained vision model's test accuracy fell from 73% to 13% (docs/operations.md)
INT8_OPS = ["MatMul", "Gemm"]
# Variants without a backend option that run core_attn's block-sparse kernel (core_attn/kernels.py), and why
# that cannot be traced; pattern variants (PatternAttention) are judged by their backend instead.
KERNEL_VARIANTS = {
    "lsh": "hashes tokens into buckets and runs core_attn's block-sparse kernel over the sorted buckets, so its "
           "plan depends on the data",
    "perceiver": "builds a new block-sparse kernel plan in every call and inspects it in Python",
}
KERNEL_WHY = "torch.export cannot trace data-dependent Python control flow"


def untraceable_reasons(model: nn.Module, *, dynamic: bool = False) -> list[str]:
    """Why ``model``'s attention layers stop ``torch.export`` (one line per variant; empty when none is known
    to): what :func:`export_model` says when tracing fails."""
    reasons: dict[str, str] = {}
    for m in model.modules():
        if not isinstance(m, AttentionBase):
            continue
        name = getattr(m, "name", type(m).__name__)
        if name in KERNEL_VARIANTS:
            reasons[name] = (f"attention {name!r} {KERNEL_VARIANTS[name]}: {KERNEL_WHY}; it has no other backend, "
                             "so models with it do not export (use e.g. dense, linear or nystrom)")
        elif dynamic and isinstance(m, PatternAttention):
            reasons[name] = (f"attention {name!r} (backend={m.backend!r}) builds its sparsity pattern for one "
                             "sequence length N and caches pieces of it by N (e.g. the global tokens' table), which "
                             "a dynamic length cannot key; export at a fixed length")
    return list(reasons.values())


def set_attention_backend(model: nn.Module, backend: str) -> int:
    """Set ``backend`` on every pattern variant in ``model`` (``local``, ``bigbird``, ``sparse_*``); return
    how many. ``ValueError`` when ``model`` has none (the other variants have no backend to choose)."""
    check_choice("attention_backend", backend, BACKENDS)
    layers = [m for m in model.modules() if isinstance(m, PatternAttention)]
    if not layers:
        found = sorted({getattr(m, "name", type(m).__name__) for m in model.modules() if isinstance(m, AttentionBase)})
        raise ValueError(f"attention_backend={backend!r} applies to pattern variants (local, bigbird, sparse_fixed, "
                         f"sparse_strided); this model's attention is {found}, which has no backend option "
                         "(leave attention_backend=null)")
    for m in layers:
        m.backend = backend
    return len(layers)


def checkpoint_network(module_cls: type, ckpt_path: str | Path, *, attention_backend: str | None = None,
                       overrides: Mapping[str, Any] | None = None) -> tuple[Any, nn.Module]:
    """The LightningModule of the checkpoint ``ckpt_path`` (on the CPU) and its network ``.net`` in eval mode:
    what an app's ``export`` starts from.

    Args:
        module_cls: the LightningModule class (its ``load_from_checkpoint`` reads the file).
        ckpt_path: the checkpoint (``FileNotFoundError`` naming it when there is no such file).
        attention_backend: replaces the pattern variants' backend (:func:`set_attention_backend`); ``None``: kept.
        overrides: saved hyper-parameters to replace.
    """
    module = module_cls.load_from_checkpoint(str(check_checkpoint_path(ckpt_path)), map_location="cpu",
                                             **(overrides or {}))
    net = module.net.eval()
    if attention_backend is not None:
        set_attention_backend(net, attention_backend)
    return module, net


def artefact_path(ckpt_path: str | Path, format: str, out: str | Path | None = None) -> Path:
    """``out``, or by default the checkpoint's path with the format's suffix (``.pt2``, ``.pt``, ``.onnx``)."""
    return Path(out) if out else Path(ckpt_path).with_suffix(SUFFIX.get(format, ".bin"))


@contextlib.contextmanager
def _quiet_onnx_tools() -> Iterator[None]:
    """The ONNX exporter, its optimizer and onnxruntime's quantiser log every pass and skipped fold at INFO
    (onnxruntime's quantiser on the root logger), ~150 lines under a Hydra run: keep their warnings only, less
    the quantiser's advice to pre-process the model (measured: 3% faster int8 DNA model, none for vision)."""
    loggers = [logging.getLogger(name) for name in ("", "onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # notes on torchvision ops the model does not use

    def advice(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")

    loggers[0].addFilter(advice)
    try:
        yield
    finally:
        loggers[0].removeFilter(advice)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _trace(model: nn.Module, x: Tensor, format: str, path: Path, dynamic_dims: Sequence[int]) -> None:
    """torch.export / the dynamo ONNX exporter; a failure to trace becomes a ``ValueError`` that says why."""
    shapes = ({d: torch.export.Dim.DYNAMIC for d in dynamic_dims},) if dynamic_dims else None
    try:
        if format == "exported":
            program = torch.export.export(model, (x,), dynamic_shapes=shapes)
        else:
            with _quiet_onnx_tools():
                program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                            output_names=["output"], dynamic_shapes=shapes, verbose=False)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; all mean "could not trace"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        reasons = untraceable_reasons(model, dynamic=bool(dynamic_dims))
        dims = f" with dynamic dimensions {list(dynamic_dims)}" if dynamic_dims else ""
        why = "; ".join(reasons) if reasons else "no attention variant of the model is known to stop it"
        raise ValueError(f"format={format!r} cannot trace this model{dims}: {why} (torch.export: "
                         f"{type(e).__name__}: {first})") from e
    if format == "exported":
        torch.export.save(program, path)
    else:
        share_constants(program.model)
        program.save(str(path))


def share_constants(model: Any) -> int:
    """Keep one copy of each ONNX initializer that repeats with the same dtype, shape and values (every banded
    layer stores the same band bias and gather indices), pointing its users at the first; returns how many
    copies were dropped. ``model`` is the exporter's ``onnx_ir`` model (``ONNXProgram.model``)."""
    import hashlib

    import numpy as np

    graph, first, dropped = model.graph, {}, 0
    named = {id(v) for v in (*graph.inputs, *graph.outputs)}  # names the caller sees stay
    for value in tuple(graph.initializers.values()):
        tensor = value.const_value
        if tensor is None or id(value) in named:
            continue
        data = tensor.numpy()  # shape () stays (): a scalar index and a one-element list gather differently
        key = (tensor.dtype, data.shape, hashlib.sha256(data.tobytes()).digest())
        kept = first.setdefault(key, value)
        if kept is not value and np.array_equal(kept.const_value.numpy(), data):
            value.replace_all_uses_with(kept)
            graph.initializers.pop(value.name)
            dropped += 1
    return dropped


def _write(model: nn.Module, x: Tensor, format: str, path: Path, dynamic_dims: Sequence[int]) -> None:
    if format != "torchscript":
        _trace(model, x, format, path, dynamic_dims)
        return
    # check_trace=False: the checker re-runs the model and compares graphs, which our shape-dependent
    # plan caches make noisy; export_model compares outputs instead
    try:
        torch.jit.save(torch.jit.trace(model, (x,), check_trace=False), str(path))
    except RuntimeError as e:  # TorchScript cannot serialise a Python autograd.Function (our block-sparse kernel)
        if "Could not export Python function" not in str(e) and "unordered_map::at" not in str(e):
            raise
        raise ValueError("format='torchscript' cannot save this model: it calls a Python autograd.Function "
                         "(core_attn's block-sparse kernel), which TorchScript cannot serialise; use "
                         "format='exported' or format='onnx' (with attention_backend=dense for pattern variants; "
                         "see docs/operations.md)") from None


def export_model(model: nn.Module, example_input: Tensor, format: str, path: str | Path, *,
                 atol: float = 1e-4, dynamic_dims: Sequence[int] = (),
                 check_inputs: Sequence[Tensor] = ()) -> float:
    """Write ``model`` (put in eval mode) as an inference artefact at ``path``; return the largest absolute
    difference between the artefact's output and the eager output on ``example_input`` and ``check_inputs``.

    Args:
        model: a module taking one tensor and returning one tensor.
        example_input: the input the artefact is traced at (its shape is baked in, but for ``dynamic_dims``).
        format: ``exported`` (torch.export), ``torchscript`` (torch.jit.trace) or ``onnx``.
        path: the artefact's file; written atomically (readers never see half a file).
        atol: the largest difference accepted; beyond it ``ValueError`` and nothing is written.
        dynamic_dims: dimensions of the input left dynamic (e.g. ``(1,)``, the time axis of (B, T, F)
            features); ``exported`` and ``onnx`` only.
        check_inputs: more inputs the artefact must match eager on (other sizes of the dynamic dimensions).

    Raises:
        ValueError: unknown ``format``; ``dynamic_dims`` with ``torchscript``; a model that cannot be traced
            (the message names its attention variants and why); the artefact's output differs from eager by
            more than ``atol``.
        ImportError: ``format="onnx"`` without ``onnx``/``onnxscript`` installed.
    """
    check_choice("format", format, FORMATS)
    if dynamic_dims and format == "torchscript":
        raise ValueError(f"dynamic_dims={list(dynamic_dims)} needs format='exported' or format='onnx' "
                         "(format='torchscript' traces one shape)")
    if format == "onnx":
        for pkg in ("onnx", "onnxscript"):
            if not _available(pkg):
                raise ImportError(f"format=onnx needs the {pkg!r} package: pip install -e '.[export]'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        expected = model(example_input)  # also fills shape-keyed plan caches, so they trace as constants
        with temporary_dir_beside(path) as tmp_dir:
            # the final file name: ONNX refers to its external data file by name
            _write(model, example_input, format, tmp_dir / path.name, dynamic_dims)
            run = load_exported(tmp_dir / path.name, format)
            diffs = [0.0]
            for x, want in [(example_input, expected), *((c, model(c)) for c in check_inputs)]:
                try:
                    got = run(x)
                except Exception as e:  # noqa: BLE001 - e.g. a guard of torch.export, an onnxruntime shape check
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                    raise ValueError(f"the {format} artefact (traced at input {tuple(example_input.shape)}) fails on "
                                     f"input {tuple(x.shape)}: {type(e).__name__}: {first}; nothing was written to "
                                     f"{path}") from e
                if got.shape != want.shape:
                    raise ValueError(f"the {format} artefact's output has shape {tuple(got.shape)} on input "
                                     f"{tuple(x.shape)}, the eager model's {tuple(want.shape)}; nothing was "
                                     f"written to {path}")
                if want.numel():
                    diffs.append((got.float() - want.float()).abs().max().item())
            diff = float("nan") if any(d != d for d in diffs) else max(diffs)  # a NaN output never passes
            if not diff <= atol:
                raise ValueError(f"the {format} artefact's output differs from the eager model's by {diff:.3g} "
                                 f"(> atol={atol}); nothing was written to {path}")
            main = tmp_dir / path.name
            for extra in sorted(tmp_dir.iterdir()):  # side files (ONNX external data) first, the artefact last
                if extra != main:
                    os.replace(extra, path.parent / extra.name)
            os.replace(main, path)
    return diff


def int8_path(path: str | Path) -> Path:
    """Where the int8 model of the ONNX model ``path`` goes: ``model.onnx`` -> ``model.int8.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def quantize_onnx(model: nn.Module, onnx_path: str | Path, inputs: Sequence[Tensor], *,
                  tolerance: float = 0.05) -> dict[str, Any]:
    """Write the int8 model of the fp32 ONNX model ``onnx_path`` (exported from ``model``) to
    :func:`int8_path` and check it against the eager ``model`` on ``inputs``.

    onnxruntime's dynamic quantisation: the weights of the ``MatMul`` and ``Gemm`` nodes are stored as int8
    (one scale per tensor), their inputs quantised to uint8 at run time; everything else stays fp32.
    The result is approximate, so the check is relative: ``max |int8 - eager| / max |eager|`` on each input
    must be at most ``tolerance``, else ``ValueError`` and nothing is written.

    Returns:
        ``{"int8_path", "int8_size_bytes", "int8_max_abs_diff", "int8_rel_diff", "int8_tolerance",
        "int8_top1_agreement"}``; the agreement is the fraction of output rows (the last dimension: classes,
        vocabulary) whose argmax matches eager's.
    """
    check_float("int8_tolerance", tolerance, min_value=0.0)
    if not _available("onnxruntime"):
        raise ImportError("quantize=int8 needs the 'onnxruntime' package: pip install -e '.[export]'")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = int8_path(onnx_path)
    model.eval()
    with torch.no_grad(), temporary_dir_beside(path) as tmp_dir:
        with _quiet_onnx_tools():
            quantize_dynamic(str(onnx_path), str(tmp_dir / path.name), weight_type=QuantType.QInt8,
                             op_types_to_quantize=INT8_OPS)
        run = load_exported(tmp_dir / path.name, "onnx")
        diff, rel, same, rows = 0.0, 0.0, 0, 0
        for x in inputs:
            want, got = model(x).float(), run(x).float()
            d = (got - want).abs().max().item() if want.numel() else 0.0
            diff, rel = max(diff, d), max(rel, d / (want.abs().max().item() or 1.0))
            if d != d:  # NaN
                diff = rel = float("nan")
                break
            same += int((got.argmax(-1) == want.argmax(-1)).sum()) if want.ndim else 0
            rows += want[..., 0].numel() if want.ndim else 0
        if not rel <= tolerance:
            raise ValueError(f"the int8 model differs from the eager model by {diff:.3g} = {rel:.3g} of the output's "
                             f"largest magnitude (> int8_tolerance={tolerance}); nothing was written to {path} "
                             f"(the fp32 model {onnx_path} was)")
        os.replace(tmp_dir / path.name, path)
    return {"int8_path": str(path), "int8_size_bytes": path.stat().st_size, "int8_max_abs_diff": diff,
            "int8_rel_diff": rel, "int8_tolerance": tolerance, "int8_top1_agreement": same / rows if rows else None}


def export_artefact(model: nn.Module, example_input: Tensor, format: str, path: str | Path, *, atol: float = 1e-4,
                    dynamic_dims: Sequence[int] = (), check_inputs: Sequence[Tensor] = (), quantize: str = "none",
                    int8_tolerance: float = 0.05) -> dict[str, Any]:
    """:func:`export_model`, then with ``quantize="int8"`` :func:`quantize_onnx` checked on the same inputs:
    what the apps' ``export`` run. Returns ``{"path", "format", "max_abs_diff", "size_bytes", "quantize"}``
    and, for int8, the keys of :func:`quantize_onnx`.

    Raises:
        ValueError: ``quantize`` not one of ``none``, ``int8``; ``int8`` with another format than ``onnx``;
            and what :func:`export_model` and :func:`quantize_onnx` raise.
    """
    check_choice("quantize", quantize, QUANTIZE)
    if quantize == "int8":
        check_float("int8_tolerance", int8_tolerance, min_value=0.0)
        if format != "onnx":
            raise ValueError(f"quantize='int8' needs format='onnx' (got format={format!r}): the int8 model is "
                             "quantised and run by onnxruntime (torch.export and TorchScript do not save "
                             "dynamically quantised weights)")
    path = Path(path)
    diff = export_model(model, example_input, format, path, atol=atol, dynamic_dims=dynamic_dims,
                        check_inputs=check_inputs)
    result = {"path": str(path), "format": format, "max_abs_diff": diff, "size_bytes": path.stat().st_size,
              "quantize": quantize}
    if quantize == "int8":
        result |= quantize_onnx(model, path, [example_input, *check_inputs], tolerance=int8_tolerance)
    return result


def report_export(result: Mapping[str, Any], output_dir: str | Path, summary: str) -> None:
    """What every app's ``export`` command does with an :func:`export_artefact` result: write it to
    ``<output_dir>/metrics.json`` (atomically), print ``summary`` and, for int8, :func:`int8_line`."""
    write_json_atomic(Path(output_dir) / "metrics.json", dict(result))
    print(summary)
    if result["quantize"] == "int8":
        print(int8_line(result))


def int8_line(result: Mapping[str, Any]) -> str:
    """One line on the int8 model of an :func:`export_artefact` result: its size against fp32 and its check."""
    agree = result["int8_top1_agreement"]
    return (f"wrote {result['int8_path']} (int8, {result['int8_size_bytes'] / 1e6:.2f} MB, fp32 "
            f"{result['size_bytes'] / 1e6:.2f} MB; max |int8 - eager| = {result['int8_max_abs_diff']:.2e} = "
            f"{result['int8_rel_diff']:.2%} of the output's scale, int8_tolerance={result['int8_tolerance']}"
            + (f"; argmax agreement {agree:.1%})" if agree is not None else ")"))


def _available(pkg: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(pkg) is not None


def load_exported(path: str | Path, format: str, *, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """A function running the artefact at ``path`` on a tensor (CPU; ONNX through ``onnxruntime``, with
    ``threads`` intra-op threads and one inter-op thread when given, else onnxruntime's defaults)."""
    check_choice("format", format, FORMATS)
    path = Path(path)
    if format == "exported":
        return torch.export.load(path).module()
    if format == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    if not _available("onnxruntime"):
        raise ImportError("running an onnx artefact needs the 'onnxruntime' package: pip install -e '.[export]'")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return run
