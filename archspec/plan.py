"""The compiler's decisions as data: a torch-free tree of component calls, built once per spec.

```
spec ──compile──▶ Plan ──build──▶ nn.Module            (archspec.build: `instantiate`)
                    ├──emit────▶ generated/<name>.py   (archspec.emit_source: the same calls, printed)
                    ├──analyse─▶ params, FLOPs, KV     (archspec.analysis: sums over the calls)
                    └──parallel▶ tensor-parallel plan  (archspec.distributed)
```
A `Call` is one constructor or function call of a component: `Attention(heads=32, q=nn.Linear(4096, 4096,
bias=False), ...)`. Arguments are plain values, functions from a component table (`Fn`: an activation, a
router scoring), nested calls, or a stack of blocks (`Layers`: one call per distinct kind of block and the kind
of each layer). Nothing here imports torch: `archspec info` reads a plan without it, and `instantiate` (which
does) lives in `archspec.builder`.

`Plan.features` names what the model has (RoPE, ALiBi, windows, an MoE, ...), as decided by the compiler: the
emitter keeps exactly the `# emit-if:` branches of the copied components that the model takes (see
`archspec.emit.components`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

Value = Union[None, bool, int, float, str, tuple["Value", ...], "Call", "Fn", "Layers"]


@dataclass(frozen=True)
class Fn:
    """A function passed as a value: entry `key` of the component table `table` (e.g. ACTIVATIONS["silu"])."""

    table: str
    key: str


@dataclass(frozen=True)
class Call:
    """`component(*positional, **keywords)`: a class or function of `archspec.nn` (`nn.*` names: torch.nn).

    `args` keep their order; a name of None is a positional argument (torch's own modules read best that way:
    `nn.Linear(4096, 1024, bias=False)`)."""

    component: str
    args: tuple[tuple[str | None, Value], ...] = ()

    def __getitem__(self, name: str) -> Value:
        for key, value in self.args:
            if key == name:
                return value
        raise KeyError(f"{self.component} has no argument {name!r}")

    def get(self, name: str, default: Value = None) -> Value:
        try:
            return self[name]
        except KeyError:
            return default

    def positional(self, index: int) -> Value:
        return [value for key, value in self.args if key is None][index]

    def children(self) -> Iterator[tuple[str, Call | Layers]]:
        """The argument calls and stacks of this call (not recursively), with their argument names."""
        for key, value in self.args:
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, Call | Layers):
                    yield key or "", item


def call(component: str, *positional: Value, **keywords: Value) -> Call:
    """A `Call` written like the call it stands for: `call("nn.Linear", 4096, 1024, bias=False)`."""
    return Call(component, tuple((None, value) for value in positional) + tuple(keywords.items()))


@dataclass(frozen=True)
class Layers:
    """A stack of blocks: one call per distinct kind of block, and the kind of every layer in order."""

    kinds: tuple[tuple[str, Call], ...]
    pattern: tuple[str, ...]

    def kind(self, name: str) -> Call:
        return dict(self.kinds)[name]

    def per_layer(self) -> list[Call]:
        """The block call of each layer."""
        kinds = dict(self.kinds)
        return [kinds[name] for name in self.pattern]

    def counts(self) -> dict[str, int]:
        """How many layers each kind has, in the order the kinds first appear."""
        counts: dict[str, int] = {}
        for name in self.pattern:
            counts[name] = counts.get(name, 0) + 1
        return counts


@dataclass(frozen=True)
class Plan:
    """What `archspec.build(spec)` instantiates and `archspec.emit_source(spec)` prints.

    `model`: the root call (DecoderLM, EncoderDecoderLM, VisionLanguageLM). `features`: the facts the emitter
    specialises copied components on (see FEATURES). `varying`: features that some instances of a shared class have
    and others lack (a BLOOM-style decoder's blocks next to a CLIP tower's plain pre-norm blocks): their `emit-when`
    conditions stay in the file as plain `if`s. `init_std`: the normal init of matrices and embeddings;
    `deepnorm_beta`: DeepNet's gain for value, output and MLP matrices (None: not a DeepNorm model)."""

    name: str
    model: Call
    features: frozenset[str]
    varying: frozenset[str] = frozenset()
    init_std: float = 0.02
    deepnorm_beta: float | None = None

    def __post_init__(self) -> None:
        unknown = (self.features | self.varying) - FEATURES.keys()
        if unknown or "library" in self.features | self.varying:
            raise ValueError(f"unknown plan features: {sorted(unknown)} (known: {sorted(FEATURES)})")

    def calls(self) -> Iterator[tuple[str, Call]]:
        """Every call of the plan with its module path (`layers[moe].mlp.router`), each distinct kind once."""
        yield from walk(self.model)


