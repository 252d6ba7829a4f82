"""What a spec costs to train and to serve on one device: memory by kind, whether it fits, and time bounds.

Every figure is read from the compiler's plan (`archspec.compiler.plan`): which attention (ordinary, MLA), which
windows, which MLP or MoE, which norms and block layout, a tied head, which layers differ. Parameters and the KV
cache are exact (`archspec.analysis.metrics`); tensor parallelism divides what `archspec.distributed.tp_plan`
splits (the same plan `parallelize` applies, read from a meta-device build, which allocates nothing).

Training memory of one steady-state step (forward + backward + optimizer step, optimizer states allocated):

    parameters   weights in `dtype` (FSDP: / fsdp ranks; TP: split weights / tp)
    gradients    one per parameter, in `dtype` (sharded alike); all of them exist at the optimizer step
    optimizer    AdamW: 2 states per parameter in the parameters' dtype; with --master-weights an fp32 copy of
                 the weights and fp32 states (mixed precision); SGD: none
    activations  what autograd saves for backward, per layer, from the plan's components and the attention path
                 each layer takes (`block_saved`, `AttentionPath`); full checkpointing keeps each block's inputs
                 and recomputes one block at a time in the backward
    logits       the loss's fp32 log-softmax of the [batch, seq, vocab] logits (saved for backward; the logits
                 go with the model's output, which a training loop drops once it has the loss)
    transient    the largest short-lived peak: the loss backward (two fp32 [batch, seq, vocab] gradients), a
                 block's backward (its recomputed activations under checkpointing, gradients in flight, FSDP's
                 gathered and reduce-scattered unit), or the optimizer step's temporaries
    total        the peak over the step: max over (end of forward, each block's backward, optimizer step)

Checked against PyTorch's `MemTracker` on CPU (tests/unit/test_planner_measured.py, 2-rank FSDP2 and TP in
tests/distributed/test_plan_memory.py): within 10% for nine families; the GPU kernels' figures are modelled.

Serving: the weights plus the KV cache of `batch` sequences of `seq` positions, windows capped (a rolling
buffer per sliding layer), MLA's latent + rope key, the encoder-decoder's cached cross keys/values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from archspec.analysis.metrics import (
    AnalysisError,
    canonical_dtype,
    check_context,
    dtype_bytes,
    flop_counts,
    kv_cache,
    layer_windows,
    param_counts,
    params_of,
)
from archspec.compiler import plan as plan_of
from archspec.plan import Call
from archspec.spec.errors import ArchspecError
from archspec.spec.schema import Spec

Mode = Literal["train", "serve"]
Checkpointing = Literal["none", "full", "selective"]
Optimizer = Literal["adamw", "sgd"]


# ------------------------------------------------------------------------------------------------ devices
@dataclass(frozen=True)
class Device:
    """Dense bf16 tensor-core peak (TFLOP/s), memory bandwidth (GB/s) and memory (GiB) of one accelerator."""

    name: str
    peak_tflops: float
    bandwidth_gbs: float
    memory_gib: float


DEVICES: dict[str, Device] = {  # vendors' datasheets, SXM parts, dense (no 2:4 sparsity)
    "h100": Device("h100", 989.0, 3350.0, 80.0),
    "h200": Device("h200", 989.0, 4800.0, 141.0),
    "a100": Device("a100", 312.0, 2039.0, 80.0),
    "cpu": Device("cpu", 1.0, 100.0, 64.0),  # a nominal workstation; pass your own figures
}


def device_of(
    name: str | None = None,
    peak_tflops: float | None = None,
    bandwidth_gbs: float | None = None,
    memory_gib: float | None = None,
) -> Device:
    """A named device, with any of its figures overridden; all three figures without a name: a custom device."""
    if name is None and None not in (peak_tflops, bandwidth_gbs, memory_gib):
        return Device("custom", peak_tflops, bandwidth_gbs, memory_gib)  # type: ignore[arg-type]
    key = (name or "h100").lower()
    if key not in DEVICES:
        raise AnalysisError(
            f"unknown device {name!r} (known: {', '.join(DEVICES)}; or give --peak-tflops, "
            "--bandwidth-gbs and --memory-gib)"
        )
    base = DEVICES[key]
    for value, what in ((peak_tflops, "peak"), (bandwidth_gbs, "bandwidth"), (memory_gib, "memory")):
        if value is not None and value <= 0:
            raise AnalysisError(f"the device's {what} must be positive, got {value}")
    return Device(
        base.name,
        peak_tflops or base.peak_tflops,
        bandwidth_gbs or base.bandwidth_gbs,
        memory_gib or base.memory_gib,
    )


# ------------------------------------------------------------------------------------------------ the request
@dataclass(frozen=True)
class Setup:
    """What is asked: `batch` sequences of `seq` tokens per data-parallel rank (serving: `seq` is the context)."""

    mode: Mode = "train"
    batch: int = 1
    seq: int = 2048
    gpus: int = 1
    fsdp: int = 1
    tp: int = 1
    dtype: str = "bfloat16"
    optimizer: Optimizer = "adamw"
    master_weights: bool = False
    checkpointing: Checkpointing = "none"
    images: int = 0  # images per sequence (vision-language specs): their tower and projector activations
    device: Device = field(default_factory=lambda: DEVICES["h100"])


@dataclass(frozen=True)
class Memory:
    """Bytes per device by kind; `total` is the step's peak, not the sum (see the module docstring)."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    transient: int
    kv_cache: int
    total: int


