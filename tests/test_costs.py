"""Per-kernel costs against independent counts on the real transformers models (may import torch).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the model built from the same config,
with ``attn_implementation="eager"`` (FlopCounterMode does not count the fused CPU SDPA kernel),
must agree within 2% with ``ForwardCost.matmul_flops``, for the three presets at several
(batch, seq), BigBird below and above its block-sparse threshold.

Host ops: a TorchDispatchMode counts the aten ops one forward really dispatches; the model must
agree within 5%. Why 5% and not exact: a few ops depend on strides (``reshape`` dispatches a copy
only for a non-contiguous input, which varies with the batch size in BigBird's block-sparse path:
400 ops per layer at batch 1, 415 at batch 2), and the model keeps one count per kernel.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import torch
from scaleprobe.models.architecture import PRESETS, architecture_from_config
from scaleprobe.models.costs import ATTENTION, GEMM, forward_cost
from scaleprobe.models.errors import InputError
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel

FLOP_POINTS = {
    "bert-base": [(1, 8), (2, 64), (1, 256)],
    "distilbert-base": [(1, 16), (3, 40), (2, 128)],
    # 704 is the last full-attention length; 705 runs block-sparse, padded to 768
    "bigbird-roberta-base": [(1, 64), (1, 704), (1, 705)],
}

_MODELS: dict[str, Any] = {}


def eager_model(name: str) -> Any:
    if name not in _MODELS:
        torch.manual_seed(0)
        config = AutoConfig.for_model(**PRESETS[name].to_config())
        _MODELS[name] = AutoModel.from_config(config, attn_implementation="eager").eval()
    return _MODELS[name]


def counted_flops(model: Any, batch: int, seq: int) -> int:
    if hasattr(model, "set_attention_type") and model.config.attention_type == "block_sparse":
        # transformers switches a block-sparse model to full attention for good the first time
        # it sees a short sequence; undo that so each point runs what a fresh model would.
        model.set_attention_type("block_sparse")
    ids = torch.randint(5, 1000, (batch, seq))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(input_ids=ids)
    return int(counter.get_total_flops())


@pytest.mark.parametrize(
    ("name", "batch", "seq"), [(n, b, s) for n, points in FLOP_POINTS.items() for b, s in points]
)
def test_flops_agree_with_flop_counter(name: str, batch: int, seq: int) -> None:
    arch = PRESETS[name]
    cost = forward_cost(
        arch, batch, seq, "float32", attention=None if arch.model_type == "big_bird" else "eager"
    )
    counted = counted_flops(eager_model(name), batch, seq)
    assert cost.matmul_flops == pytest.approx(counted, rel=0.02)
    # elementwise work is small next to the matrix products, and the total includes it
    assert cost.matmul_flops < cost.flops < 1.05 * cost.matmul_flops


def narrow_bigbird_config(layers: int, vocab_size: int) -> Any:
    """BigBird with the preset's block pattern (block 64, 3 random blocks) but 64 wide: cheap."""
    return AutoConfig.for_model(
        "big_bird",
        hidden_size=64,
        num_attention_heads=4,
        num_hidden_layers=layers,
        intermediate_size=96,
        vocab_size=vocab_size,
    )


@pytest.mark.parametrize(("batch", "seq"), [(2, 1024), (1, 1000), (3, 1472)])
def test_block_sparse_flops_on_a_narrow_bigbird(batch: int, seq: int) -> None:
    """The preset's block pattern (block 64, 3 random blocks) on a narrow model, cheaply: 1024
    takes transformers' "old plan" path for the random blocks, 1000 pads to 1024, 1472 is 23
    blocks."""
    config = narrow_bigbird_config(layers=2, vocab_size=1000)
    model = AutoModel.from_config(config).eval()
    arch = architecture_from_config(config.to_dict())
    assert arch.uses_block_sparse(seq)
    cost = forward_cost(arch, batch, seq, "float32")
    assert cost.matmul_flops == pytest.approx(counted_flops(model, batch, seq), rel=0.02)


def test_sdpa_and_eager_count_the_same_matrix_flops() -> None:
    arch = PRESETS["bert-base"]
    sdpa = forward_cost(arch, 2, 128, "float16")
    eager = forward_cost(arch, 2, 128, "float16", attention="eager")
    assert sdpa.attention == "sdpa" and eager.attention == "eager"
    assert sdpa.matmul_flops == eager.matmul_flops
    # the fused kernel never writes the scores: less traffic than eager
    assert sdpa.bytes_moved < eager.bytes_moved
    assert any(k.kind == ATTENTION for k in sdpa.kernels)


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


