"""Per-kernel cost accounting of one encoder forward pass: FLOPs, bytes, host ops, memory.

For a (batch, sequence, dtype) this lists, in execution order, every kernel the base model
(``AutoModel.from_config``) runs in transformers 5.23: the embeddings (gathers, adds, LayerNorm,
ALBERT/ELECTRA's projection), then per layer the Q/K/V projections, the attention (the fused SDPA
kernel that BERT, RoBERTa, DistilBERT, ALBERT and ELECTRA use by default; the eager matmul-softmax-
matmul that BigBird always uses; BigBird's block-sparse attention above its threshold), the output
projection, residual adds, LayerNorms and the FFN, and finally the pooler where the family has one.

Why per kernel rather than one FLOP total: the predictor gives each kernel its own efficiency (a
64-row matrix product runs far below the rate of a 4096-row one; an elementwise kernel is bound by
memory, not FLOPs) and its own host dispatch cost, which is what makes small batches
framework-bound.

Counting conventions:
- ``flops``: 2·m·n·k for matrix products (as ``torch.utils.flop_counter.FlopCounterMode`` counts
  them, bias additions excluded), a few per element for elementwise kernels.
- ``bytes_moved``: the minimum traffic, each operand read once and each result written once.
- ``host_ops``: aten ops the eager forward dispatches for the kernel, views included (they cost
  host time though they launch nothing); counted once per model from a TorchDispatchMode trace and
  checked in ``tests/test_costs.py``.
- All three are totals over the entry's ``calls`` (identical consecutive calls, e.g. Q, K and V).
- ``fresh_output_bytes``: the size of every output tensor the kernel's ops allocate anew (not a
  view, not in place), one entry per op. On a CPU an output above glibc's mmap threshold is a
  fresh mapping that page-faults on first touch in every forward; the predictor charges that
  (docs/model.md, "First touch").
- ``tanh_elements``, ``exp_elements``: elements passed through a transcendental function in an
  op of their own (``gelu_new``'s tanh, the eager softmax's exp), compute-bound on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from scaleprobe.models.architecture import ACTIVATION_OPS, Architecture
from scaleprobe.models.errors import InputError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

# Kernel kinds. "gemm" and "attention" are matrix work; the others are bound by memory.
GEMM, ATTENTION, ELEMENTWISE, NORM, SOFTMAX, GATHER, HOST = (
    "gemm",
    "attention",
    "elementwise",
    "norm",
    "softmax",
    "gather",
    "host",
)
MATRIX_KINDS = (GEMM, ATTENTION)

# Per-element FLOPs of the elementwise kernels (small next to the matrix products).
_ACTIVATION_FLOPS = {"gelu": 8, "gelu_new": 9, "gelu_pytorch_tanh": 8, "relu": 1, "silu": 4}
_NORM_FLOPS_PER_ELEMENT = 8

# Host ops per piece, from the dispatch trace of transformers 5.23 (tests/test_costs.py checks).
_LINEAR_OPS = 4  # view, t, addmm, view
_HEAD_SPLIT_OPS = 2  # .view(...).transpose(1, 2)
_SDPA_OPS = 4  # sdpa, transpose, reshape, view
_EAGER_SCORES_OPS = 10  # transpose, expand x2, clone x2, views, bmm, _unsafe_view
_EAGER_CONTEXT_OPS = 9  # expand x2, clone, views, bmm, _unsafe_view, transpose, contiguous
_SPARSE_ATTENTION_OPS = 366  # BigBird block-sparse attention per layer, glue included


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype``; anything else is an InputError listing the dtypes."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class Kernel:
    """One kernel (or ``calls`` identical consecutive kernels) of the forward pass.

    ``gemm`` is ``(batch, m, n, k)`` per call for matrix products (``batch`` is the bmm batch,
    1 for a linear layer; ``m`` the rows, i.e. tokens for a linear layer), else None.
    ``weight_bytes`` is the part of ``bytes_moved`` that is parameters (streamed from memory
    whatever the batch).
    """

    name: str
    kind: str
    flops: float
    bytes_moved: float
    host_ops: int
    calls: int = 1
    gemm: tuple[int, int, int, int] | None = None
    weight_bytes: float = 0.0
    layer: int = -1  # -1 outside the encoder layers
    module_calls: int = 0  # nn.Module calls (Python) around these ops: their own host cost
    fresh_output_bytes: tuple[float, ...] = ()  # each freshly allocated output, over all calls
    tanh_elements: float = 0.0
    exp_elements: float = 0.0
    # bytes written before the product, over all calls: a linear layer's addmm first copies its
    # broadcast bias into the fresh output, then accumulates the product onto it
    fill_bytes: float = 0.0

    @property
    def flops_per_call(self) -> float:
        return self.flops / self.calls

    @property
    def bytes_per_call(self) -> float:
        return self.bytes_moved / self.calls


@dataclass(frozen=True)
class ForwardCost:
    """Every kernel of one forward, in order, with the memory it needs."""

    model: str
    batch_size: int
    seq_len: int
    run_seq_len: int  # after BigBird's padding to a block multiple
    dtype: str
    attention: str  # "sdpa", "eager" or "block_sparse"
    kernels: tuple[Kernel, ...]
    weight_bytes: int
    activation_bytes: int  # peak live activations (hidden states, FFN, attention scores)
    peak_memory_bytes: int

    @property
    def flops(self) -> float:
        return float(sum(k.flops for k in self.kernels))

    @property
    def matmul_flops(self) -> float:
        """FLOPs of the matrix products (what FlopCounterMode counts)."""
        return float(sum(k.flops for k in self.kernels if k.kind in MATRIX_KINDS))

    @property
    def bytes_moved(self) -> float:
        return float(sum(k.bytes_moved for k in self.kernels))

    @property
    def host_ops(self) -> int:
        return sum(k.host_ops for k in self.kernels)

    @cached_property
    def matrix_bytes_per_call(self) -> float:
        """Bytes a matrix-product call moves, on average over the forward's (0 without any):
        how far its products evict the host's caches between ops (``predict.cold_host_scale``).
        Cached: the refit times the same cost many times."""
        matrix = [k for k in self.kernels if k.kind in MATRIX_KINDS]
        calls = sum(k.calls for k in matrix)
        return sum(k.bytes_moved for k in matrix) / calls if calls else 0.0

    @property
    def module_calls(self) -> int:
        return sum(k.module_calls for k in self.kernels)

    def by_name(self) -> dict[str, dict[str, float]]:
        """Totals per kernel name, summed over layers (for tables and debugging)."""
        table: dict[str, dict[str, float]] = {}
        for k in self.kernels:
            row = table.setdefault(
                k.name, {"flops": 0.0, "bytes_moved": 0.0, "host_ops": 0.0, "calls": 0.0}
            )
            row["flops"] += k.flops
            row["bytes_moved"] += k.bytes_moved
            row["host_ops"] += k.host_ops
            row["calls"] += k.calls
        return table


def _check_sizes(arch: Architecture, batch_size: int, seq_len: int) -> None:
    for label, value in (("batch size", batch_size), ("sequence length", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{label} must be a positive integer, got {value!r}")
    if seq_len > arch.max_position_embeddings:
        raise InputError(
            f"sequence length {seq_len} exceeds {arch.name}'s max_position_embeddings "
            f"({arch.max_position_embeddings})"
        )


def _linear(
    name: str,
    tokens: int,
    n_out: int,
    n_in: int,
    e: int,
    calls: int = 1,
    layer: int = -1,
    modules: int | None = None,
) -> Kernel:
    weights = (n_in * n_out + n_out) * e
    per_call_bytes = (tokens * n_in + tokens * n_out) * e + weights
    return Kernel(
        name=name,
        kind=GEMM,
        flops=2.0 * tokens * n_out * n_in * calls,
        bytes_moved=float(per_call_bytes * calls),
        host_ops=_LINEAR_OPS * calls,
        calls=calls,
        gemm=(1, tokens, n_out, n_in),
        weight_bytes=float(weights * calls),
        layer=layer,
        module_calls=calls if modules is None else modules,
        fresh_output_bytes=(float(tokens * n_out * e),) * calls,
        fill_bytes=float(tokens * n_out * e * calls),
    )


def _elementwise(
    name: str,
    kind: str,
    elements: float,
    flops_per_element: float,
    tensors: float,
    e: int,
    host_ops: int,
    calls: int = 1,
    layer: int = -1,
    modules: int = 0,
    outputs: int | None = None,
    tanh: bool = False,
) -> Kernel:
    """An elementwise kernel touching ``tensors`` tensors of ``elements`` elements each.

    Each of its ``outputs`` ops (default: one per call; 0 for in-place ops) writes a fresh
    tensor of ``elements`` elements; with ``tanh`` every element goes through a tanh.
    """
    fresh = (float(elements * e),) * (calls if outputs is None else outputs)
    return Kernel(
        name=name,
        kind=kind,
        flops=float(elements * flops_per_element * calls),
        bytes_moved=float(elements * tensors * e * calls),
        host_ops=host_ops,
        calls=calls,
        layer=layer,
        module_calls=modules,
        fresh_output_bytes=fresh,
        tanh_elements=float(elements * calls) if tanh else 0.0,
    )


def _embeddings(arch: Architecture, batch: int, seq: int, e: int) -> list[Kernel]:
    tokens = batch * seq
    width = arch.embedding_size
    tables = 2 if arch.model_type == "distilbert" else 3
    kernels = []
    if arch.model_type in ("roberta", "xlm-roberta"):
        # position ids from the input ids (create_position_ids_from_input_ids: ne, cumsum, ...)
        kernels.append(_elementwise("position_ids", ELEMENTWISE, tokens, 4, 6, 8, host_ops=8))
    # gathers: one row per token from each table, read and written
    gather_ops = {"distilbert": 3, "roberta": 6, "xlm-roberta": 6}.get(arch.model_type, 7)
    kernels.append(
        _elementwise(
            "embedding_gather",
            GATHER,
            tokens * width,
            0,
            2,
            e,
            host_ops=gather_ops,
            calls=tables,
            modules=1 + tables,  # the embeddings module and one nn.Embedding per table
        )
    )
    kernels.append(
        _elementwise(
            "embedding_add",
            ELEMENTWISE,
            tokens * width,
            1,
            3,
            e,
            host_ops=tables - 1,
            calls=tables - 1,
        )
    )
    kernels.append(
        _elementwise(
            "embedding_norm",
            NORM,
            tokens * width,
            _NORM_FLOPS_PER_ELEMENT,
            2,
            e,
            host_ops=1,
            modules=2,  # LayerNorm, Dropout
        )
    )
    if width != arch.hidden_size:
        kernels.append(_linear("embedding_projection", tokens, arch.hidden_size, width, e))
    return kernels


def _full_attention(
    arch: Architecture, batch: int, seq: int, e: int, fused: bool, layer: int
) -> list[Kernel]:
    heads, d = arch.num_heads, arch.head_size
    bh = batch * heads
    scores = float(bh * seq * seq)
    qkv_bytes = 3.0 * batch * seq * arch.hidden_size * e
    out_bytes = float(batch * seq * arch.hidden_size * e)
    if fused:
        # One fused kernel: the scores never reach memory (flash attention on CPU and GPU).
        return [
            Kernel(
                name="attention_sdpa",
                kind=ATTENTION,
                flops=4.0 * scores * d,
                bytes_moved=qkv_bytes + out_bytes,
                host_ops=_SDPA_OPS,
                gemm=(bh, seq, seq, d),
                layer=layer,
                fresh_output_bytes=(out_bytes,),
            )
        ]
    # Eager: K^T and V made contiguous for bmm, the scores and probabilities written out.
    # Fresh outputs: Q and K^T copied for bmm (at batch 1 the reshapes are views), the scores,
    # scaled scores (out of place) and probabilities; then V's copy, the context and its
    # permuted contiguous copy.
    copies = 1 if batch > 1 else 0
    return [
        Kernel(
            name="attention_scores",
            kind=GEMM,
            flops=2.0 * scores * d,
            bytes_moved=2.0 * qkv_bytes / 3 * 2 + scores * e,
            host_ops=_EAGER_SCORES_OPS,
            gemm=(bh, seq, seq, d),
            layer=layer,
            fresh_output_bytes=(out_bytes,) * 2 * copies + (scores * e,),
        ),
        _elementwise("attention_scale", ELEMENTWISE, scores, 1, 2, e, host_ops=1, layer=layer),
        Kernel(
            **{
                **_elementwise(
                    "attention_softmax", SOFTMAX, scores, 5, 2, e, host_ops=1, layer=layer
                ).__dict__,
                "exp_elements": scores,
            }
        ),
        Kernel(
            name="attention_context",
            kind=GEMM,
            flops=2.0 * scores * d,
            bytes_moved=scores * e + 2.0 * out_bytes * 2,
            host_ops=_EAGER_CONTEXT_OPS,
            gemm=(bh, seq, d, seq),
            layer=layer,
            fresh_output_bytes=(out_bytes,) * (2 + copies),
        ),
    ]


def _sparse_attention(arch: Architecture, batch: int, seq: int, e: int, layer: int) -> list[Kernel]:
    """BigBird's block-sparse attention (``bigbird_block_sparse_attention`` in transformers 5.23).

    Query blocks 0 and -1 attend to every key; blocks 1 and -2 to (4 + r) key blocks; the middle
    nb - 4 blocks to 3 sliding + r random + 2 global blocks. It still builds a dense
    B·H·s·s ``attention_probs`` tensor (zeros, then scatters), which costs memory traffic.
    """
    heads, d, bs, r = arch.num_heads, arch.head_size, arch.block_size, arch.num_random_blocks
    bh = batch * heads
    nb = seq // bs
    middle = nb - 4
    global_scores = 2.0 * bs * seq  # query blocks 0 and -1
    second_scores = 2.0 * bs * (4 + r) * bs  # query blocks 1 and -2
    band_scores = float(middle * bs * (5 + r) * bs)  # the middle blocks
    scores_per_head = global_scores + second_scores + band_scores
    flops = 2.0 * 2.0 * bh * scores_per_head * d  # QK^T and PV
    # Glue traffic: gathered random blocks and the 3-block windows of K and V, the band product
    # assembled by cat and scaled/masked in place (about six passes), softmax, the context sums,
    # and the dense attention_probs tensor zeroed and partly written.
    gathered = 2.0 * bh * (nb - 2) * r * bs * d * 2
    windows = 2.0 * bh * middle * 3 * bs * d * 2
    band = bh * band_scores * 6 * 2
    probs = bh * float(seq) * seq + bh * scores_per_head
    # A TorchDispatchMode trace of the real forward reads and writes about twice this minimum
    # (in-place scatters into the dense probabilities, masks broadcast per head): count that.
    glue_bytes = 2.0 * (gathered + windows + band + probs) * e
    return [
        Kernel(
            name="attention_block_sparse",
            kind=GEMM,
            flops=flops,
            bytes_moved=(3.0 * batch * seq * arch.hidden_size + bh * scores_per_head * 2) * e,
            host_ops=0,
            calls=16,
            gemm=(bh * max(middle, 1), bs, (5 + r) * bs, d),
            layer=layer,
        ),
        Kernel(
            name="attention_block_sparse_glue",
            kind=ELEMENTWISE,
            flops=bh * scores_per_head * 8.0,
            bytes_moved=glue_bytes,
            host_ops=_SPARSE_ATTENTION_OPS,
            calls=60,
            layer=layer,
            # its largest fresh outputs: the dense probabilities (torch.zeros, B·H·s²) and the
            # middle blocks' band scores, concatenated then softmaxed
            fresh_output_bytes=(
                bh * float(seq) * seq * e,
                bh * band_scores * e,
                bh * band_scores * e,
            ),
            exp_elements=bh * scores_per_head,  # softmax over every score piece
        ),
    ]


def _layer(
    arch: Architecture, batch: int, seq: int, e: int, attention: str, layer: int
) -> list[Kernel]:
    tokens = batch * seq
    h, f = arch.hidden_size, arch.intermediate_size
    act_ops = ACTIVATION_OPS[arch.hidden_act]
    act_flops = _ACTIVATION_FLOPS.get(arch.hidden_act, 4)
    # module calls: the layer, its attention block, self-attention, then the three projections
    kernels = [_linear("qkv_projection", tokens, h, h, e, calls=3, layer=layer, modules=6)]
    kernels[0] = Kernel(**{**kernels[0].__dict__, "host_ops": 3 * (_LINEAR_OPS + _HEAD_SPLIT_OPS)})
    if attention == "block_sparse":
        kernels += _sparse_attention(arch, batch, seq, e, layer)
    else:
        kernels += _full_attention(arch, batch, seq, e, fused=attention == "sdpa", layer=layer)
    kernels += [
        _linear("attention_output_projection", tokens, h, h, e, layer=layer, modules=3),
        *_add_and_norm(tokens, h, e, layer),
        _linear("ffn_up", tokens, f, h, e, layer=layer, modules=2),
        *_activation(arch.hidden_act, tokens * f, act_flops / act_ops, act_ops, e, layer),
        _linear("ffn_down", tokens, h, f, e, layer=layer, modules=3),
        *_add_and_norm(tokens, h, e, layer),
    ]
    return kernels


def _activation(
    act: str, elements: int, flops_per_op: float, ops: int, e: int, layer: int
) -> list[Kernel]:
    """The FFN activation. ``gelu_new`` is eight separate out-of-place elementwise ops (pow,
    mul, add, mul, tanh, add, mul, mul): its tanh is listed apart, because it is compute-bound on
    a CPU while the other seven stream memory (18 tensor passes in all, 2 of them the tanh's).
    Fused activations (``gelu``'s erf, ``gelu_pytorch_tanh``) are one vectorised kernel that
    runs near memory speed."""
    if act == "gelu_new":
        return [
            _elementwise(
                "ffn_activation", ELEMENTWISE, elements, flops_per_op, 16 / 7, e,
                host_ops=ops - 1, calls=ops - 1, layer=layer, modules=1,
            ),
            _elementwise(
                "ffn_activation_tanh", ELEMENTWISE, elements, flops_per_op, 2, e,
                host_ops=1, layer=layer, tanh=True,
            ),
        ]  # fmt: skip
    return [
        _elementwise(
            "ffn_activation", ELEMENTWISE, elements, flops_per_op, 2.25 if ops > 1 else 2, e,
            host_ops=ops, calls=ops, layer=layer, modules=1, tanh=act == "tanh",
        )
    ]  # fmt: skip


def _add_and_norm(tokens: int, h: int, e: int, layer: int) -> list[Kernel]:
    """The residual add and the layer norm that close each sub-block of a layer."""
    return [
        _elementwise("residual_add", ELEMENTWISE, tokens * h, 1, 3, e, host_ops=1, layer=layer),
        _elementwise(
            "layer_norm",
            NORM,
            tokens * h,
            _NORM_FLOPS_PER_ELEMENT,
            2,
            e,
            host_ops=1,
            layer=layer,
            modules=1,
        ),
    ]


def attention_kind(arch: Architecture, seq_len: int) -> str:
    """What transformers 5.23 runs: BigBird is always eager (block-sparse above its threshold);
    the other families default to fused SDPA."""
    if arch.model_type == "big_bird":
        return "block_sparse" if arch.uses_block_sparse(seq_len) else "eager"
    return "sdpa"


def forward_cost(
    arch: Architecture, batch_size: int, seq_len: int, dtype: str, attention: str | None = None
) -> ForwardCost:
    """Every kernel of one forward of ``arch`` at (batch_size, seq_len, dtype).

    ``attention`` overrides the attention implementation (``"eager"`` models
    ``attn_implementation="eager"``, as the FLOP-count test builds it); by default it is what
    transformers runs (:func:`attention_kind`).
    """
    _check_sizes(arch, batch_size, seq_len)
    e = dtype_bytes(dtype)
    kind = attention or attention_kind(arch, seq_len)
    if kind not in ("sdpa", "eager", "block_sparse"):
        raise InputError(
            f"unknown attention implementation {kind!r}; allowed: sdpa, eager, block_sparse"
        )
    if kind == "block_sparse" and not arch.uses_block_sparse(seq_len):
        kind = "eager"
    seq = arch.padded_seq_len(seq_len) if kind == "block_sparse" else seq_len
    tokens = batch_size * seq
    h = arch.hidden_size

    # the model and its encoder are module calls of their own
    entry = Kernel("model_call", HOST, flops=0.0, bytes_moved=0.0, host_ops=0, module_calls=2)
    kernels = [entry, *_embeddings(arch, batch_size, seq, e)]
    if arch.model_type == "big_bird":
        # input checks and the all-ones mask BigBirdModel builds; block-sparse adds mask reshapes
        # and, when the length is not a block multiple, pads ids, mask and token types.
        extra = 17 if kind == "block_sparse" else 9
        if seq != seq_len:
            extra += 4
        kernels.insert(
            1,
            Kernel(name="input_preparation", kind=HOST, flops=0.0, bytes_moved=0.0, host_ops=extra),
        )
    for layer in range(arch.num_layers):
        kernels += _layer(arch, batch_size, seq, e, kind, layer)
    if arch.has_pooler:
        pooler = _linear("pooler", batch_size, h, h, e, modules=2)
        kernels.append(Kernel(**{**pooler.__dict__, "host_ops": 3}))  # select, t, addmm
        kernels.append(
            _elementwise(
                "pooler_tanh",
                ELEMENTWISE,
                batch_size * h,
                4,
                2,
                e,
                host_ops=1,
                modules=1,
                tanh=True,
            )
        )

    weight_bytes = arch.parameter_count() * e
    f = arch.intermediate_size
    hidden_state = tokens * h
    if kind == "sdpa":
        attention_live = 4 * hidden_state  # q, k, v and the context
    elif kind == "eager":
        attention_live = 4 * hidden_state + 2 * batch_size * arch.num_heads * seq * seq
    else:
        bs, r = arch.block_size, arch.num_random_blocks
        bands = batch_size * arch.num_heads * seq * (5 + r) * bs
        attention_live = 8 * hidden_state + 3 * bands + batch_size * arch.num_heads * seq * seq
    ffn_live = hidden_state + 2 * tokens * f
    activation_bytes = (2 * hidden_state + max(attention_live, ffn_live)) * e
    return ForwardCost(
        model=arch.name,
        batch_size=batch_size,
        seq_len=seq_len,
        run_seq_len=seq,
        dtype=dtype,
        attention=kind,
        kernels=tuple(kernels),
        weight_bytes=int(weight_bytes),
        activation_bytes=int(activation_bytes),
        peak_memory_bytes=int(weight_bytes + activation_bytes),
    )