@dataclass(frozen=True)
class Bounds:
    """Upper bounds from the device's peak FLOP/s and bandwidth (None where the mode does not apply)."""

    train_tokens_per_s: float | None
    decode_tokens_per_s: float | None  # batch-B decoding: B tokens per step
    decode_tokens_per_s_batch1: float | None
    prefill_s: float | None
    train_flops_per_token: float
    decode_bytes_per_step: int | None


@dataclass(frozen=True)
class MemoryPlan:
    """`archspec plan`'s answer for one spec and setup."""

    spec: str
    setup: Setup
    memory: Memory
    fits: bool
    suggestion: str | None
    bounds: Bounds

    def mfu(self, measured_tokens_per_s: float) -> float:
        """Model FLOPs utilisation a measured training throughput corresponds to."""
        flops = measured_tokens_per_s * self.bounds.train_flops_per_token
        return flops / (self.setup.device.peak_tflops * 1e12 * max(1, self.setup.gpus))

    def to_json(self) -> dict[str, Any]:
        """Stable keys: memory (bytes), fits, bounds (tokens/s, seconds), setup, suggestion."""
        bounds = asdict(self.bounds)
        return {
            "spec": self.spec,
            "setup": {**asdict(self.setup), "device": asdict(self.setup.device)},
            "memory": asdict(self.memory),
            "fits": self.fits,
            "suggestion": self.suggestion,
            "bounds": bounds,
        }


# ------------------------------------------------------------------------------------------------ activations
FP32 = 4

AttentionPath = Literal["fused", "chunked", "distance-bias", "math", "masked", "eager-softcap"]
"""How a layer's attention runs, as `archspec.nn.attend.AttentionPaths` picks it for a training step of whole
sequences, and what each keeps for backward (per token; h heads of width hd, g kv heads, s keys):

    fused          SDPA's fused kernels (flash / memory-efficient; FlexAttention): q, k, v, the output and the
                   log-sum-exp (h); the output projection reads the output as it is. GPU, and CPU without a mask
                   or with a boolean one (causal, GLM's prefix, padding).
    chunked        a sliding window shorter than the sequence on CPU (`ChunkedWindow`): fused, plus copies of the
                   chunked queries and of the keys/values spans, and the re-laid-out output the projection reads.
    distance-bias  ALiBi on CPU (`ToeplitzBias`): fused with the queries flipped (a copy instead of q) and the
                   re-laid-out output.
    math           a bias with a gradient (T5's relative positions) on CPU, or MLA's q.k width unlike its
                   values' on CPU: the reference path keeps the [h, s] softmax of each query, q, k, v (per query
                   head) and the re-laid-out output; no log-sum-exp.
    masked         a boolean mask per row (GLM's bidirectional prefix): fused, plus the float mask SDPA makes of
                   it in every layer, [batch, 1, s, s].
    eager-softcap  soft-capped scores (Gemma 2) or attention sinks (gpt-oss) on CPU (`ChunkedScores`): the scores
                   and their softmax, [h, s] each, keys/values repeated to every head, the output re-laid-out (the
                   sinks' extra column is counted as the cap's tanh is; not measured for sinks).
"""