def walk(node: Call, path: str = "") -> Iterator[tuple[str, Call]]:
    """`node` and the calls below it, depth first, with dotted paths; a stack's kinds appear as `layers[kind]`."""
    yield path, node
    for key, value in node.args:
        where = f"{path}.{key or ''}" if path else key or ""
        items = enumerate(value) if isinstance(value, tuple) else [(None, value)]
        for index, child in items:  # a tuple of calls is a ModuleList: its items are .0, .1, ...
            at = where if index is None else f"{where}.{index}"
            if isinstance(child, Layers):
                for kind, block in child.kinds:
                    yield from walk(block, f"{at}[{kind}]")
            elif isinstance(child, Call):
                yield from walk(child, at)


def component_names(node: Call) -> set[str]:
    """The components a call uses, itself and every call below it."""
    return {found.component for _, found in walk(node)}


def args_of(node: Call) -> dict[str, Any]:
    """A call's keyword arguments as a dict (positional ones under "0", "1", ...)."""
    named: dict[str, Any] = {}
    position = 0
    for key, value in node.args:
        if key is None:
            key, position = str(position), position + 1
        named[key] = value
    return named


FEATURES: dict[str, str] = {
    "library": "archspec's own models only, never an emitted file (FlexAttention, fx tracing, compiled decoding)",
    "rope": "rotary position embedding",
    "rope_interleaved": "RoPE over interleaved pairs (2k, 2k + 1)",
    "rope_attention_factor": "cos and sin scaled by YaRN's temperature",
    "partial_rotary": "only part of each head rotates",
    "dynamic_ntk": "dynamic NTK RoPE: frequencies recomputed past the context length",
    "longrope": "LongRoPE: long per-frequency factors once a call's keys exceed the pre-training context",
    "block_positions": "GLM's 2-D positions (position id, block position id)",
    "alibi": "ALiBi biases",
    "alibi_bfloat16": "ALiBi's slope x position in bfloat16 (Falcon-RW)",
    "inverse_layer_scale": "layer i's attention scale divided by i + 1 (GPT-2's option)",
    "learned_positions": "a learned absolute position table",
    "embed_norm": "a norm right after the token embedding",
    "window": "sliding-window attention in some layer",
    "distance_bias": "a bias by distance (ALiBi, or windows as -inf) read as a Toeplitz view on CPU",
    "qk_norm": "norms of queries and keys",
    "qk_norm_head": "qk-norms of each head before RoPE",
    "qk_norm_projection": "qk-norms over the whole q and k projections (OLMo 2)",
    "qk_norm_rotated": "qk-norms of each head after RoPE (Hunyuan)",
    "qk_norm_placement": "qk-norms placed other than per head before RoPE",
    "layer_positions": "layers that differ in positions (own RoPE settings, or none)",
    "softcap": "attention scores soft-capped before the mask (Gemma 2)",
    "sinks": "a learned logit per head joins each attention softmax (gpt-oss)",
    "embed_scale": "token embeddings multiplied by a constant",
    "embed_scale_in_dtype": "the embedding multiplier rounded to the activations' dtype (Gemma)",
    "logit_scale": "logits multiplied by a constant",
    "logit_softcap": "final logits soft-capped",
    "residual_scale": "sublayer outputs multiplied by a constant before the residual add (Granite)",
    "prefix_lm": "GLM's bidirectional prefix",
    "residual_from_norm": "pre-norm blocks whose residual starts from the normed input (BLOOM's option)",
    "two_parallel_norms": "parallel blocks with a separate MLP norm",
    "moe": "a mixture of experts in some layer",
    "dense_and_moe": "dense MLP layers next to MoE layers",
    "gated_experts": "experts with a gate projection (SwiGLU experts)",
    "correction_bias": "DeepSeek-V3's expert-selection bias",
    "router_bias": "a learned bias of the router logits (gpt-oss)",
    "expert_bias": "biases on the routed experts' projections (gpt-oss)",
    "expert_glu": "experts with a gated unit other than act(gate) * up (gpt-oss's clamped SwiGLU)",
    "group_limited": "group-limited expert routing",
    "shared_experts": "always-on shared experts",
    "shared_gate": "a sigmoid gate on the shared experts",
    "router_jitter": "multiplicative jitter of the MoE input in training",
    "sequence_aux_loss": "DeepSeek-V3's sequence-wise balance loss",
    "balance_softmax_top_k": "the token balance loss counts the top-k of the softmax, not the selected experts",
    "vision": "image tokens spliced into the sequence",
    "vision_tower": "a built-in vision tower",
    "pooling": "average pooling of image tokens",
    "tied": "the output head shares the token embedding",
    "encoder_decoder": "an encoder and a decoder with cross-attention (T5)",
    "head_scale": "the final hidden state scaled before the head (T5 v1.0)",
    "deepnorm": "DeepNet's initialisation",
    "linear_bias": "a linear layer with a bias",
}
"""The facts a plan can state about its model, each with what it means (the emitter's `# emit-if:` vocabulary)."""
