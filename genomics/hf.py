"""Start from a Hugging Face text encoder: a local Longformer, BigBird, RoBERTa or BERT folder as core_attn layers.

``load_hf_encoder("/path/longformer-base-4096")`` reads the folder's ``config.json``, builds the same network
from core_attn parts (:class:`HFEncoder`: word + position + token-type-0 embeddings and a LayerNorm, then
post-norm blocks ``x = LN(x + attn(x)); x = LN(x + mlp(x))`` of :class:`core_attn.layers.MultiheadAttention`
and :class:`core_attn.layers.Mlp`) and copies every tensor of ``model.safetensors`` (or ``pytorch_model.bin``)
onto it; HF's separate query/key/value projections are concatenated into the fused ``qkv``. The attention is
the checkpoint's own pattern (Longformer: the ``local`` variant with its ``attention_window``; BigBird
``block_sparse``: the ``bigbird`` variant; RoBERTa, BERT, BigBird ``original_full``: dense) or any core_attn
variant, so a dense pretrained encoder fine-tunes as an efficient one, as Longformer and BigBird were made
from RoBERTa. Nothing is downloaded: only local folders.

What computes HF's hidden states (at the non-padding tokens) and what does not:

* RoBERTa, BERT, BigBird ``original_full``: dense attention, HF's values.
* Longformer without global attention: ``local`` with ``window = attention_window // 2`` keys on each side
  (HF's band: ``|i - j| <= attention_window // 2``), inputs padded to a multiple of the largest window as HF
  pads them, so inputs shorter than the window run too: HF's values. Longformer's *global* attention (its
  ``global_attention_mask`` and the separate ``query_global``/``key_global``/``value_global`` projections)
  cannot be expressed by core_attn's variants, which share one q/k/v projection: those tensors are loaded
  nowhere and an ``attention_mask`` value 2 (HF's "global") raises.
* BigBird ``block_sparse``: ``bigbird`` with HF's block size, 3 window blocks, the first and the last block
  global and ``num_random_blocks`` random blocks (seeded by the layer index, the same in training and
  eval). Not HF's values, because HF's random blocks cannot be expressed: in eval mode HF replaces every
  random block by the first block (which then counts ``1 + num_random_blocks`` times in the softmax of
  query blocks 1 .. n-2), in training mode it draws other blocks per head with numpy. The window and
  global blocks are HF's (tested with that duplication written out). HF also runs inputs of at most
  ``(5 + 2 * num_random_blocks) * block_size`` tokens with full attention, where ``bigbird`` raises for
  inputs under ``5 * block_size`` tokens (pass ``attention=build_attention("dense")`` for short inputs).

Hidden states at padding positions are not HF's (HF's Longformer and block-sparse BigBird set their
attention output to zero, the dense models let them attend); nothing should read them. The attention
dropout (``attention_probs_dropout_prob``) is not applied (core_attn's sparse variants have none); the
hidden dropout is, where HF applies it.

Reference: Beltagy et al. 2020, "Longformer: The Long-Document Transformer" (arXiv:2004.05150); Zaheer et
al. 2020, "Big Bird: Transformers for Longer Sequences" (arXiv:2007.14062); Liu et al. 2019, "RoBERTa"
(arXiv:1907.11692); Devlin et al. 2019, "BERT" (arXiv:1810.04805); Wolf et al. 2020, "Transformers"
(the checkpoint layouts).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core_attn.attention.base import AttentionBase
from core_attn.layers import AttentionSpec, Mlp, MultiheadAttention, attention_factory
from core_attn.registry import build_attention
from core_attn.training.hf_files import WEIGHT_FILES, hf_folder, listed, load_mapped, read_hf_weights
from core_attn.validation import did_you_mean

log = logging.getLogger(__name__)

MODEL_TYPES = ("longformer", "big_bird", "roberta", "bert")
# the attribute the task models (…ForMaskedLM, …ForSequenceClassification) nest the encoder under
PREFIXES = {"longformer": "longformer", "big_bird": "bert", "roberta": "roberta", "bert": "bert"}
# position ids start at pad_token_id + 1 and skip padding (fairseq's make_positions); else 0, 1, 2, ...
PADDING_AWARE_POSITIONS = ("longformer", "roberta")
# the configs' defaults, for keys a config.json leaves out (transformers fills them in the same way)
HF_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
               "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
               "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
TYPE_DEFAULTS = {
    "longformer": {"vocab_size": 30522, "pad_token_id": 1, "attention_window": 512},
    "big_bird": {"vocab_size": 50358, "pad_token_id": 0, "hidden_act": "gelu_new", "max_position_embeddings": 4096,
                 "attention_type": "block_sparse", "block_size": 64, "num_random_blocks": 3, "use_bias": True,
                 "rescale_embeddings": False},
    "roberta": {"vocab_size": 50265, "pad_token_id": 1},
    "bert": {"vocab_size": 30522, "pad_token_id": 0},
}
# hidden_act -> nn.GELU(approximate=...): "gelu" is the exact erf GELU, "gelu_new" HF's tanh approximation
ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
# config values the blocks can represent (a key absent from config.json is not checked)
SUPPORTED = {"position_embedding_type": ["absolute"], "is_decoder": [False], "add_cross_attention": [False],
             "attention_type": ["block_sparse", "original_full"]}
POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "vocab_size")
# one HF layer -> ours; query, key and value (in that order) are concatenated into our fused qkv
BLOCK_KEYS = {"attention.self.query": "attn.qkv", "attention.self.key": "attn.qkv",
              "attention.self.value": "attn.qkv", "attention.output.dense": "attn.proj",
              "attention.output.LayerNorm": "norm1", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
              "output.LayerNorm": "norm2"}
EMBEDDING_KEYS = {"word_embeddings": "embeddings.word", "position_embeddings": "embeddings.position",
                  "token_type_embeddings": "embeddings.token_type", "LayerNorm": "embeddings.norm"}
GLOBAL_PROJECTIONS = ("query_global", "key_global", "value_global")  # Longformer's global attention
# tensors of the encoder that the last hidden state does not use: the pooler (BERT: pooler.dense, BigBird:
# pooler) and the position-id buffer older transformers versions saved
UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids")


def _folder(hf_path: str | Path | None) -> Path:
    if not hf_path:
        raise ValueError(f"hf_path is not set: load_hf_encoder needs a local folder with config.json and "
                         f"{' or '.join(WEIGHT_FILES)}")
    return hf_folder(hf_path, "hf_path")


def _check_window(path: Path, config: dict[str, Any]) -> list[int]:
    """Longformer's ``attention_window`` as one total width per layer (positive, even)."""
    value, depth = config["attention_window"], config["num_hidden_layers"]
    windows = [value] * depth if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(windows, list) and len(windows) == depth and all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 and w % 2 == 0 for w in windows)
    if not ok:
        raise ValueError(f"{path}: attention_window={value!r} is not supported; expected a positive even int or a "
                         f"list of num_hidden_layers={depth} of them (the total window width per layer)")
    return windows