def _norm_saved(norm: Call | None, up: float = 1.0) -> float:
    """Elements per token a norm keeps (`up`: bytes of float32 over the activations' dtype, for what it keeps in
    float32): RMSNorm its input in float32, 1/rms and the normalised x cast back (Gemma's: kept in float32);
    LayerNorm its input, and mean and 1/std in float32. Its output is kept by whatever reads it (counted there)."""
    if norm is None or norm.component == "nn.Identity":
        return 0
    d = norm.positional(0)
    if norm.component == "nn.LayerNorm":
        return d + 2 * up
    if norm.component == "HeadNorm":
        return norm.positional(1) * norm.positional(2) * 2 + norm.positional(1)
    if norm.component == "OffsetRMSNorm":
        return 2 * d * up + up
    return d * up + up + d  # RMSNorm


def _activation_saved(activation: Any, width: int) -> int:
    """What an elementwise activation keeps besides its input's other readers: relu only its output (which the
    next matmul keeps anyway), x * sigmoid(1.702 x) the sigmoid and the product, the others their output too."""
    key = getattr(activation, "key", "")
    if key == "relu":
        return 0
    if key == "quick-gelu":
        return 2 * width
    return width


def mlp_saved(mlp: Call, up: float = 1.0) -> float:
    """Per token: what an MLP keeps past its input (counted by the block): the up (and gate) outputs, the
    activation's output and the product the down projection reads."""
    if mlp.component == "GatedMLP":
        width = mlp["up"].positional(1)
        return 3 * width + _activation_saved(mlp["activation"], width)
    if mlp.component == "MLP":
        width = mlp["up"].positional(1)
        return width + _activation_saved(mlp["activation"], width)
    if mlp.component == "MoE":
        return moe_saved(mlp, up)
    return 0


def moe_saved(moe: Call, up: float = 1.0) -> float:
    """An MoE per token: the router's probabilities (and the balance loss's copy), top-k weights, then for each of
    the top_k routed copies the gathered input, the expert MLP's outputs, the expert output and its weighted copy
    (which the scatter-add keeps); shared experts as an MLP of the same input, their sigmoid gate and output."""
    router, experts = moe["router"], moe["experts"]
    top_k, count = router["top_k"], router["experts"]
    d, width = experts.positional(1), experts.positional(2)
    inner = 3 * width + _activation_saved(experts["activation"], width) if experts["gated"] else 2 * width
    saved = (d + 2 * count + 3 + top_k) * up + top_k * (3 * d + inner) - d  # the router works in float32
    shared = moe.get("shared")
    if shared is not None:
        saved += mlp_saved(shared) + (d + 2 if moe.get("shared_gate") is not None else 0)
    return saved


def _core(
    heads: int, qk: int, v: int, k_width: int, v_width: int, path: AttentionPath, seq: int, up: float = 1.0
) -> float:
    """Scores and weighted values: fused kernels keep q, k, v, the output and the log-sum-exp; the reference
    (math) path q, k and v per query head, the [heads, keys] softmax and the re-laid-out output."""
    if path == "math":  # on CPU in float32 whatever the inputs' dtype
        return (heads * qk + heads * qk + heads * v + heads * seq) * up + heads * v
    return heads * qk + k_width + v_width + heads * v + heads


