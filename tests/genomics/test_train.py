"""Each task end to end, in-process and tiny: ``train(cfg)`` per experiment, ``evaluate`` from a checkpoint,
and the one-pass long-context inference. The built-in synthetic data sets are generated into tmp."""

from __future__ import annotations

import json

import pytest

from core_attn.training import train
from genomics.evaluate import run as evaluate_run
from genomics.infer import infer
from tests.conftest import needs_onnx
from tests.training.tiny import compose_config

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "logger=csv"]
TINY_MODEL = ["model.dim=16", "model.depth=1", "model.num_heads=2"]


def _cfg(name, overrides, data_dir, out):
    return compose_config(name, [*QUIET, *TINY_MODEL, f"paths.data_dir={data_dir}", *overrides], out)


LM = ["data.window=128", "data.batch_size=2", "data.train_samples=6", "attention.window=16",
      "data.markov_max_order=3", "trainer=fast"]


def _lm(genome):
    return [*LM, "data.dataset=path", f"data.path={genome}"]


def test_dna_lm_trains_tests_evaluates_and_infers(data_dir, genome, tmp_path):
    metrics = train(_cfg("genomics", _lm(genome), data_dir, tmp_path / "run"))
    assert metrics["status"] == "ok" and metrics["variant"] == "local"
    test = metrics["test"]
    assert {"test/bpb", "test/markov_bpb", "test/markov_order"} <= set(test)
    assert 0.5 < test["test/bpb"] < 4 and 0.5 < test["test/markov_bpb"] < 2.5
    assert metrics["metric_name"] == "test/bpb"
    assert json.loads((tmp_path / "run/metrics.json").read_text())["test"] == test
    ckpt = metrics["last_ckpt"]

    ev = evaluate_run(compose_config("genomics_eval", ["extras.print_config=false", f"ckpt_path={ckpt}", "trainer=fast",
                                                       f"paths.data_dir={data_dir}"], tmp_path / "eval"))
    assert ev["metric_name"] == "test/bpb" and "test/markov_bpb" in ev["test"]

    out = infer(_cfg("genomics_infer", [*_lm(genome), f"infer.ckpt_path={ckpt}"], data_dir, tmp_path / "infer"))
    assert out["trained"] and out["region"] == "test" and out["sequences"] == 1
    assert out["bases"] == 3_000 - 1 and out["markov_bpb"] == pytest.approx(test["test/markov_bpb"])
    assert out["peak_rss_mb"] > 0


def test_infer_untrained_whole_genome_prefix_bf16(data_dir, genome, tmp_path):
    out = infer(_cfg("genomics_infer", [*_lm(genome), "infer.region=genome", "infer.length=5000", "infer.precision=bf16",
                                      "infer.chunk=null"],
                     data_dir, tmp_path / "infer"))
    assert not out["trained"] and out["bases"] == 4999 and out["longest"] == 5000 and "markov_bpb" not in out