def read_hf_encoder_config(hf_path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of the folder ``hf_path``, checked and completed with the config class's defaults.

    Longformer's ``attention_window`` comes back as one width per layer.

    Raises:
        FileNotFoundError: no such folder, or no config.json in it.
        ValueError: unreadable JSON, a ``model_type`` other than longformer, big_bird, roberta, bert, or a
            setting :class:`HFEncoder` cannot represent (named with what is supported).
    """
    path = _folder(hf_path) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"hf_path={str(path.parent)!r} has no config.json (the folder save_pretrained "
                                "writes holds one)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable config.json ({e})") from e
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    if kind not in MODEL_TYPES:
        raise ValueError(f"{path}: model_type={kind!r} is not supported; expected one of {list(MODEL_TYPES)}."
                         f"{did_you_mean(kind, MODEL_TYPES)}")
    config = {**HF_DEFAULTS, **TYPE_DEFAULTS[kind], **raw}
    if config["hidden_act"] not in ACTIVATIONS:
        raise ValueError(f"{path}: hidden_act={config['hidden_act']!r} is not supported by genomics.hf.HFEncoder; "
                         f"supported: {list(ACTIVATIONS)}")
    for key, allowed in SUPPORTED.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported by genomics.hf.HFEncoder; "
                             f"supported: {allowed}")
    for key in POSITIVE_INTS:
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"{path}: {key}={config[key]!r} must be a positive int")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ValueError(f"{path}: hidden_size={config['hidden_size']} is not divisible by "
                         f"num_attention_heads={config['num_attention_heads']}")
    pad = config["pad_token_id"]
    if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < config["vocab_size"]:
        raise ValueError(f"{path}: pad_token_id={pad!r} must be a token id in [0, vocab_size={config['vocab_size']})")
    if kind == "longformer":
        config["attention_window"] = _check_window(path, config)
    if kind == "big_bird":
        for key, least in (("block_size", 1), ("num_random_blocks", 0)):
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{path}: {key}={value!r} must be an int >= {least}")
    return config


def max_tokens(config: Mapping[str, Any]) -> int:
    """The longest input the checkpoint's position table holds (RoBERTa-style positions start at pad + 1)."""
    offset = config["pad_token_id"] + 1 if config["model_type"] in PADDING_AWARE_POSITIONS else 0
    return config["max_position_embeddings"] - offset


class HFEmbeddings(nn.Module):
    """BERT-family embeddings: word + position + token type 0, then LayerNorm (and dropout).

    Args:
        vocab_size: token ids.
        dim: width C.
        max_positions: rows of the position table.
        type_vocab_size: rows of the token-type table (only row 0 is used).
        pad_token_id: the padding token.
        padding_aware: RoBERTa's positions: ``pad_token_id + 1 + (index among non-padding tokens)``, padding at
            ``pad_token_id`` (HF's ``create_position_ids_from_input_ids``); else ``0 .. N-1`` (BERT, BigBird).
        scale: factor on the word embeddings (BigBird's ``rescale_embeddings``: sqrt(C)).
        norm_eps: LayerNorm epsilon.
        dropout: dropout probability.
        dropout_first: dropout before the LayerNorm (BigBird) instead of after it.
    """

    def __init__(self, vocab_size: int, dim: int, max_positions: int, type_vocab_size: int, *, pad_token_id: int,
                 padding_aware: bool, scale: float = 1.0, norm_eps: float = 1e-12, dropout: float = 0.0,
                 dropout_first: bool = False):
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position = nn.Embedding(max_positions, dim)
        self.token_type = nn.Embedding(type_vocab_size, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(dropout)
        self.pad_token_id, self.padding_aware, self.scale = pad_token_id, padding_aware, scale
        self.dropout_first = dropout_first

    def positions(self, input_ids: Tensor) -> Tensor:
        """(B, N) position ids of ``input_ids`` (B, N)."""
        if self.padding_aware:
            real = input_ids.ne(self.pad_token_id).long()
            return torch.cumsum(real, dim=1) * real + self.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, N) token ids -> (B, N, C)."""
        x = self.word(input_ids) * self.scale + self.token_type.weight[0]  # (B, N, C)
        x = x + self.position(self.positions(input_ids))
        return self.norm(self.drop(x)) if self.dropout_first else self.drop(self.norm(x))


class PostNormBlock(nn.Module):
    """A post-norm (BERT) block: ``x = norm1(x + attn(x))``, then ``x = norm2(x + mlp(x))``.

    Args:
        dim: width C.
        num_heads: attention heads.
        hidden: MLP hidden width.
        attention: the variant (``None``: dense).
        qkv_bias: bias on the qkv projection.
        gelu: ``"none"`` (exact erf GELU) or ``"tanh"`` (its tanh approximation, HF's ``gelu_new``).
        dropout: dropout after the attention projection and after the MLP (where BERT has it).
        norm_eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, *, attention: AttentionBase | None = None,
                 qkv_bias: bool = True, gelu: str = "none", dropout: float = 0.0, norm_eps: float = 1e-12):
        super().__init__()
        self.attn = MultiheadAttention(dim, num_heads, attention=attention, qkv_bias=qkv_bias, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden)  # no dropout between fc1 and fc2, as in BERT
        self.mlp.act = nn.GELU(approximate=gelu)
        self.mlp_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C); ``key_padding_mask`` (B, N) bool, True = padding."""
        x = self.norm1(x + self.attn(x, key_padding_mask=key_padding_mask))
        return self.norm2(x + self.mlp_drop(self.mlp(x)))


class HFEncoder(nn.Module):
    """A Hugging Face BERT-family encoder (Longformer, BigBird, RoBERTa, BERT) over core_attn attention.

    :func:`load_hf_encoder` builds it from a checkpoint folder. ``forward`` returns the last hidden state;
    there is no global attention (Longformer's ``global_attention_mask`` is not supported: see the module
    docstring).

    Args:
        embeddings: the token embeddings.
        blocks: the post-norm blocks.
        max_len: longest input (N) the position table holds.
        pad_to_multiple_of: inputs are padded (masked padding tokens) to a multiple of this length and the
            output cut back, as HF's Longformer pads to its attention window.
        gradient_checkpointing: recompute each block in the backward pass while training (less memory).
    """

    def __init__(self, embeddings: HFEmbeddings, blocks: Sequence[PostNormBlock], *, max_len: int,
                 pad_to_multiple_of: int = 1, gradient_checkpointing: bool = False):
        super().__init__()
        self.embeddings = embeddings
        self.blocks = nn.ModuleList(blocks)
        self.max_len, self.pad_to_multiple_of = max_len, pad_to_multiple_of
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.dim = embeddings.word.embedding_dim

    def _checked_mask(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"input_ids must be an integer tensor of shape (B, N); got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        if input_ids.shape[1] > self.max_len:
            raise ValueError(f"input length N={input_ids.shape[1]} exceeds the {self.max_len} positions of the "
                             "checkpoint (max_position_embeddings)")
        if attention_mask is None:
            return None
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}; got "
                             f"{tuple(attention_mask.shape)}")
        other = (attention_mask != 0) & (attention_mask != 1)  # (B, N)
        if other.any():
            values = sorted(set(attention_mask[other].float().tolist()))
            raise ValueError(f"attention_mask holds {values}; supported: 1 (token) and 0 (padding). Longformer's "
                             "global attention (2, or a global_attention_mask) is not supported by HFEncoder")
        return attention_mask.bool()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, N) token ids and ``attention_mask`` (B, N; 1 = token, 0 = padding; ``None``: no padding) ->
        the last hidden state (B, N, C)."""
        mask = self._checked_mask(input_ids, attention_mask)  # (B, N) True = token, or None
        n = input_ids.shape[1]
        extra = -n % self.pad_to_multiple_of
        if extra:
            input_ids = nn.functional.pad(input_ids, (0, extra), value=self.embeddings.pad_token_id)
            mask = nn.functional.pad(torch.ones_like(input_ids[:, :n], dtype=torch.bool) if mask is None else mask,
                                     (0, extra), value=False)
        padding = None if mask is None else ~mask  # (B, N') True = padding key
        x = self.embeddings(input_ids)  # (B, N', C)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, padding, use_reentrant=False)
            else:
                x = block(x, padding)
        return x[:, :n]