def attention_saved(
    attn: Call, path: AttentionPath, seq: int, window: int | None = None, mask: float = 0.0, up: float = 1.0
) -> float:
    """Per token: what one attention keeps for backward past its input (see `AttentionPath`)."""
    heads = attn["heads"]
    if attn.component == "LatentAttention":  # q and k assembled from nope and rope parts
        qk, v_dim, rank, rope = attn["nope_dim"] + attn["rope_dim"], attn["v_dim"], attn["kv_rank"], attn["rope_dim"]
        q_rank = attn["q_down"].positional(1) if attn.get("q_down") is not None else 0
        down = 3 * q_rank + 1 if q_rank else 0  # q_down's output, its norm, q_up's input
        latent = (rank + rope) + 2 * rank + 1  # kv_down's output, its norm
        if path != "math":  # the values are a view of kv_up's output (the reference path copies them)
            latent += heads * (attn["nope_dim"] + v_dim)
        return down + latent + _core(heads, qk, v_dim, heads * qk, 0, path, seq, up)
    head_dim, kv = attn["head_dim"], attn["kv_heads"]
    q, kv_width = heads * head_dim, 2 * kv * head_dim
    core: AttentionPath = "math" if path == "math" else "fused"
    saved = _core(heads, head_dim, head_dim, kv * head_dim, kv * head_dim, core, seq, up)
    if attn.get("q_norm") is not None:
        saved += 2 * q + kv_width + heads + kv  # each qk-norm's input and normalised x (+ 1/rms per head)
    if attn.component == "CrossAttention":
        return saved
    if path == "chunked" and window is not None and window < seq:
        saved += q * (seq - window) / seq + kv_width + q
    elif path == "distance-bias":
        saved += q
    elif path == "masked":
        saved += mask  # SDPA turns the boolean mask into a float one in every call
    elif path == "eager-softcap":  # the capped scores, and their softmax in float32
        saved += heads * seq * (1 + up) + 2 * q - heads
    return saved


def block_saved(
    block: Call,
    path: AttentionPath = "fused",
    seq: int = 1,
    window: int | None = None,
    mask: float = 0.0,
    up: float = 1.0,
) -> float:
    """Elements per token one block keeps for backward (no checkpointing): its norms, each sublayer's input and
    what the sublayer keeps."""
    return sum(block_saved_parts(block, path, seq, window, mask, up))


def block_saved_parts(
    block: Call,
    path: AttentionPath = "fused",
    seq: int = 1,
    window: int | None = None,
    mask: float = 0.0,
    up: float = 1.0,
) -> tuple[float, float]:
    """`block_saved` as (what every tensor-parallel rank keeps whole, what TP splits): the norms and the
    sublayers' inputs are replicated; the attention's heads and a dense MLP's hidden width are split (routed
    experts stay whole on each rank, as `tp_plan` leaves them)."""
    d = _block_width(block)
    whole: float = sum(_norm_saved(block.get(key), up) for key in _NORM_SLOTS) + d
    split = attention_saved(block["attn"], path, seq, window, mask, up)
    if block.get("cross_attn") is not None:
        whole += d
        split += attention_saved(block["cross_attn"], "fused", seq, up=up)
    if not (block.component == "ParallelBlock" and block.get("mlp_norm") is None):  # else one shared input
        whole += d
    mlp = block["mlp"]
    if mlp.component == "MoE":
        whole += mlp_saved(mlp, up)
    else:
        split += mlp_saved(mlp, up)
    return whole, split


def checkpointed_saved(block: Call) -> int:
    """Elements per token a checkpointed block keeps: its inputs (the residual stream; a decoder block of an
    encoder-decoder also the cross keys/values, projected outside the block)."""
    kept = _block_width(block)
    cross = block.get("cross_attn")
    if cross is not None:
        kept += 2 * cross["kv_heads"] * cross["head_dim"]
    return kept