def test_infer_stream_equals_one_pass_and_writes_bits_as_bedgraph(data_dir, genome, tmp_path):
    from tests.genomics.conftest import write_fasta

    from Bio import SeqIO

    seq = str(SeqIO.read(genome, "genbank").seq)
    fa = write_fasta(tmp_path / "contigs.fa", [("c1 long", seq[:2501]), ("c2", seq[2501:2900])])
    common = [*_lm(genome), "infer.region=genome", "infer.chunk=null", f"infer.fasta={fa}"]
    one = infer(_cfg("genomics_infer", common, data_dir, tmp_path / "one"))
    streamed = infer(_cfg("genomics_infer", [*common, "infer.mode=stream", "infer.step=97", "infer.bedgraph=true"],
                          data_dir, tmp_path / "stream"))
    assert one["sequences"] == streamed["sequences"] == 2 and one["bases"] == streamed["bases"] == 2500 + 398
    assert streamed["bpb"] == pytest.approx(one["bpb"], rel=1e-6)
    lines = (tmp_path / "stream/contigs.bits.bedgraph").read_text().splitlines()
    assert lines[0].startswith("track type=bedGraph")
    rows = [line.split("\t") for line in lines[1:]]
    for chrom, first, last in (("c1", 1, 2501), ("c2", 1, 399)):
        mine = [(int(a), int(b), float(v)) for c, a, b, v in rows if c == chrom]
        assert mine[0][0] == first and mine[-1][1] == last
        assert all(x[1] == y[0] for x, y in zip(mine, mine[1:]))
    covered = sum(int(b) - int(a) for _, a, b, _ in rows)
    total = sum((int(b) - int(a)) * float(v) for _, a, b, v in rows)  # values rounded to 3 decimals
    assert covered == streamed["bases"] and total / covered == pytest.approx(one["bpb"], abs=1e-3)
    with pytest.raises(ValueError, match=r"infer.bedgraph=true writes bits as they are computed: it needs "
                                         r"infer.mode=stream"):
        infer(_cfg("genomics_infer", [*common, "infer.bedgraph=true"], data_dir, tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"infer.mode='chunked' is not allowed"):
        infer(_cfg("genomics_infer", [*common, "infer.mode=chunked"], data_dir, tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"block 0: attention=dense cannot be streamed exactly"):
        dense = [o for o in common if not o.startswith("attention.")]
        infer(_cfg("genomics_infer", [*dense, "infer.mode=stream", "attention=dense"], data_dir, tmp_path / "bad"))
    short = write_fasta(tmp_path / "short.fa", [("tiny", "A")])
    with pytest.raises(ValueError, match=r"infer.fasta='.*short.fa' holds no record of at least 2 bases to score"):
        infer(_cfg("genomics_infer", [*_lm(genome), f"infer.fasta={short}"], data_dir, tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match=r"infer.fasta='.*nope.fa': no such file"):
        infer(_cfg("genomics_infer", [*_lm(genome), f"infer.fasta={tmp_path / 'nope.fa'}"], data_dir, tmp_path / "bad"))


def test_annotation_trains(data_dir, genome, tmp_path):
    metrics = train(_cfg("genomics", ["experiment=genomics_annotate", "data.dataset=path", f"data.path={genome}",
                                      "data.window=1024", "data.train_samples=2", "attention.window=8",
                                      "trainer.fast_dev_run=true"], data_dir, tmp_path / "run"))
    assert {"test/acc", "test/f1", "test/mcc", "test/majority_acc"} <= set(metrics["test"])


def test_protein_mlm_trains(data_dir, tmp_path):
    metrics = train(_cfg("genomics", ["experiment=genomics_protein_mlm", "data.dataset=builtin_proteins",
                                      "data.max_len=64", "data.batch_size=4", "attention.window=8",
                                      "trainer.fast_dev_run=true"], data_dir, tmp_path / "run"))
    test = metrics["test"]
    assert {"test/ppl", "test/unigram_ppl", "test/ppl_gain"} <= set(test)
    assert 5 < test["test/unigram_ppl"] < 25


def test_protein_mlm_with_homologs_trains(data_dir, tmp_path):
    metrics = train(_cfg("genomics", ["experiment=genomics_protein_mlm_homologs", "data.dataset=builtin_proteins",
                                      "data.max_len=32", "data.batch_size=4", "trainer.fast_dev_run=true"],
                         data_dir, tmp_path / "run"))
    assert {"test/ppl", "test/unigram_ppl", "test/ppl_gain"} <= set(metrics["test"])
    assert len(list((data_dir / "cache").glob("homologs-*.npz"))) == 1


def test_classification_trains(data_dir, tmp_path):
    metrics = train(_cfg("genomics", ["experiment=genomics_classify_16s", "data.dataset=builtin_labelled",
                                      "data.labels.regex='class=(\\S+)'", "data.labels.group_regex=null",
                                      "data.labels.min_count=1", "data.num_outputs=4", "data.max_len=640", "data.batch_size=4",
                                      "attention.window=8", "trainer.fast_dev_run=true"], data_dir, tmp_path / "run"))
    test = metrics["test"]
    assert {"test/acc", "test/f1", "test/majority_acc", "test/kmer_nb_acc", "test/kmer_nb_f1"} <= set(test)
    assert test["test/kmer_nb_acc"] >= test["test/majority_acc"]


def test_builtin_genome_is_generated(data_dir):
    from genomics.prepare import dataset_path

    path = dataset_path("builtin_genome", data_dir)
    assert path.name == "genome.gbk" and path.stat().st_size > 200_000


def test_default_config_is_the_builtin_lm(tmp_path):
    cfg = compose_config("genomics", [], tmp_path)
    assert cfg.data.dataset == "builtin_genome" and cfg.module._target_ == "genomics.module.CausalLM"
    assert cfg.attention.causal is True
    expected = {"genomics_dna_lm": ("CausalLM", "val/bpb", True), "genomics_annotate": ("TokenClassifier", "val/mcc", False),
                "genomics_protein_mlm": ("MaskedLM", "val/ppl", False),
                "genomics_classify_16s": ("SequenceClassifier", "val/acc", False)}
    for name, (module, monitor, causal) in expected.items():
        exp = compose_config("genomics", [f"experiment={name}"], tmp_path)
        assert exp.data.dataset in ("leptospira", "uniprot20k", "16s")
        assert exp.module.model.vocab_size == exp.data.vocab_size
        # the experiment wins over the primary config's own values (module, monitor, attention.causal)
        assert (exp.module._target_, exp.monitor, exp.attention.causal) == (f"genomics.module.{module}", monitor, causal)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, genome, tmp_path):
    from tests.ops.helpers import POISON_AT_4, assert_nonfinite_stops_and_keeps_last_good

    cfg = _cfg("genomics", [*_lm(genome), *POISON_AT_4], data_dir, tmp_path / "run")
    assert_nonfinite_stops_and_keeps_last_good(cfg)


@pytest.mark.parametrize("task,target,ok", [
    ("classify", "genomics.module.CausalLM", False), ("lm", "genomics.module.SequenceClassifier", False),
    ("classify", "genomics.module.SequenceClassifier", True), ("annotate", "genomics.module.TokenClassifier", True),
    ("lm", "my.own.Module", True),  # not a genomics task module: not ours to judge
])
def test_task_and_module_must_agree(task, target, ok):
    from genomics.module import TASKS, check_task

    if ok:
        check_task(task, target)
        return
    cls, monitor, mode, experiment = TASKS[task]
    with pytest.raises(ValueError, match=rf"data.task='{task}' is trained by genomics.module.{cls.__name__}, but "
                                         rf"module._target_={target}: start from experiment={experiment} \(and override "
                                         rf"its data\), or add module._target_=genomics.module.{cls.__name__} "
                                         rf"monitor={monitor} monitor_mode={mode}"):
        check_task(task, target)


@needs_onnx
def test_int8_export_scores_test_windows(data_dir, genome, tmp_path):
    """``benchmarks/int8_export.py genomics --test-windows``: bits per base of the fp32 network and the int8
    ONNX model over the same scored bases of the checkpoint's test split."""
    import importlib.util
    from pathlib import Path

    metrics = train(_cfg("genomics", _lm(genome), data_dir, tmp_path / "run"))
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_export.py"
    spec = importlib.util.spec_from_file_location("int8_export", script)  # benchmarks/ is not a package
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["genomics", "--ckpt", metrics["last_ckpt"], "--test-windows", "3", "--repeats", "1"])
    dna = rows[-1]
    assert dna["model"] == "test windows" and dna["windows"] == 3 and 0 < dna["bases"] <= 3 * 128
    assert abs(dna["fp32_bpb"] - dna["int8_bpb"]) < 0.1 and 0.5 < dna["fp32_bpb"] < 4
    with pytest.raises(SystemExit):
        bench.main(["vision", "--test-windows", "3"])