def _own_pattern(config: Mapping[str, Any]) -> list[AttentionBase | None]:
    """One variant per layer: the checkpoint's own attention (``None`` = dense)."""
    depth = config["num_hidden_layers"]
    if config["model_type"] == "longformer":  # HF's band: |i - j| <= attention_window // 2
        return [build_attention("local", window=w // 2) for w in config["attention_window"]]
    if config["model_type"] == "big_bird" and config["attention_type"] == "block_sparse":
        return [build_attention("bigbird", block_size=config["block_size"], num_window_blocks=3, num_global_blocks=2,
                                num_random_blocks=config["num_random_blocks"], seed=i) for i in range(depth)]
    return [None] * depth


def build_hf_encoder(config: Mapping[str, Any], *, attention: AttentionSpec = None, dropout: float | None = None,
                     gradient_checkpointing: bool = False) -> HFEncoder:
    """An :class:`HFEncoder` shaped as ``config`` (as :func:`read_hf_encoder_config` returns it), initialised
    by torch; :func:`load_hf_encoder` then copies the checkpoint's tensors onto it."""
    kind, dim, heads = config["model_type"], config["hidden_size"], config["num_attention_heads"]
    p = config["hidden_dropout_prob"] if dropout is None else dropout
    embeddings = HFEmbeddings(config["vocab_size"], dim, config["max_position_embeddings"], config["type_vocab_size"],
                              pad_token_id=config["pad_token_id"], padding_aware=kind in PADDING_AWARE_POSITIONS,
                              scale=math.sqrt(dim) if config.get("rescale_embeddings") else 1.0,
                              norm_eps=config["layer_norm_eps"], dropout=p, dropout_first=kind == "big_bird")
    if attention is None:
        variants = _own_pattern(config)
    else:
        make = attention_factory(attention, {"num_heads": heads, "head_dim": dim // heads,
                                             "max_seq_len": max_tokens(config)})
        variants = [make() for _ in range(config["num_hidden_layers"])]
    blocks = [PostNormBlock(dim, heads, config["intermediate_size"], attention=v, qkv_bias=config.get("use_bias", True),
                            gelu=ACTIVATIONS[config["hidden_act"]], dropout=p, norm_eps=config["layer_norm_eps"])
              for v in variants]
    pad_to = max(config["attention_window"]) if kind == "longformer" and attention is None else 1
    return HFEncoder(embeddings, blocks, max_len=max_tokens(config), pad_to_multiple_of=pad_to,
                     gradient_checkpointing=gradient_checkpointing)


def _read_weights(folder: Path, prefix: str) -> tuple[Path, dict[str, Tensor], list[str]]:
    """The first of :data:`WEIGHT_FILES` in ``folder``, its encoder tensors (``prefix.`` removed) and the names
    of the others (a task model's heads)."""
    path, state = read_hf_weights(folder)
    # a task model (…ForMaskedLM) nests the encoder under `prefix.`; the bare encoder's own save has no prefix
    if not any(k.startswith(prefix + ".") for k in state):
        return path, state, []
    heads = sorted(k for k in state if not k.startswith(prefix + "."))
    return path, {k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")}, heads


def _key_map(depth: int, qkv_bias: bool) -> dict[str, list[str]]:
    """Our parameter name -> the HF names its tensor is made of (concatenated along dim 0)."""
    ours = {f"{own}.weight": [f"embeddings.{hf}.weight"] for hf, own in EMBEDDING_KEYS.items()}
    ours["embeddings.norm.bias"] = ["embeddings.LayerNorm.bias"]
    for i in range(depth):
        for p in ("weight", "bias"):
            for hf, own in BLOCK_KEYS.items():
                if p == "bias" and own == "attn.qkv" and not qkv_bias:
                    continue
                ours.setdefault(f"blocks.{i}.{own}.{p}", []).append(f"encoder.layer.{i}.{hf}.{p}")
    return ours


def _is_global(key: str) -> bool:
    """A tensor of Longformer's global-attention projections (``...attention.self.query_global.weight``)."""
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2] in GLOBAL_PROJECTIONS


def _unused(key: str) -> bool:
    """Encoder tensors the last hidden state does not use (pooler, position-id buffer, global projections)."""
    return key.startswith(UNUSED_PREFIXES) or _is_global(key)


def _check_keys(path: Path, state: Mapping[str, Tensor], key_map: Mapping[str, list[str]], kind: str,
                depth: int) -> None:
    """Raise naming every HF key that is missing from the file or that nothing of ours takes."""
    needed = {hf for names in key_map.values() for hf in names}
    missing = sorted(needed - state.keys())
    unexpected = sorted(k for k in state.keys() - needed if not _unused(k))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit its config.json (num_hidden_layers={depth}): missing keys "
                         f"{listed(missing)}, unexpected keys {listed(unexpected)}; expected the tensors of a "
                         f"{kind} encoder as save_pretrained writes them")


def load_hf_encoder(hf_path: str | Path, *, attention: AttentionSpec = None, dropout: float | None = None,
                    gradient_checkpointing: bool = False) -> HFEncoder:
    """An :class:`HFEncoder` holding the weights of the local Hugging Face encoder ``hf_path``.

    Args:
        hf_path: a folder with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``), as
            ``save_pretrained`` writes it for a ``LongformerModel``, ``BigBirdModel``, ``RobertaModel``,
            ``BertModel`` or a task model around one (``…ForMaskedLM``, ``…ForSequenceClassification``: the
            heads and the pooler are not loaded).
        attention: what :class:`core_attn.layers.TransformerEncoder` takes (an :class:`AttentionBase`, deep-copied
            per layer; a callable returning one, called per layer) or ``None``: the checkpoint's own pattern
            (Longformer: ``local`` with ``window = attention_window // 2`` per layer; BigBird ``block_sparse``:
            ``bigbird``; RoBERTa, BERT, BigBird ``original_full``: dense). Parameters of the variant's own
            (e.g. linformer's projections) keep their initialisation.
        dropout: hidden dropout (``None``: the checkpoint's ``hidden_dropout_prob``).
        gradient_checkpointing: recompute blocks in the backward pass.

    Longformer's global-attention projections (``query_global``, ``key_global``, ``value_global``) are loaded
    nowhere: core_attn's variants share one q/k/v projection, so global attention is not supported.

    Raises:
        FileNotFoundError: no such folder, no config.json, no weight file.
        ValueError: a config the encoder cannot represent, or tensors missing, unexpected or mis-shaped (each
            named).
    """
    config = read_hf_encoder_config(hf_path)
    kind, depth = config["model_type"], config["num_hidden_layers"]
    model = build_hf_encoder(config, attention=attention, dropout=dropout,
                             gradient_checkpointing=gradient_checkpointing)
    path, state, heads = _read_weights(Path(hf_path), PREFIXES[kind])
    key_map = _key_map(depth, config.get("use_bias", True))
    _check_keys(path, state, key_map, kind, depth)
    if heads:
        log.info("%s: %d tensors outside the encoder (task heads) are not loaded: %s", path, len(heads),
                 listed(heads, 4))
    dropped = sorted(k for k in state if _is_global(k))
    if dropped:
        log.warning("%s: Longformer's global-attention projections (%d tensors: query_global, key_global, "
                    "value_global) are not loaded; HFEncoder has no global attention", path, len(dropped))
    tensors = {own: torch.cat([state[hf] for hf in names]) for own, names in key_map.items()}
    load_mapped(model, tensors, key_map, path, what="HF encoder")
    return model