_NORM_SLOTS = ("attn_norm", "mlp_norm", "attn_out_norm", "mlp_out_norm", "cross_norm")


def _block_width(block: Call) -> int:
    return block["attn"]["o"].positional(1)


Path = tuple[AttentionPath, int | None, float]  # path, window, mask elements per token


def attention_paths(model: Call, batch: int, seq: int, device: str) -> list[Path]:
    """Each block's attention path, window and per-token mask for a training step of `batch` whole sequences of
    `seq` tokens on `device`: archspec's CPU paths on "cpu", SDPA's fused kernels elsewhere (with the mask
    `AttentionPaths` renders where it needs one: a window, GLM's prefix), from the plan's attention paths call."""
    cpu = device == "cpu"
    if model.component == "EncoderDecoderLM":  # relative-position bias with a gradient in every self-attention
        blocks = _all_blocks(model)
        return [("math" if cpu else "fused", None, 0.0)] * len(blocks)
    paths = model["attention"]
    result: list[Path] = []
    for block, window in zip(_all_blocks(model), layer_windows(model), strict=True):
        attn = block["attn"]
        windowed = window is not None and window < seq
        if paths.get("softcap") is not None or paths.get("sinks"):  # the scores written out (`ChunkedScores`)
            result.append(("eager-softcap" if cpu else "fused", window, 0.0))
        elif paths.get("alibi") is not None:
            result.append(("distance-bias" if cpu else "masked", window, 0.0 if cpu else attn["heads"] * seq))
        elif model.get("prefix_lm"):
            result.append(("masked", window, float(seq)))  # a [batch, 1, seq, seq] mask
        elif windowed:
            result.append(("chunked" if cpu else "masked", window, 0.0 if cpu else seq / batch))  # [1, 1, s, s]
        elif cpu and attn.component == "LatentAttention" and attn["nope_dim"] + attn["rope_dim"] != attn["v_dim"]:
            result.append(("math", window, 0.0))  # CPU flash attention needs equal q.k and value widths
        else:
            result.append(("fused", window, 0.0))
    return result


def vision_saved_per_image(model: Call, up: float = 1.0) -> float:
    """Elements one image keeps through the vision tower (the blocks up to the deepest feature layer, fused
    bidirectional attention) and the projector."""
    if model.component != "VisionLanguageLM":
        return 0
    saved = 0
    feature_tokens, feature_width = model["feature_shape"]
    tower = model.get("vision_tower")
    if tower is not None:
        embed = tower["embed"]
        tokens = embed["positions"].positional(0)
        conv = embed["proj"]
        patches = tokens - bool(embed["class_token"])
        saved += patches * conv.positional(0) * conv["kernel_size"] ** 2  # the pixels, which the convolution keeps
        saved += tokens * _norm_saved(tower.get("pre_norm"), up)
        for block in tower["layers"].per_layer()[: max(tower["feature_layers"])]:
            saved += tokens * block_saved(block, "fused", tokens, up=up)
    projector = model["projector"]
    layers = projector["layers"]
    saved += feature_tokens * feature_width  # the projector's input
    for layer in layers[:-1]:
        saved += feature_tokens * (
            layer.positional(1) + _activation_saved(projector["activation"], layer.positional(1))
        )
    return saved


# ------------------------------------------------------------------------------------------------ sharding
def tp_split_parameters(spec: Spec, tp: int) -> tuple[int, int]:
    """(parameters split by the tensor-parallel plan, parameters replicated), read from `tp_plan` on a meta build."""
    from archspec.builder import build
    from archspec.distributed import check_tp_degree, tp_plan

    model = build(spec, device="meta")
    check_tp_degree(model, tp)  # heads (and kv heads) must divide by the degree, as parallelize requires
    plan = tp_plan(model)
    split = replicated = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            style = type(plan.get(name, None)).__name__
            if style in ("ColwiseParallel", "RowwiseParallel") and not (style == "RowwiseParallel" and pname == "bias"):
                split += param.numel()
            else:
                replicated += param.numel()
    return split, replicated