TINY = {
    "bert": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
    },
    "roberta": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
    },
    "distilbert": {"dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 96},
    "albert": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "embedding_size": 32,
    },
    "electra": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "embedding_size": 32,
    },
    "big_bird": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "block_size": 16,
        "num_random_blocks": 2,
    },
}
HOST_POINTS = [
    ("bert", 2, 16, None),
    ("bert", 1, 40, "eager"),
    ("roberta", 2, 16, None),
    ("distilbert", 3, 16, None),
    ("albert", 2, 16, None),
    ("electra", 1, 24, None),
    ("big_bird", 2, 64, None),
    ("big_bird", 1, 200, None),
    ("big_bird", 2, 256, None),
]


@pytest.mark.parametrize(("model_type", "batch", "seq", "attention"), HOST_POINTS)
def test_host_ops_agree_with_the_dispatched_aten_ops(
    model_type: str, batch: int, seq: int, attention: str | None
) -> None:
    config = AutoConfig.for_model(model_type, vocab_size=500, **TINY[model_type])
    model = AutoModel.from_config(config, attn_implementation=attention).eval()
    arch = architecture_from_config(config.to_dict())
    ids = torch.randint(5, 400, (batch, seq))
    counter = OpCounter()
    # no_grad rather than inference_mode: under inference_mode a Python dispatch mode sees
    # composite ops (linear, dropout) before they decompose; under no_grad it sees every op
    # the dispatcher runs, which is what costs host time either way.
    with torch.no_grad():
        model(input_ids=ids)  # warm-up: BigBird swaps its attention modules on a first short input
        with counter:
            model(input_ids=ids)
    dispatched = sum(counter.ops.values())
    cost = forward_cost(arch, batch, seq, "float32", attention=attention)
    assert cost.host_ops == pytest.approx(dispatched, rel=0.05), dict(counter.ops)


def test_gemm_kernels_carry_their_dimensions() -> None:
    cost = forward_cost(PRESETS["bert-base"], 4, 128, "float32")
    ffn_up = next(k for k in cost.kernels if k.name == "ffn_up")
    assert ffn_up.gemm == (1, 512, 3072, 768)
    assert ffn_up.flops == 2 * 512 * 3072 * 768
    assert ffn_up.weight_bytes == (768 * 3072 + 3072) * 4
    assert all(k.gemm is not None for k in cost.kernels if k.kind == GEMM)
    assert cost.weight_bytes == PRESETS["bert-base"].parameter_count() * 4


