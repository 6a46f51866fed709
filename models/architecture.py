"""Encoder architectures, read from a Hugging Face ``config.json`` as plain JSON.

Why plain JSON: importing even transformers' configuration classes imports torch, and this package
must run in the exporter process, which never imports torch. The price is that this module knows
each family's key names itself (DistilBERT says ``dim``/``n_layers`` where BERT says
``hidden_size``/``num_hidden_layers``); ``tests/test_presets.py`` keeps the presets honest against
transformers' own defaults.

Only what the cost model needs is kept: the shapes, the activation (it decides how many ops the
activation dispatches), and the attention kind (BigBird's block-sparse attention with its fall-back
to full attention at short sequences, exactly as ``BigBirdModel.forward`` decides it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from scaleprobe.models.errors import InputError

# Families this model knows, by the `model_type` of their config.json.
FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "big_bird")

# Activation name -> host ops it dispatches per call, as transformers' ACT2FN implements it.
# gelu_new is written out in Python (0.5*x*(1+tanh(...)), eight aten ops); the others are one.
ACTIVATION_OPS = {
    "gelu": 1,
    "gelu_new": 8,
    "gelu_pytorch_tanh": 1,
    "relu": 1,
    "silu": 1,
    "swish": 1,
    "tanh": 1,
    "quick_gelu": 2,
}

# Families whose base model (AutoModel) ends with a pooler: dense(h, h) + tanh on the first token.
_POOLED = {"bert", "roberta", "xlm-roberta", "albert", "big_bird"}


@dataclass(frozen=True)
class Architecture:
    """The shape of a transformer encoder, in one naming whatever the family.

    ``num_layers`` is the number of layer *applications* per forward; ``num_unique_layers`` the
    number of layers holding their own weights (ALBERT shares one layer across all twelve).
    ``embedding_size`` differs from ``hidden_size`` for ALBERT and ELECTRA (factorised embeddings,
    projected to the hidden size by one matrix product).
    """

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    embedding_size: int
    hidden_act: str
    num_unique_layers: int
    has_pooler: bool
    attention_type: str = "full"  # "full" or "block_sparse" (BigBird)
    block_size: int = 64
    num_random_blocks: int = 3
    use_bias: bool = True
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def sparse_threshold_tokens(self) -> int:
        """Longest sequence BigBird still runs with full attention: (5 + 2·r)·block_size.

        ``BigBirdModel.forward`` switches to ``original_full`` when ``seq_len <= (5 + 2 *
        num_random_blocks) * block_size`` (704 tokens with the defaults).
        """
        return (5 + 2 * self.num_random_blocks) * self.block_size

    def uses_block_sparse(self, seq_len: int) -> bool:
        """Whether transformers runs block-sparse attention for this sequence length."""
        return self.attention_type == "block_sparse" and seq_len > self.sparse_threshold_tokens

    def padded_seq_len(self, seq_len: int) -> int:
        """The sequence length the forward really runs at.

        In block-sparse mode BigBird pads the input to a multiple of ``block_size`` before the
        embeddings, so every layer works on the padded length; full attention does not pad.
        """
        if self.uses_block_sparse(seq_len):
            return int(math.ceil(seq_len / self.block_size) * self.block_size)
        return seq_len

    def parameter_count(self) -> int:
        """Number of weights of the base model (what AutoModel.from_config builds)."""
        h, f, e = self.hidden_size, self.intermediate_size, self.embedding_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * e
        embeddings += 2 * e  # LayerNorm
        if e != self.hidden_size:
            embeddings += e * h + h  # projection to the hidden size
        layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
        pooler = (h * h + h) if self.has_pooler else 0
        return embeddings + self.num_unique_layers * layer + pooler

    def to_config(self) -> dict[str, Any]:
        """A config.json dict that ``transformers.AutoConfig.for_model(**d)`` accepts.

        The probe worker builds the model from it, so it measures exactly what this models.
        """
        if self.model_type == "distilbert":
            return {
                "model_type": "distilbert",
                "vocab_size": self.vocab_size,
                "max_position_embeddings": self.max_position_embeddings,
                "n_layers": self.num_layers,
                "n_heads": self.num_heads,
                "dim": self.hidden_size,
                "hidden_dim": self.intermediate_size,
                "activation": self.hidden_act,
                "pad_token_id": self.pad_token_id,
            }
        config: dict[str, Any] = {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
        }
        if self.model_type in ("albert", "electra"):
            config["embedding_size"] = self.embedding_size
        if self.model_type == "albert":
            config["num_hidden_groups"] = self.num_unique_layers
            config["inner_group_num"] = 1
        if self.model_type == "big_bird":
            config.update(
                attention_type="block_sparse"
                if self.attention_type == "block_sparse"
                else "original_full",
                block_size=self.block_size,
                num_random_blocks=self.num_random_blocks,
                use_bias=self.use_bias,
            )
        return config


def _bert_like(name: str, model_type: str, **overrides: Any) -> Architecture:
    base: dict[str, Any] = {
        "name": name,
        "model_type": model_type,
        "num_layers": 12,
        "hidden_size": 768,
        "num_heads": 12,
        "intermediate_size": 3072,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "embedding_size": 768,
        "hidden_act": "gelu",
        "num_unique_layers": 12,
        "has_pooler": model_type in _POOLED,
    }
    base.update(overrides)
    return Architecture(**base)


# Built-in presets. The first three equal the defaults of DistilBertConfig(), BertConfig() and
# BigBirdConfig() in transformers 5.23 (tests/test_presets.py checks it); the others are the
# published base checkpoints' config.json files.
PRESETS: dict[str, Architecture] = {
    "distilbert-base": _bert_like(
        "distilbert-base", "distilbert", num_layers=6, num_unique_layers=6, type_vocab_size=0
    ),
    "bert-base": _bert_like("bert-base", "bert"),
    "bigbird-roberta-base": _bert_like(
        "bigbird-roberta-base",
        "big_bird",
        vocab_size=50358,
        max_position_embeddings=4096,
        hidden_act="gelu_new",
        attention_type="block_sparse",
        block_size=64,
        num_random_blocks=3,
    ),
    "bert-large": _bert_like(
        "bert-large",
        "bert",
        num_layers=24,
        num_unique_layers=24,
        hidden_size=1024,
        num_heads=16,
        intermediate_size=4096,
        embedding_size=1024,
    ),
    "roberta-base": _bert_like(
        "roberta-base",
        "roberta",
        vocab_size=50265,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
    ),
    "albert-base-v2": _bert_like(
        "albert-base-v2",
        "albert",
        vocab_size=30000,
        embedding_size=128,
        hidden_act="gelu_new",
        num_unique_layers=1,
    ),
    "electra-base": _bert_like("electra-base", "electra"),
}


def load_architecture(name_or_dir: str) -> Architecture:
    """A preset by name, or the encoder described by ``<dir>/config.json`` (or that file itself).

    Never downloads anything and never runs remote code: a name that is not a preset and not an
    existing path is an error listing the presets.
    """
    key = name_or_dir.strip()
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    path = Path(key).expanduser()
    if not path.exists():
        raise InputError(
            f"unknown model {name_or_dir!r}: not a preset and no such directory "
            f"(presets: {', '.join(PRESETS)}; or a directory holding a Hugging Face config.json)"
        )
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise InputError(f"{path} has no config.json (a Hugging Face model directory holds one)")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise InputError(f"{config_path}: expected a JSON object, got {type(document).__name__}")
    name = path.name if path.is_dir() else path.parent.name
    return architecture_from_config(document, name=name or str(path), source=str(config_path))


def _get(document: dict[str, Any], source: str, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in document and document[key] is not None:
            return document[key]
    if default is not None:
        return default
    raise InputError(f"{source}: missing key {keys[0]!r} (needed to model this encoder)")


def _positive_int(value: Any, key: str, source: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        allowed = "a non-negative integer" if allow_zero else "a positive integer"
        raise InputError(f"{source}: {key} must be {allowed}, got {value!r}")
    return value


def architecture_from_config(
    document: dict[str, Any], name: str = "custom", source: str = "config.json"
) -> Architecture:
    """Read the fields of a config.json dict (see :func:`load_architecture`)."""
    model_type = document.get("model_type")
    if model_type is None:
        architectures = document.get("architectures") or []
        listed = ", ".join(map(str, architectures)) or "-"
        raise InputError(
            f"{source}: no model_type (architectures: {listed}); "
            f"supported encoder families: {', '.join(FAMILIES)}"
        )
    if model_type not in FAMILIES:
        raise InputError(
            f"{source}: unsupported architecture {model_type!r}; "
            f"supported encoder families: {', '.join(FAMILIES)}"
        )
    if model_type == "distilbert":
        hidden = _get(document, source, "dim", default=768)
        layers = _get(document, source, "n_layers", default=6)
        heads = _get(document, source, "n_heads", default=12)
        ffn = _get(
            document, source, "hidden_dim", default=4 * hidden if isinstance(hidden, int) else 3072
        )
        act = _get(document, source, "activation", default="gelu")
        type_vocab = 0
        embedding = hidden
    else:
        hidden = _get(document, source, "hidden_size")
        layers = _get(document, source, "num_hidden_layers")
        heads = _get(document, source, "num_attention_heads")
        ffn = _get(document, source, "intermediate_size")
        act = _get(document, source, "hidden_act", default="gelu")
        type_vocab = _get(document, source, "type_vocab_size", default=2)
        embedding = document.get("embedding_size") if model_type in ("albert", "electra") else None
        embedding = hidden if embedding is None else embedding
    for key, value in (
        ("hidden size", hidden),
        ("layers", layers),
        ("heads", heads),
        ("FFN width", ffn),
    ):
        _positive_int(value, key, source)
    _positive_int(type_vocab, "type_vocab_size", source, allow_zero=True)
    _positive_int(embedding, "embedding_size", source)
    if hidden % heads:
        raise InputError(
            f"{source}: hidden size {hidden} is not a multiple of {heads} attention heads"
        )
    if not isinstance(act, str) or act not in ACTIVATION_OPS:
        raise InputError(
            f"{source}: unsupported activation {act!r}; supported: {', '.join(ACTIVATION_OPS)}"
        )
    vocab = _positive_int(_get(document, source, "vocab_size"), "vocab_size", source)
    positions = _positive_int(
        _get(document, source, "max_position_embeddings", default=512),
        "max_position_embeddings",
        source,
    )
    unique_layers = layers
    if model_type == "albert":
        groups = _positive_int(document.get("num_hidden_groups", 1), "num_hidden_groups", source)
        inner = _positive_int(document.get("inner_group_num", 1), "inner_group_num", source)
        unique_layers = groups * inner
        layers = layers * inner
    attention_type = "full"
    block_size, random_blocks = 64, 3
    if model_type == "big_bird":
        kind = document.get("attention_type", "block_sparse")
        if kind not in ("block_sparse", "original_full"):
            raise InputError(
                f"{source}: attention_type {kind!r} not supported; "
                "allowed: block_sparse, original_full"
            )
        attention_type = "block_sparse" if kind == "block_sparse" else "full"
        block_size = _positive_int(document.get("block_size", 64), "block_size", source)
        random_blocks = _positive_int(
            document.get("num_random_blocks", 3), "num_random_blocks", source, allow_zero=True
        )
    eps = document.get("layer_norm_eps", 1e-12)
    pad = document.get("pad_token_id", 0)
    return Architecture(
        name=name,
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=positions,
        type_vocab_size=type_vocab,
        embedding_size=embedding,
        hidden_act=act,
        num_unique_layers=unique_layers,
        has_pooler=model_type in _POOLED,
        attention_type=attention_type,
        block_size=block_size,
        num_random_blocks=random_blocks,
        use_bias=bool(document.get("use_bias", True)),
        layer_norm_eps=float(eps) if isinstance(eps, (int, float)) else 1e-12,
        pad_token_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else 0,
    )


def renamed(arch: Architecture, name: str) -> Architecture:
    """The same architecture under another name (e.g. the name a user gave a config directory)."""
    return replace(arch, name=name)


FIELD_NAMES = tuple(f.name for f in fields(Architecture))