# ------------------------------------------------------------------------------------------------ the plan
def plan_memory(spec: Spec, setup: Setup | None = None, **options: Any) -> MemoryPlan:
    """Memory per device, whether it fits, the smallest change that fits, and the time bounds of `spec` under
    `setup` (or `Setup(**options)`)."""
    setup = _checked(spec, setup or Setup(**options))
    memory = _memory(spec, setup)
    fits = memory.total <= setup.device.memory_gib * 2**30
    suggestion = None if fits else _suggest(spec, setup)
    return MemoryPlan(spec.name, setup, memory, fits, suggestion, _bounds(spec, setup))


def _checked(spec: Spec, setup: Setup) -> Setup:
    for name in ("batch", "seq", "gpus", "fsdp", "tp"):
        if getattr(setup, name) < 1:
            raise AnalysisError(f"{name} must be at least 1, got {getattr(setup, name)}")
    if setup.mode not in ("train", "serve"):
        raise AnalysisError(f"mode must be train or serve, not {setup.mode!r}")
    if setup.checkpointing not in ("none", "full", "selective"):
        raise AnalysisError(f"checkpointing must be none, selective or full, not {setup.checkpointing!r}")
    if setup.optimizer not in ("adamw", "sgd"):
        raise AnalysisError(f"optimizer must be adamw or sgd, not {setup.optimizer!r}")
    if setup.fsdp * setup.tp > setup.gpus:
        setup = replace(setup, gpus=setup.fsdp * setup.tp)
    if setup.gpus % (setup.fsdp * setup.tp):
        raise AnalysisError(f"{setup.gpus} GPUs do not divide into fsdp {setup.fsdp} x tp {setup.tp}")
    check_context(spec, setup.seq)
    return replace(setup, dtype=canonical_dtype(setup.dtype))


