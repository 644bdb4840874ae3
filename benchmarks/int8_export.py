"""fp32 against int8 inference artefacts of one app's network: file size, latency of one input, agreement.

    python benchmarks/int8_export.py vision --ckpt outputs/vision/.../checkpoints/last.ckpt   # a trained model
    python benchmarks/int8_export.py genomics                     # the app's default model, untrained
    python benchmarks/int8_export.py audio -o model=audio_conformer_medium   # config overrides (untrained model)

Exports the network as ``python -m <app>.export format=onnx quantize=int8 attention_backend=dense`` does
(into a temporary folder), then times side by side, round-robin on the same input (median of
``--repeats``, ``--threads`` threads): the eager fp32 network (the exported one: dense backend), the fp32 and
int8 ONNX models under onnxruntime, and, for reference, the eager network after torch's dynamic int8
quantisation of its ``nn.Linear`` layers (``torch.ao.quantization.quantize_dynamic``; it saves no artefact).
Without ``--ckpt`` the network is the app's default config (``conf/<app>.yaml`` plus ``-o`` overrides),
freshly initialised. Prints a markdown table; ``--json`` writes its rows.

The table's differences are on one random input, far from real data (a vision model's logits on Gaussian
noise are ~100x larger than on images). ``--test-images N`` (vision) also runs N images of the checkpoint's
test split through the eager fp32 network and the int8 model: accuracy of each, top-1 agreement, and the
median of max |int8 - eager| / max |eager|. ``--test-manifest <manifest.jsonl>`` (audio) transcribes its clips
greedily: the eager fp32 network on each clip, and the eager and int8 models on the clip padded to the
artefact's fixed length (the longest clip; the dense backend's mask fixes it): WER and CER of each.
``--test-windows N`` (the genomics DNA language model) scores N windows of the checkpoint's test split with
the eager fp32 network and the int8 model: bits per base of each over the same scored bases.
``--profile`` runs both ONNX models under onnxruntime's profiler (``--repeats`` calls each) and prints the time
per operator type, and what bounds int8's gain: the int8 model's time outside its quantised operators, i.e.
its speed against fp32 ONNX if the quantised products took no time at all.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning
import torch
from torch import nn

from core_attn.training.callbacks import CONFIG_KEY
from core_attn.training.cli import CONF_DIR
from core_attn.training.export import checkpoint_network, load_exported

APPS = ("vision", "audio", "genomics")
# operators of onnxruntime's quantised graphs (dynamic and static); the rest of an int8 model runs in fp32
QUANTISED_OPS = {"DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeLinear",
                 "ConvInteger", "QLinearMatMul", "QLinearConv", "QuantizeLinear", "DequantizeLinear"}


def profile_onnx(path: str, x: torch.Tensor, threads: int, repeats: int) -> dict[str, float]:
    """Milliseconds per call spent in each operator type of the ONNX model at ``path`` (onnxruntime's
    profiler: the sum of its node kernel times over ``repeats`` calls after one warm-up, divided by
    ``repeats``)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(repeats + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warm_up = runs[0]  # the first call (allocations, packing) is not counted
    ms: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and not warm_up[0] <= e["ts"] <= warm_up[1]:
            ms[e["args"]["op_name"]] = ms.get(e["args"]["op_name"], 0.0) + e["dur"] / 1e3 / (len(runs) - 1)
    return dict(sorted(ms.items(), key=lambda kv: -kv[1]))


def print_profile(ops: dict[str, dict[str, float]]) -> None:
    """The operator-type table of :func:`profile_onnx` for the fp32 and int8 ONNX models, and the bound on
    int8's gain: fp32 ONNX time over the int8 model's time outside its quantised operators."""
    fp32, int8 = ops["fp32 ONNX"], ops["int8 ONNX"]
    print("onnxruntime profile, ms per call (kernel time by operator type):")
    print("| operator | fp32 ONNX | int8 ONNX |")
    print("|---|---|---|")
    for op in sorted(set(fp32) | set(int8), key=lambda o: -max(fp32.get(o, 0.0), int8.get(o, 0.0))):
        print(f"| {op}{' (quantised)' if op in QUANTISED_OPS else ''} | {fp32.get(op, 0.0):.2f} | "
              f"{int8.get(op, 0.0):.2f} |")
    total32, total8 = sum(fp32.values()), sum(int8.values())
    rest = sum(v for op, v in int8.items() if op not in QUANTISED_OPS)
    print(f"| total | {total32:.2f} | {total8:.2f} |")
    print(f"int8 / fp32 ONNX speed from the profile {total32 / total8:.2f}x; the int8 model spends {rest:.2f} ms "
          f"outside its quantised operators, so even if those took no time it would be at most "
          f"{total32 / rest:.2f}x the fp32 ONNX model")


def untrained_checkpoint(app: str, overrides: list[str], folder: Path) -> Path:
    """``conf/<app>.yaml`` with ``overrides``, its module freshly initialised and saved as a checkpoint (with
    the resolved config, as training stores it)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from core_attn.training.train import resolved_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(app, overrides=[*overrides, f"paths.output_dir={folder}"])
    torch.manual_seed(0)
    module = instantiate(cfg.module, _recursive_=False, _convert_="all")
    path = folder / "untrained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__, CONFIG_KEY: resolved_config(cfg)}, path)
    return path


def exported(app: str, ckpt: Path, folder: Path, kwargs: dict) -> tuple[dict, nn.Module, torch.Tensor]:
    """Export ``ckpt`` with int8; return the export's result, the eager network it exported, and an input."""
    if app == "vision":
        from vision.export import export
        from vision.module import ImageClassifier as Module
    elif app == "audio":
        from audio.export import FeaturesToLogProbs, export
        from audio.module import SpeechRecognizer as Module
    else:
        from genomics.export import export
        from genomics.module import GenomicsModule as Module
    backend = kwargs.pop("attention_backend", "dense")
    result = export(ckpt_path=str(ckpt), format="onnx", out=str(folder / f"{app}.onnx"), attention_backend=backend,
                    quantize="int8", **kwargs)
    _, net = checkpoint_network(Module, ckpt, attention_backend=backend,
                                overrides={"decoder": "greedy"} if app == "audio" else None)
    gen = torch.Generator().manual_seed(1)  # another input than the export's check
    if app == "audio":
        net = FeaturesToLogProbs(net).eval()
    if app == "genomics":
        x = torch.randint(4, net.vocab_size, result["input_shape"], generator=gen)
    else:
        x = torch.randn(result["input_shape"], generator=gen)
    return result, net, x


def _test_batches(ckpt: Path):
    """The test dataloader of the checkpoint's stored data config."""
    from hydra.utils import instantiate

    from core_attn.training.runtime import load_run_config

    data = instantiate(load_run_config(ckpt)["data"], _convert_="all")
    data.setup("test")
    return data.test_dataloader()


def on_test_images(ckpt: Path, net: nn.Module, int8, limit: int) -> dict:
    """Accuracy of ``net`` and of the int8 model ``int8`` on up to ``limit`` images of the test split of the
    checkpoint's stored data config, one image per call (the artefact's batch size)."""
    images = ((x, y) for xs, ys in _test_batches(ckpt) for x, y in zip(xs.split(1), ys.tolist()))
    n = right32 = right8 = same = 0
    rels = []
    with torch.no_grad():
        for x, y in itertools.islice(images, limit):
            want, got = net(x), int8(x)
            p32, p8 = want.argmax(-1).item(), got.argmax(-1).item()
            n, right32, right8, same = n + 1, right32 + (p32 == y), right8 + (p8 == y), same + (p32 == p8)
            rels.append(((got - want).abs().max() / want.abs().max()).item())
    return {"images": n, "fp32_acc": right32 / n, "int8_acc": right8 / n, "agreement": same / n,
            "median_rel_diff": statistics.median(rels)}


def on_test_windows(ckpt: Path, net: nn.Module, int8, limit: int, length: int) -> dict:
    """Bits per base of ``net`` and of the int8 model ``int8`` on up to ``limit`` windows of the test split of
    the checkpoint's stored data config (a causal DNA LM), one window per call. Windows shorter than the
    artefact's ``length`` are padded at the end (a causal model's earlier positions do not see it); only the
    bases the test scores count (targets other than IGNORE, no padding)."""
    from genomics.datasets import IGNORE
    from genomics.module import target_bits

    windows = ((t, y) for b in _test_batches(ckpt) for t, y in zip(b["tokens"].split(1), b["targets"].split(1)))
    n = scored = 0
    bits = {"fp32": 0.0, "int8": 0.0}
    with torch.no_grad():
        for tokens, targets in itertools.islice(windows, limit):
            w = tokens.shape[1]
            if w > length:
                raise ValueError(f"test windows of {w} tokens are longer than the artefact's {length}")
            keep = targets != IGNORE
            x = torch.nn.functional.pad(tokens, (0, length - w), value=int(tokens[0, -1]))
            for name, f in (("fp32", net), ("int8", int8)):
                bits[name] += target_bits(f(x)[:, :w], targets)[keep].double().sum().item()
            scored += int(keep.sum())
            n += 1
    if not scored:
        raise ValueError("the test split has no scored bases")
    return {"windows": n, "bases": scored, "fp32_bpb": bits["fp32"] / scored, "int8_bpb": bits["int8"] / scored}


def _manifest_features(ckpt: Path, manifest: str, limit: int | None) -> tuple[list[torch.Tensor], list[str]]:
    """(1, T, n_mels) features of each clip of a JSONL manifest (the checkpoint's front end, no warp) and the
    normalised transcripts."""
    import sys

    from audio.module import SpeechRecognizer
    from audio.text import normalize_text

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from asr_peer import _clips, _wave  # the peer benchmark's clip reader (benchmarks/ is not a package)
    finally:
        sys.path.pop(0)
    _, net = checkpoint_network(SpeechRecognizer, ckpt, overrides={"decoder": "greedy"})
    feats = []
    with torch.no_grad():
        clips = _clips(manifest)[:limit]
        for clip in clips:
            feats.append(net.features(torch.from_numpy(_wave(clip, net.features.sample_rate))[None])[0])
    return feats, [normalize_text(c["text"]) for c in clips]


def on_test_manifest(feats: list[torch.Tensor], refs: list[str], net: nn.Module, int8, frames: int) -> dict:
    """Greedy WER/CER on the clips' features ``feats``: the eager fp32 network on each clip as is, and the eager
    and int8 models on the clip padded to the artefact's ``frames`` (its time axis is fixed: the dense
    backend's mask has the exported length) with the clip's quietest frame."""
    from audio.decoding import error_rates, greedy_texts
    from audio.text import CharTokenizer

    tok = CharTokenizer()
    hyps: dict[str, list[str]] = {"fp32": [], "fp32_padded": [], "int8_padded": []}

    def text(f, x: torch.Tensor, frames_used: int) -> str:
        lp = f(x)
        n = max(1, round(lp.shape[1] * frames_used / x.shape[1]))  # the output frames of the clip itself
        return greedy_texts(lp[:, :n], torch.tensor([n]), tok)[0]

    with torch.no_grad():
        for x in feats:
            t = x.shape[1]
            quiet = x[:, x.sum(-1).argmin()]  # (1, n_mels)
            padded = torch.cat([x, quiet[:, None].expand(1, frames - t, x.shape[2])], 1)
            hyps["fp32"].append(text(net, x, t))
            hyps["fp32_padded"].append(text(net, padded, t))
            hyps["int8_padded"].append(text(int8, padded, t))
    out = {"clips": len(feats), "frames": frames}
    for name, h in hyps.items():
        rates = error_rates(h, refs)
        out[f"{name}_wer"], out[f"{name}_cer"] = rates["wer"], rates["cer"]
    out["same_text"] = sum(a == b for a, b in zip(hyps["fp32_padded"], hyps["int8_padded"])) / max(1, len(feats))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("app", choices=APPS)
    p.add_argument("--ckpt", default=None, help="a checkpoint of the app; default: its config, untrained")
    p.add_argument("-o", "--override", action="append", default=[], help="config override for the untrained model")
    p.add_argument("--export-kwargs", default="{}", help='keyword arguments of <app>.export (JSON): {"atol": 1e-3}')
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--test-images", type=int, default=0, help="vision: compare on this many test-split images")
    p.add_argument("--test-manifest", default=None, help="audio: greedy WER/CER of fp32 and int8 on this JSONL "
                                                          "manifest's clips")
    p.add_argument("--test-windows", type=int, default=0, help="genomics (DNA LM): bits per base of fp32 and int8 "
                                                               "on this many test-split windows")
    p.add_argument("--limit", type=int, default=None, help="--test-manifest: at most this many clips")
    p.add_argument("--profile", action="store_true", help="time per operator type of the fp32 and int8 ONNX models")
    a = p.parse_args(argv)
    if a.test_images and (a.app != "vision" or not a.ckpt):
        p.error("--test-images needs app vision and --ckpt (images of the checkpoint's stored data config)")
    if a.test_manifest and (a.app != "audio" or not a.ckpt):
        p.error("--test-manifest needs app audio and --ckpt (a trained speech model)")
    if a.test_windows and (a.app != "genomics" or not a.ckpt):
        p.error("--test-windows needs app genomics and --ckpt (a trained DNA language model)")
    kwargs = json.loads(a.export_kwargs)
    if a.test_manifest:  # the artefact's fixed length: the longest clip (the others are padded to it)
        feats, refs = _manifest_features(Path(a.ckpt), a.test_manifest, a.limit)
        if not feats:
            p.error(f"--test-manifest {a.test_manifest}: no clips")
        kwargs["frames"] = max(f.shape[1] for f in feats)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = Path(a.ckpt) if a.ckpt else untrained_checkpoint(a.app, a.override, folder)
        result, net, x = exported(a.app, ckpt, folder, kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's notice that eager quantisation moves to torchao
            torch_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(net), {nn.Linear}, dtype=torch.qint8)
        runs = {"fp32 eager (torch)": (net, None), "int8 eager (torch quantize_dynamic)": (torch_int8, None),
                "fp32 ONNX (onnxruntime)": (load_exported(result["path"], "onnx", threads=a.threads),
                                            result["size_bytes"]),
                "int8 ONNX (onnxruntime)": (load_exported(result["int8_path"], "onnx", threads=a.threads),
                                            result["int8_size_bytes"])}
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.no_grad():
            want = net(x)
            outs = {k: f(x) for k, (f, _) in runs.items()}  # also the warm-up
            for _ in range(a.repeats):
                for k, (f, _) in runs.items():
                    t = time.perf_counter()
                    f(x)
                    times[k].append(time.perf_counter() - t)
        if a.profile:
            ops = {k: profile_onnx(result[key], x, a.threads, a.repeats)
                   for k, key in (("fp32 ONNX", "path"), ("int8 ONNX", "int8_path"))}
        if a.test_images:
            test = on_test_images(ckpt, net, runs["int8 ONNX (onnxruntime)"][0], a.test_images)
        if a.test_windows:
            dna = on_test_windows(ckpt, net, runs["int8 ONNX (onnxruntime)"][0], a.test_windows,
                                  result["input_shape"][1])
        if a.test_manifest:
            speech = on_test_manifest(feats, refs, net, runs["int8 ONNX (onnxruntime)"][0], kwargs["frames"])
    base = statistics.median(times["fp32 eager (torch)"])
    rows = []
    for k, (_, size) in runs.items():
        ms = statistics.median(times[k])
        got = outs[k].float()
        rows.append({"model": k, "size_mb": size / 1e6 if size else None, "ms": 1e3 * ms, "speed_vs_eager": base / ms,
                     "rel_diff": ((got - want).abs().max() / want.abs().max()).item(),
                     "argmax_agreement": (got.argmax(-1) == want.argmax(-1)).float().mean().item()})
    source = a.ckpt or " ".join([f"untrained conf/{a.app}.yaml", *a.override])
    print(f"{a.app} ({source}), input "
          f"{result['input_shape']}, {a.threads} thread(s), median of {a.repeats}")
    print("| model | file MB | ms | speed vs fp32 eager | max abs diff / max abs eager | argmax agreement |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['size_mb']:.2f}" if r["size_mb"] else "-"
        print(f"| {r['model']} | {size} | {r['ms']:.1f} | {r['speed_vs_eager']:.2f}x | {r['rel_diff']:.2%} | "
              f"{r['argmax_agreement']:.1%} |")
    if a.test_images:
        print(f"{test['images']} test images: accuracy fp32 eager {test['fp32_acc']:.1%}, int8 ONNX "
              f"{test['int8_acc']:.1%}; top-1 agreement {test['agreement']:.1%}; median max abs diff / max abs "
              f"eager {test['median_rel_diff']:.2%}")
        rows.append({"model": "test images", **test})
    if a.test_windows:
        print(f"{dna['windows']} test windows ({dna['bases']} bases scored): bits per base fp32 eager "
              f"{dna['fp32_bpb']:.4f}, int8 ONNX {dna['int8_bpb']:.4f} ({dna['int8_bpb'] - dna['fp32_bpb']:+.4f})")
        rows.append({"model": "test windows", **dna})
    if a.test_manifest:
        print(f"{speech['clips']} clips of {a.test_manifest}, greedy WER / CER: fp32 eager {speech['fp32_wer']:.2%} / "
              f"{speech['fp32_cer']:.2%}; padded to {speech['frames']} frames: fp32 eager {speech['fp32_padded_wer']:.2%} "
              f"/ {speech['fp32_padded_cer']:.2%}, int8 ONNX {speech['int8_padded_wer']:.2%} / "
              f"{speech['int8_padded_cer']:.2%}; same text {speech['same_text']:.1%} of clips")
        rows.append({"model": "test manifest", **speech})
    if a.profile:
        print_profile(ops)
        rows.append({"model": "profile (ms per call by operator type)", **ops})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