def test_memory_grows_with_batch_and_halves_with_half_precision() -> None:
    arch = PRESETS["bert-base"]
    small, large = forward_cost(arch, 1, 128, "float32"), forward_cost(arch, 64, 128, "float32")
    assert large.activation_bytes > small.activation_bytes
    assert large.peak_memory_bytes == large.weight_bytes + large.activation_bytes
    assert forward_cost(arch, 64, 128, "float16").peak_memory_bytes * 2 == large.peak_memory_bytes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 128, "float32"), "batch size must be a positive integer"),
        ((1, 0, "float32"), "sequence length must be a positive integer"),
        ((1, 513, "float32"), "exceeds bert-base's max_position_embeddings"),
        ((1, 8, "int8"), "unknown dtype 'int8'"),
    ],
)
def test_bad_sizes_and_dtypes(args: tuple[int, int, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        forward_cost(PRESETS["bert-base"], *args)


class AllocationCounter(TorchDispatchMode):
    """Records every output an op allocates anew (its storage is none of the inputs': not a view,
    not in place) and the elements passed through tanh and exp (softmax runs exp per element)."""

    def __init__(self) -> None:
        super().__init__()
        self.fresh_elements: list[int] = []
        self.transcendental: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        storages = {t.untyped_storage().data_ptr() for t in inputs}
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                if tensor.untyped_storage().data_ptr() not in storages:
                    self.fresh_elements.append(tensor.numel())
                if name in ("tanh", "tanh_"):
                    self.transcendental["tanh"] += tensor.numel()
                elif name in ("exp", "exp_", "_softmax"):
                    self.transcendental["exp"] += tensor.numel()
        return out


ALLOCATION_POINTS = [
    ("bert", 2, 40, None, "gelu"),
    ("bert", 2, 40, "eager", "gelu"),
    ("distilbert", 3, 24, None, "gelu"),
    ("big_bird", 2, 64, None, "gelu_new"),
    ("bert", 1, 48, "eager", "tanh"),  # batch 1: bmm's reshapes are views, no copies
    ("big_bird", 3, 40, None, "gelu_new"),
]


@pytest.mark.parametrize(("model_type", "batch", "seq", "attention", "act"), ALLOCATION_POINTS)
def test_fresh_outputs_and_transcendentals_agree_with_the_real_ops(
    model_type: str, batch: int, seq: int, attention: str | None, act: str
) -> None:
    """What the CPU first-touch and transcendental terms charge, against a dispatch trace.

    Outputs larger than a hidden state (the FFN's and the eager attention scores', the ones that
    outgrow glibc's mmap threshold first) must match one for one; hidden-state-sized outputs
    (projections, adds, norms, copies for bmm) in total within 10%.
    """
    key = "activation" if model_type == "distilbert" else "hidden_act"
    settings = {**TINY[model_type], key: act}
    config = AutoConfig.for_model(model_type, vocab_size=500, **settings)
    model = AutoModel.from_config(config, attn_implementation=attention).eval()
    arch = architecture_from_config(config.to_dict())
    counter = AllocationCounter()
    ids = torch.randint(5, 400, (batch, seq))
    with torch.no_grad():
        model(input_ids=ids)
        with counter:
            model(input_ids=ids)
    cost = forward_cost(arch, batch, seq, "float32", attention=attention)
    hidden = batch * seq * arch.hidden_size
    modelled = [int(b) // 4 for k in cost.kernels for b in k.fresh_output_bytes]
    assert sorted(n for n in modelled if n > hidden) == sorted(
        n for n in counter.fresh_elements if n > hidden
    )
    assert sum(n for n in modelled if n == hidden) == pytest.approx(
        sum(n for n in counter.fresh_elements if n == hidden), rel=0.10
    )
    assert sum(k.tanh_elements for k in cost.kernels) == counter.transcendental["tanh"]
    assert sum(k.exp_elements for k in cost.kernels) == counter.transcendental["exp"]
    if act == "gelu_new":  # its tanh is a kernel of its own, over tokens × FFN width
        tanh = [k for k in cost.kernels if k.name == "ffn_activation_tanh"]
        assert len(tanh) == arch.num_layers
        assert tanh[0].tanh_elements == batch * seq * arch.intermediate_size


def test_gelu_new_split_keeps_the_activation_traffic() -> None:
    """The tanh listed apart changes no total: 8 ops, 18 tensor passes over tokens × f."""
    arch = PRESETS["bigbird-roberta-base"]
    cost = forward_cost(arch, 2, 128, "float32")
    table = cost.by_name()
    elements = 2 * 128 * arch.intermediate_size * arch.num_layers
    passes = table["ffn_activation"]["bytes_moved"] + table["ffn_activation_tanh"]["bytes_moved"]
    assert passes == pytest.approx(18 * elements * 4)
    assert table["ffn_activation"]["host_ops"] + table["ffn_activation_tanh"]["host_ops"] == (
        8 * arch.num_layers
    )


def test_block_sparse_counts_its_largest_fresh_outputs_and_every_softmax() -> None:
    """BigBird block-sparse (narrow model, the preset's 64-token blocks, 3 random blocks, 1024
    tokens): its three largest fresh outputs (the dense B·H·s² probabilities, the band scores'
    cat and softmax) are the trace's three largest, and its exp elements every softmax's."""
    config = narrow_bigbird_config(layers=1, vocab_size=500)
    model = AutoModel.from_config(config).eval()
    arch = architecture_from_config(config.to_dict())
    ids = torch.randint(5, 400, (1, 1024))
    counter = AllocationCounter()
    with torch.no_grad():
        model(input_ids=ids)
        model.set_attention_type("block_sparse")
        with counter:
            model(input_ids=ids)
    cost = forward_cost(arch, 1, 1024, "float32")
    assert cost.attention == "block_sparse"
    glue = next(k for k in cost.kernels if k.name == "attention_block_sparse_glue")
    modelled = sorted((int(b) // 4 for b in glue.fresh_output_bytes), reverse=True)
    assert modelled == sorted(counter.fresh_elements, reverse=True)[:3]
    assert sum(k.exp_elements for k in cost.kernels) == counter.transcendental["exp"]