def _memory(spec: Spec, setup: Setup) -> Memory:
    size = dtype_bytes(setup.dtype)
    counts = param_counts(spec)
    if setup.tp > 1:
        split, replicated = tp_split_parameters(spec, setup.tp)
        local = split // setup.tp + replicated
    else:
        local = counts.total
    sharded = -(-local // setup.fsdp)  # FSDP: every rank one shard of what TP left it
    parameters = sharded * size
    if setup.mode == "serve":
        kv = _kv_bytes(spec, setup)
        return Memory(parameters, 0, 0, 0, 0, 0, kv, parameters + kv)
    gradients = parameters
    # AdamW keeps its two states in the dtype of the parameters it updates: the fp32 master copy when there is one
    state = FP32 if setup.master_weights else size
    optimizer = (2 * state * sharded if setup.optimizer == "adamw" else 0) + (
        FP32 * sharded if setup.master_weights else 0
    )
    tokens = setup.batch * setup.seq
    up = FP32 / size  # what the model keeps in float32, in elements of the activations' dtype
    model = plan_of(spec).model
    blocks = _all_blocks(model)
    paths = attention_paths(model, setup.batch, setup.seq, setup.device.name)
    per_layer = []
    for block, (path, window, mask) in zip(blocks, paths, strict=True):
        whole, split = block_saved_parts(block, path, setup.seq, window, mask, up)
        per_layer.append(int((whole + split / setup.tp) * tokens) * size)
    inputs = [_block_width(block) * tokens * size for block in blocks]
    vocab = model["lm_head"].positional(1)
    head_in = model["lm_head"].positional(0)
    edges = (
        int((_norm_saved(model.get("final_norm"), up) + _norm_saved(model.get("embed_norm"), up) + head_in) * tokens)
        * size
    )
    if model.component == "EncoderDecoderLM":  # both stacks' final norms, and the encoder output cross k/v read
        norms = _norm_saved(model["encoder"]["final_norm"], up) + _norm_saved(model["decoder"]["final_norm"], up)
        edges += int((norms + head_in) * tokens) * size
    edges += int(vision_saved_per_image(model, up) * setup.images * setup.batch) * size
    # the loss keeps the fp32 log-softmax of the logits (the logits themselves go with the output, which a training
    # loop drops once it has the loss); its backward makes two fp32 [tokens, vocab] gradients
    logits = tokens * vocab * FP32
    loss_transient = 2 * tokens * vocab * FP32
    layer_params = [_block_params(block) * size // setup.tp // setup.fsdp for block in blocks]
    # FSDP2: a unit (a block, or the root's embedding, head and norms) is all-gathered into a buffer and copied
    # out to its parameters for its forward (2 x the unit); in its backward the unsharded gradients are
    # reduce-scattered while the next unit is gathered (3 x the unit, measured on 2 gloo ranks)
    units = [_block_params(block) for block in blocks]
    unit = max([*units, counts.total - sum(units) - counts.vision]) * size // setup.tp
    gathered = 2 * unit if setup.fsdp > 1 else 0
    scattered = 3 * unit if setup.fsdp > 1 else 0
    static = parameters + optimizer
    head_grad = (counts.head or counts.token_embedding) * size // setup.tp // setup.fsdp
    # which blocks recompute: every one (full), every other one from the first (selective, as
    # `enable_activation_checkpointing(model, every=2)` wraps them), none
    every = {"full": 1, "selective": 2}.get(setup.checkpointing)
    recomputed = [every is not None and index % every == 0 for index in range(len(blocks))]
    kept = [
        checkpointed_saved(block) * tokens * size if again else per_layer[index]
        for index, (block, again) in enumerate(zip(blocks, recomputed, strict=True))
    ]
    if any(recomputed) and model.component == "EncoderDecoderLM":  # each stack's [heads, seq, seq] position bias
        heads = blocks[0]["attn"]["heads"]
        edges += 2 * heads * setup.seq * setup.seq * size // setup.tp
    activations = sum(kept) + edges
    # end of forward: everything saved, the loss backward's gradients in flight
    peaks = [static + activations + logits + loss_transient + gathered]
    transient = loss_transient
    grads = head_grad
    remaining = activations - edges
    for index in reversed(range(len(blocks))):  # each block's backward, last to first
        flowing = 3 * inputs[index]  # the residual stream's gradient and a sublayer's, in flight
        extra = (per_layer[index] if recomputed[index] else 0) + flowing + scattered
        peaks.append(static + grads + remaining + extra)
        transient = max(transient, extra)
        remaining -= kept[index]
        grads += layer_params[index]
    grads = gradients
    # AdamW's temporaries: one tensor at a time on CPU (sqrt(v) and its quotient, the largest parameter's size);
    # on a GPU the default foreach implementation takes sqrt(v) of every parameter at once
    if setup.optimizer != "adamw":
        step_transient = 0
    elif setup.device.name == "cpu":
        step_transient = 2 * _largest_param(spec) * size // setup.tp // setup.fsdp
    else:
        step_transient = sharded * state
    peaks.append(static + grads + step_transient)
    total = max(peaks)
    return Memory(parameters, gradients, optimizer, activations, logits, max(transient, step_transient), 0, total)


def _all_blocks(model: Call) -> list[Call]:
    if model.component == "EncoderDecoderLM":
        return model["encoder"]["layers"].per_layer() + model["decoder"]["layers"].per_layer()
    return model["layers"].per_layer()


def _block_params(block: Call) -> int:
    return params_of(block)


def _largest_param(spec: Spec) -> int:
    """The token embedding or an untied head: the vocabulary-sized matrices are a model's largest tensors."""
    counts = param_counts(spec)
    return max(counts.token_embedding, counts.head)


def _kv_bytes(spec: Spec, setup: Setup) -> int:
    """The KV cache of `batch` sequences of `seq` positions with windows capped, per TP rank (kv heads split)."""
    figures = kv_cache(spec, setup.seq, setup.batch, setup.dtype)
    return figures.bytes_windowed // (setup.tp if _kv_splits(spec, setup.tp) else 1)


def _kv_splits(spec: Spec, tp: int) -> bool:
    """TP splits the cache by kv heads when every attention's kv heads divide by the degree (MLA's latent does
    not split)."""
    if tp == 1:
        return False
    model = plan_of(spec).model
    return all(
        block["attn"].component == "Attention" and block["attn"]["kv_heads"] % tp == 0 for block in _all_blocks(model)
    )


def _bounds(spec: Spec, setup: Setup) -> Bounds:
    """Training: tokens/s = peak FLOP/s of all GPUs / training FLOPs per token (`archspec info`'s exact count,
    causal attention). Serving: a decoding step reads the weights once and every cached position (the cache full
    at `seq`), so tokens/s <= batch x bandwidth / bytes; prefill of `batch` sequences >= their FLOPs / peak."""
    flops = flop_counts(spec, setup.seq)
    peak = setup.device.peak_tflops * 1e12 * setup.gpus
    train_per_token = flops.train_per_token
    if setup.mode == "train":
        return Bounds(peak / train_per_token, None, None, None, train_per_token, None)
    bandwidth = setup.device.bandwidth_gbs * 1e9 * setup.gpus
    weights = _streamed_weights(spec) * dtype_bytes(setup.dtype)
    kv = kv_cache(spec, setup.seq, setup.batch, setup.dtype).bytes_windowed
    step_bytes = weights + kv
    decode = setup.batch * bandwidth / step_bytes
    decode1 = bandwidth / (weights + kv // setup.batch)
    prefill = setup.batch * flops.forward_per_sequence / peak
    return Bounds(None, decode, decode1, prefill, train_per_token, step_bytes)


def _streamed_weights(spec: Spec) -> int:
    """Weights one decoding step reads: every parameter a token touches (MoE: the active ones; at batch B many
    experts are read, so this is the batch-1 figure and a lower bound on the bytes)."""
    return param_counts(spec).active


def _suggest(spec: Spec, setup: Setup) -> str | None:
    """The smallest change that fits: training: more FSDP ranks, then selective or full checkpointing; serving: tensor parallelism
    over more GPUs (whole heads per rank); then a smaller batch."""
    limit = setup.device.memory_gib * 2**30
    if setup.mode == "serve":
        for degree in (2, 4, 8, 16):
            if degree > setup.tp:
                try:
                    trial = replace(setup, tp=degree, gpus=max(setup.gpus, degree * setup.fsdp))
                    if _memory(spec, trial).total <= limit:
                        return f"--tp {degree} ({degree * setup.fsdp} GPUs)"
                except ArchspecError:  # heads that do not split over `degree` ranks
                    continue
    if setup.mode == "train":
        for ranks in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            if ranks > setup.fsdp:
                trial = replace(setup, fsdp=ranks, gpus=max(setup.gpus, ranks * setup.tp))
                if _memory(spec, trial).total <= limit:
                    return f"--fsdp {ranks} ({ranks * setup.tp} GPUs)"
        lighter = {"none": ("selective", "full"), "selective": ("full",)}.get(setup.checkpointing, ())
        for mode in lighter:  # selective recomputes half the blocks, full every one
            if _memory(spec, replace(setup, checkpointing=mode)).total <= limit:  # type: ignore[arg-type]
                return f"--checkpointing {mode}"
    batch = setup.batch
    while batch > 1:
        batch //= 2
        if _memory(spec, replace(setup, batch=batch)).total <= limit:
            return f"--batch {batch}"
    return None


__all__ = ["DEVICES", "Bounds", "Device", "Memory", "MemoryPlan", "Setup", "device_of", "plan_memory"]
