"""`emit_source(spec)`: one stand-alone Python file (torch + stdlib only) with the same model as `build(spec)`.

The file is the components the spec uses, copied from `archspec.nn` (see `components.py`), plus glue written by
the Jinja templates `templates/file.py.j2` and `templates/glue.py.j2`: a header with the spec's table row, the
resolved spec as a `CONFIG` literal, `make_moe()` (MoE specs), `make_block()` and a model class constructible with
no arguments. The glue mirrors
`archspec.compiler` call for call, with the spec's numbers as literals; the tests hold the two to the same
state-dict names and logits.

Safety: the spec is re-validated first (a `Spec` can be mutated without validation), identifiers are derived from
the validated name by `module_name` / `class_name`, and every value reaches the source through `literals.py`.
"""

from __future__ import annotations

import ast
import inspect
import keyword
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from archspec.emit.components import library, rename_ops, select
from archspec.emit.literals import py_block, py_literal
from archspec.spec.schema import (
    GATED_ACTIVATIONS,
    NAME_PATTERN,
    AlibiSpec,
    DynamicScaling,
    LatentAttentionSpec,
    LearnedPositionSpec,
    LinearScaling,
    Llama3Scaling,
    NoPositionSpec,
    RelativeBiasSpec,
    RopeSpec,
    Spec,
    ViTSpec,
    YarnScaling,
)

TEMPLATES = Path(__file__).parent / "templates"
RESERVED_MODULES = frozenset({"torch", "archspec"}) | frozenset(sys.stdlib_module_names)


# -------------------------------------------------------------------------------------------- names
def _checked_name(name: str) -> str:
    if not isinstance(name, str) or re.fullmatch(NAME_PATTERN, name) is None:
        raise ValueError(f"spec name {name!r} is not a valid name (letters, digits, '.', '_' and '-', starting alnum)")
    return name


def module_name(name: str) -> str:
    """The file name (without .py) for a spec name: `llama3-8b` -> `llama3_8b`; `torch` -> `torch_model`."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", _checked_name(name))
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident) or keyword.issoftkeyword(ident) or ident in RESERVED_MODULES:
        ident += "_model"
    assert ident.isidentifier()
    return ident


def class_name(name: str) -> str:
    """The model class for a spec name: `llama3-8b` -> `Llama3_8b`, `qwen2.5-7b` -> `Qwen2_5_7b`, `gpt2` -> `Gpt2`.

    Parts are capitalised and joined, with `_` between two digits; a name that would collide with anything the
    generated file defines (`MLP`, `Model`, ...) gets a `Model` suffix.
    """
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", _checked_name(name)) if p]
    ident = ""
    for part in parts:
        joiner = "_" if ident and ident[-1].isdigit() and part[0].isdigit() else ""
        ident += joiner + part[0].upper() + part[1:]
    if not ident or not ident[0].isalpha():
        ident = "Model_" + ident
    if keyword.iskeyword(ident) or ident in _file_names():
        ident += "Model"
    assert ident.isidentifier()
    return ident


@cache
def _file_names() -> frozenset[str]:
    lib = library()
    return (
        frozenset(lib.definitions)
        | frozenset(lib.imports)
        | {"CONFIG", "Model", "make_block", "make_moe"}
        | {
            "make_encoder_block",
            "make_decoder_block",
            "make_vision_block",
            "make_vision_tower",
        }
    )


# ---------------------------------------------------------------------------------------- the file
def emit_source(spec: Spec) -> str:
    """The stand-alone source of `spec`'s model. Deterministic: the same spec gives the same bytes."""
    spec = _revalidated(spec)
    reason = unsupported(spec)
    if reason is not None:
        raise NotImplementedError(f"emit_source cannot emit {spec.name!r} yet: {reason}")
    context = _encoder_decoder_context(spec) if spec.structure == "encoder-decoder" else _context(spec)
    environment = _environment()
    glue = environment.get_template(context["glue_template"]).render(context)
    selection = select(glue, _features(spec), op_namespace=op_namespace(spec.name))
    leftover = [source for _, source in selection.sources if rename_ops(source, "x") != source]
    if leftover:  # every custom op must have moved to the file's namespace (see components.rename_ops)
        raise RuntimeError(f"archspec operator references left in the copied components: {leftover[0][:200]}")
    modules: list[tuple[str, list[str]]] = []
    for module, source in selection.sources:
        if not modules or modules[-1][0] != module:
            modules.append((module, []))
        modules[-1][1].append(source)
    text = environment.get_template("file.py.j2").render(
        context,
        module=module_name(spec.name),
        imports=selection.imports,
        components=[(module, "\n\n\n".join(sources)) for module, sources in modules],
        glue=glue.rstrip("\n"),
    )
    ast.parse(text)  # a template bug must never produce a file that does not parse
    return text


@cache
def _environment() -> Any:
    import jinja2  # imported here so `archspec` itself stays quick to import

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # the output is Python; every value is made safe by literals.py before it gets here
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def op_namespace(name: str) -> str:
    """The torch.library namespace of a generated file's custom operators: `mixtral-8x7b` -> `mixtral_8x7b_ops`.

    Operator names are global to a process; the file's own namespace lets it be imported next to archspec (whose
    operators are `archspec::...`) and next to other generated files."""
    return f"{module_name(name)}_ops"


def unsupported(spec: Spec) -> str | None:
    """Why the emitter cannot write this spec's model (None when it can). The glue covers every structure the
    compiler builds: decoders (dense, MoE, MLA, every block kind, vision), GLM prefix LMs and T5 encoder-decoders.

    What is refused is what `archspec.compiler` would not build as the spec says: an encoder-decoder spec with
    options that only its decoder-only wiring reads (the compiler's T5 stacks have dense MLPs, MHA/GQA attention
    and no embedding norm), so an emitted file could only copy the compiler in dropping them.
    """
    position = spec.position
    encoder_decoder = spec.structure == "encoder-decoder"
    checks = [
        (spec.structure not in ("decoder", "encoder-decoder", "glm"), f"structure {spec.structure!r}"),
        (spec.attention.kind not in ("mha", "mla"), f"attention kind {spec.attention.kind!r}"),
        (spec.attention.kind == "mla" and not isinstance(position, RopeSpec), "mla without rope"),
        (encoder_decoder and spec.attention.kind != "mha", "encoder-decoder with mla attention (T5 stacks are MHA)"),
        (encoder_decoder and spec.moe is not None, "encoder-decoder with moe (archspec builds dense T5 MLPs)"),
        (encoder_decoder and spec.embeddings.norm, "encoder-decoder with embeddings.norm (T5 has none)"),
        (encoder_decoder and spec.vision is not None, "encoder-decoder with vision"),
        (encoder_decoder and not isinstance(position, RelativeBiasSpec), "encoder-decoder without relative-bias"),
        (not encoder_decoder and spec.n_decoder_layers is not None, "n_decoder_layers outside encoder-decoder"),
        (not encoder_decoder and isinstance(position, RelativeBiasSpec), "relative-bias outside encoder-decoder"),
        (
            not isinstance(position, RopeSpec | AlibiSpec | LearnedPositionSpec | NoPositionSpec | RelativeBiasSpec),
            f"position kind {position.kind!r}",
        ),
        (
            isinstance(position, RopeSpec) and position.block_positions and spec.structure != "glm",
            "rope block_positions outside structure glm",
        ),
        (spec.block.kind not in BLOCK_KINDS, f"block kind {spec.block.kind!r}"),
    ]
    failed = next((reason for failed, reason in checks if failed), None)
    return failed or _unhandled_field(spec)


BLOCK_KINDS = ("pre-norm", "post-norm", "parallel", "sandwich", "deepnorm")


HANDLED: dict[str, set[str] | None] = {
    "": {"name", "description", "structure", "vocab_size", "d_model", "n_layers", "n_decoder_layers"}
    | {"context_length", "attention", "position", "norm", "block", "mlp", "embeddings", "tokens", "moe", "vision"},
    "attention": {"kind", "heads", "kv_heads", "head_dim", "bias", "qk_norm", "window", "window_layers", "scale"}
    | {"q_rank", "kv_rank", "nope_dim", "rope_dim", "v_dim", "latent_norm_eps"},  # mla
    "position": {"kind", "theta", "fraction", "pairing", "scaling", "block_positions"}  # rope
    | {"buckets", "max_distance"},  # relative-bias
    "position.scaling": None,  # every field of the four scaling kinds is passed to the frequency functions
    "attention.bias": None,
    "norm": {"kind", "eps", "bias"},
    "block": {"kind", "parallel_norms", "residual_from_norm", "alpha", "beta"},  # beta: init only, in CONFIG
    "mlp": {"activation", "d_ff", "bias"},
    "embeddings": {"tied", "norm", "scale_head"},
    "moe": {"experts", "top_k", "d_ff", "shared_experts", "shared_d_ff", "shared_gate", "dense_layers", "layers"}
    | {"router"},
    "moe.router": {"scoring", "renormalize", "scale", "groups", "top_groups", "group_score", "correction_bias"}
    | {"jitter", "aux_loss", "aux_loss_coef", "z_loss_coef"},
    "tokens": None,  # token ids change no weights or logits (eos/pad set generate()'s defaults, decoder_start T5's)
    "vision": {"tower", "feature_layer", "feature_select", "projector", "pooling", "image_token", "tokens_per_image"},
    "vision.tower": {"kind", "image_size", "patch_size", "channels", "width", "depth", "heads", "d_ff", "activation"}
    | {"norm_eps", "bias", "patch_bias", "class_token", "pre_norm", "post_norm"}  # vit
    | {"patches"},  # external
    "vision.projector": {"kind", "depth", "activation", "bias"},
    "vision.pooling": {"kind", "tokens"},
}
"""Fields the glue reads, per section. Any other field (added to the schema later) must keep its default, or
`unsupported` names it: a new option can never be silently dropped from an emitted file."""


def _unhandled_field(spec: Spec) -> str | None:
    def walk(model: BaseModel, path: str) -> str | None:
        handled = HANDLED.get(path, set())
        if handled is None:
            return None
        for name, info in type(model).model_fields.items():
            value, key = getattr(model, name), f"{path}.{name}" if path else name
            if name not in handled:
                if value != info.get_default(call_default_factory=True):
                    return f"field {key!r} (not handled by the emitter yet)"
            elif isinstance(value, BaseModel):
                problem = walk(value, key)
                if problem:
                    return problem
        return None

    return walk(spec, "")


def _revalidated(spec: Spec) -> Spec:
    """Validate again from plain data: fields assigned after validation are checked like a fresh spec."""
    from archspec.spec.loader import spec_from_dict

    if not isinstance(spec, Spec):
        raise TypeError(f"emit_source expects an archspec.Spec, got {type(spec).__name__}")
    _checked_name(spec.name)
    return spec_from_dict(spec.model_dump(exclude_none=True, warnings=False), source=f"<spec {spec.name!r}>")


def _features(spec: Spec) -> frozenset[str]:
    position = spec.position
    features = set()
    if isinstance(position, RopeSpec):
        features.add("rope")
        if isinstance(position.scaling, DynamicScaling):
            features.add("dynamic_ntk")
    if isinstance(position, AlibiSpec):
        features.add("alibi")
    if any(spec.window_for_layer(index) is not None for index in range(spec.n_layers)):
        features.add("window")
    if {"alibi", "window"} & features:  # CPU paths with a bias by distance (ToeplitzBias)
        features.add("distance_bias")
    if getattr(spec.attention, "qk_norm", False):
        features.add("qk_norm")
    if getattr(spec, "moe", None) is not None:
        features.add("moe")
    if spec.structure == "glm":
        features.add("prefix_lm")
        if isinstance(position, RopeSpec) and position.block_positions:
            features.add("block_positions")
    if spec.vision is not None:
        features.add("vision")
    return frozenset(features)


# ------------------------------------------------------------------------------------------- glue
def _context(spec: Spec) -> dict[str, Any]:
    """The template's inputs: each value already a piece of valid Python (literals from literals.py)."""
    attn, position, block = spec.attention, spec.position, spec.block
    d, n_layers = spec.d_model, spec.n_layers
    norm = _norm(spec, d)
    if isinstance(attn, LatentAttentionSpec):
        attention_class, attention_args = "LatentAttention", _latent_attention_args(spec)
    else:
        attention_class, attention_args = "Attention", _attention_args(spec)
    mlp_args = _mlp_args(spec, spec.mlp.d_ff, spec.mlp.bias)
    moe_layers = [index for index in range(n_layers) if spec.is_moe_layer(index)]
    if not moe_layers:
        moe_choice, make_layer = "none", "make_block() for _ in"
    elif len(moe_layers) == n_layers:
        moe_choice, make_layer = "all", "make_block() for _ in"
    elif moe_layers == list(range(moe_layers[0], n_layers)):
        moe_choice, make_layer = "some", f"make_block(moe=index >= {moe_layers[0]!r}) for index in"
    else:
        moe_choice, make_layer = "some", f"make_block(moe=index in {py_literal(tuple(moe_layers))}) for index in"
    if block.kind == "post-norm":
        block_class, block_args = "PostNormBlock", [("attn_norm", norm), ("mlp_norm", norm)]
    elif block.kind == "parallel":
        block_class, block_args = "ParallelBlock", [("attn_norm", norm)]
        if block.parallel_norms == 2:
            block_args.append(("mlp_norm", norm))
    elif block.kind in ("pre-norm", "sandwich"):
        block_class, block_args = "PreNormBlock", [("attn_norm", norm), ("mlp_norm", norm)]
        if block.kind == "sandwich":
            block_args += [("attn_out_norm", norm), ("mlp_out_norm", norm)]
        if block.residual_from_norm:
            block_args.append(("residual_from_norm", "True"))
    elif block.kind == "deepnorm":
        alpha = block.alpha or 1.0  # as archspec.compiler: the spec resolves a missing alpha to (2N)^(1/4)
        block_class, block_args = (
            "DeepNormBlock",
            [("attn_norm", norm), ("mlp_norm", norm), ("alpha", py_literal(alpha))],
        )
    else:
        raise NotImplementedError(f"emitting block kind {block.kind!r} is not supported yet")

    windows = [spec.window_for_layer(index) for index in range(n_layers)]
    if len(set(windows)) == 1:
        windows_code = f"windows=[{py_literal(windows[0])}] * {n_layers},"
    else:
        windows_code = py_block(windows, indent=3, prefix="windows=", suffix=",").lstrip()
    model_args = [
        ("embed", f"nn.Embedding({py_literal(spec.vocab_size)}, {py_literal(d)})"),
        ("layers", f"[{make_layer} range({py_literal(n_layers)})]"),
        ("final_norm", "nn.Identity()" if block.kind in ("post-norm", "deepnorm") else norm),
        ("lm_head", f"nn.Linear({py_literal(d)}, {py_literal(spec.vocab_size)}, bias=False)"),
    ]
    tail = [
        (key, py_literal(value))
        for key, value in (("kv_heads", spec.kv_heads), ("head_dim", spec.head_dim))
        if key in _decoder_parameters()  # older DecoderLM signatures took these for the cache
    ]
    tail.append(("context_length", py_literal(spec.context_length)))
    if isinstance(position, LearnedPositionSpec):
        tail.append(("pos_embed", f"nn.Embedding({py_literal(spec.context_length)}, {py_literal(d)})"))
    if spec.embeddings.norm:
        tail.append(("embed_norm", norm))
    if isinstance(position, RopeSpec):
        tail.append(("rotary", "rotary"))
    if isinstance(position, AlibiSpec):
        tail.append(("alibi_slopes", f"alibi_slopes({py_literal(attn.heads)})"))
    if spec.embeddings.tied:
        tail.append(("tied", "True"))
    if spec.moe is not None:  # the router losses' settings, as archspec.compiler passes them
        router = spec.moe.router
        tail += [
            ("aux_loss", py_literal(router.aux_loss)),
            ("aux_loss_coef", py_literal(router.aux_loss_coef)),
            ("z_loss_coef", py_literal(router.z_loss_coef)),
        ]
    tail += _token_args(spec)
    if spec.structure == "glm":  # the prompt (part A) is bidirectional; 2-D positions when the spec has them
        tail.append(("prefix_lm", "True"))
        if isinstance(position, RopeSpec) and position.block_positions:
            tail.append(("block_positions", "True"))
    vision = _vision(spec) if spec.vision is not None else None
    if vision is not None:
        tail += vision["model_args"]
    if not isinstance(position, RopeSpec | AlibiSpec | LearnedPositionSpec | NoPositionSpec):
        raise NotImplementedError(f"emitting position kind {position.kind!r} is not supported yet")

    return {
        **_common_context(spec),
        "glue_template": "glue.py.j2",
        "deepnorm_beta": py_literal(block.beta) if block.kind == "deepnorm" else None,
        "base_class": "VisionLanguageLM" if vision is not None else "DecoderLM",
        "vision": vision,
        "n_layers": n_layers,
        "block_kind": block.kind,
        "attention_class": attention_class,
        "attention_args": attention_args,
        "mlp_args": mlp_args,
        "moe_choice": moe_choice,
        "moe_layers": _ranges(moe_layers),
        "moe_call": _moe_call(spec) if moe_layers else None,
        "block_class": block_class,
        "block_args": block_args,
        "model_args": model_args,
        "windows_code": windows_code,
        "model_tail": tail,
        "rotary": _rotary(spec) if isinstance(position, RopeSpec) else None,
    }


def _common_context(spec: Spec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "class_name": class_name(spec.name),
        "header": _header(spec),
        "config": py_block(spec.model_dump(exclude_none=True), prefix="CONFIG = ", expand=True),
        "usage": _usage(spec),
    }


def _token_args(spec: Spec) -> list[tuple[str, str]]:
    """generate()'s eos/pad defaults: the spec's tokens, as archspec.compiler passes them."""
    args = []
    for token in ("eos", "pad"):
        value = getattr(spec.tokens, token)
        if value is not None:
            args.append((f"{token}_token_id", py_literal(value)))
    return args


def _usage(spec: Spec) -> list[str]:
    """The lines of the file docstring's example that call the model (after it is built and loaded)."""
    if spec.structure == "encoder-decoder":
        return [
            "logits = model(input_ids, decoder_input_ids=decoder_input_ids).logits",
            "tokens = model.generate(input_ids, max_new_tokens=20)  # decoder tokens, the start token first",
        ]
    if spec.vision is not None:
        vision = spec.vision
        images = "pixel_values=pixel_values" if isinstance(vision.tower, ViTSpec) else "image_features=features"
        return [
            f"# input_ids hold {vision.tokens_per_image} placeholder tokens (id {vision.image_token}) per image",
            f"logits = model(input_ids, {images}).logits",
            f"tokens = model.generate(input_ids, max_new_tokens=20, {images})",
        ]
    if spec.structure == "glm":
        return [
            "logits = model(input_ids, prefix_lengths=prefix_lengths).logits  # part A: bidirectional",
            "tokens = model.generate(input_ids, max_new_tokens=20)  # the prompt is part A",
        ]
    return ["logits = model(input_ids).logits", "tokens = model.generate(input_ids, max_new_tokens=20)"]


def _attention_args(spec: Spec) -> list[tuple[str, str]]:
    """`Attention`'s arguments as `archspec.compiler._attention` passes them."""
    attn, position = spec.attention, spec.position
    assert not isinstance(attn, LatentAttentionSpec)
    interleaved = isinstance(position, RopeSpec) and position.pairing == "interleaved"
    return [
        ("d_model", py_literal(spec.d_model)),
        ("heads", py_literal(attn.heads)),
        ("kv_heads", py_literal(spec.kv_heads)),
        ("head_dim", py_literal(spec.head_dim)),
        ("bias", py_literal((attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o))),
        ("qk_norm_eps", py_literal(spec.norm.eps if attn.qk_norm else None)),
        ("scale", py_literal(attn.scale)),
        ("rope_interleaved", py_literal(interleaved)),
    ]


# ---------------------------------------------------------------------------------- encoder-decoder
def _encoder_decoder_context(spec: Spec) -> dict[str, Any]:
    """The T5 glue's inputs, as `archspec.compiler._encoder_decoder` wires the model."""
    attn, position = spec.attention, spec.position
    assert isinstance(position, RelativeBiasSpec) and not isinstance(attn, LatentAttentionSpec)
    assert spec.n_decoder_layers is not None and spec.tokens.decoder_start is not None
    d, norm = spec.d_model, _norm(spec, spec.d_model)
    cross_args = [
        ("d_model", py_literal(d)),
        ("heads", py_literal(attn.heads)),
        ("kv_heads", py_literal(spec.kv_heads)),
        ("head_dim", py_literal(spec.head_dim)),
        ("bias", py_literal((attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o))),
        ("scale", py_literal(attn.scale)),
    ]

    def stack(layers: str, count: int, bidirectional: bool) -> str:
        bias_args = [
            ("heads", py_literal(attn.heads)),
            ("buckets", py_literal(position.buckets)),
            ("max_distance", py_literal(position.max_distance)),
            ("bidirectional", py_literal(bidirectional)),
        ]
        args: list[tuple[str | None, str]] = [
            ("layers", f"[{layers}() for _ in range({py_literal(count)})]"),
            ("position_bias", _call("RelativePositionBias", bias_args, 4)),
            ("final_norm", norm),
        ]
        return _call("Stack", args, 3)

    model_args = [
        ("embed", f"nn.Embedding({py_literal(spec.vocab_size)}, {py_literal(d)})"),
        ("encoder", stack("make_encoder_block", spec.n_layers, bidirectional=True)),
        ("decoder", stack("make_decoder_block", spec.n_decoder_layers, bidirectional=False)),
        ("lm_head", f"nn.Linear({py_literal(d)}, {py_literal(spec.vocab_size)}, bias=False)"),
        ("kv_heads", py_literal(spec.kv_heads)),
        ("head_dim", py_literal(spec.head_dim)),
        ("decoder_start", py_literal(spec.tokens.decoder_start)),
    ]
    if spec.embeddings.scale_head:  # T5 v1.0: the decoder output times d_model^-0.5 before the tied head
        model_args.append(("head_scale", f"{py_literal(d)}**-0.5"))
    if spec.embeddings.tied:
        model_args.append(("tied", "True"))
    model_args += _token_args(spec)
    return {
        **_common_context(spec),
        "glue_template": "encoder_decoder.py.j2",
        "n_layers": spec.n_layers,
        "n_decoder_layers": spec.n_decoder_layers,
        "attention_args": _attention_args(spec),
        "cross_args": cross_args,
        "mlp_args": _mlp_args(spec, spec.mlp.d_ff, spec.mlp.bias),
        "norm": norm,
        "model_args": model_args,
    }


# ------------------------------------------------------------------------------------------- vision
def _vision(spec: Spec) -> dict[str, Any]:
    """The vision glue's inputs, as `archspec.compiler._vision` and `_vision_tower` wire them."""
    vision = spec.vision
    assert vision is not None and vision.projector.depth is not None
    tower = vision.tower
    context: dict[str, Any] = {"tower": None, "external": not isinstance(tower, ViTSpec)}
    if isinstance(tower, ViTSpec):
        width, grid, hidden_states = tower.width, tower.image_size // tower.patch_size, tower.depth + 1
        norm = f"nn.LayerNorm({py_literal(width)}, eps={py_literal(tower.norm_eps)})"
        embed_args = [
            ("channels", py_literal(tower.channels)),
            ("width", py_literal(width)),
            ("patch_size", py_literal(tower.patch_size)),
            ("grid", py_literal(grid)),
            ("class_token", py_literal(tower.class_token)),
            ("bias", py_literal(tower.patch_bias)),
        ]
        tower_args: list[tuple[str | None, str]] = [
            ("embed", _call("PatchEmbedding", embed_args, 2)),
            ("layers", f"[make_vision_block() for _ in range({py_literal(tower.depth)})]"),
            ("pre_norm", norm if tower.pre_norm else "None"),
            ("post_norm", norm if tower.post_norm else "None"),
            ("feature_layers", py_literal([layer % hidden_states for layer in vision.feature_layers])),
            ("drop_class_token", py_literal(tower.class_token and vision.feature_select == "patches")),
        ]
        context["tower"] = {
            "depth": tower.depth,
            "width": width,
            "attention_args": [
                ("d_model", py_literal(width)),
                ("heads", py_literal(tower.heads)),
                ("kv_heads", py_literal(tower.heads)),
                ("head_dim", py_literal(width // tower.heads)),
                ("bias", py_literal((tower.bias,) * 4)),
            ],
            "mlp_args": [
                ("d_model", py_literal(width)),
                ("d_ff", py_literal(tower.d_ff)),
                ("activation", _vision_activation(tower.activation)),
                ("gated", "False"),
                ("bias", py_literal(tower.bias)),
            ],
            "norm": norm,
            "tower_call": _call("VisionTower", tower_args, 1),
        }
    width = tower.width * (len(vision.feature_layers) if isinstance(tower, ViTSpec) else 1)
    projector = vision.projector
    projector_args: list[tuple[str | None, str]] = [
        ("in_dim", py_literal(width)),
        ("out_dim", py_literal(spec.d_model)),
        ("depth", py_literal(projector.depth)),
        ("activation", _vision_activation(projector.activation)),
        ("bias", py_literal(projector.bias)),
    ]
    pooling = "None"
    if vision.pooling is not None:
        grid, side = round(vision.feature_tokens**0.5), round(vision.pooling.tokens**0.5)
        pooling = f"PatchPool(grid={py_literal(grid)}, side={py_literal(side)})"
    context["model_args"] = [
        ("vision_tower", "make_vision_tower()" if isinstance(tower, ViTSpec) else "None"),
        ("projector", _call("Projector", projector_args, 3)),
        ("pooling", pooling),
        ("image_token", py_literal(vision.image_token)),
        ("tokens_per_image", py_literal(vision.tokens_per_image)),
        ("feature_shape", py_literal((vision.feature_tokens, width))),
    ]
    return context


def _mlp_args(spec: Spec, d_ff: int, bias: bool) -> list[tuple[str, str]]:
    activation = spec.mlp.activation
    return [
        ("d_model", py_literal(spec.d_model)),
        ("d_ff", py_literal(d_ff)),
        ("activation", _activation(GATED_ACTIVATIONS.get(activation, activation))),
        ("gated", py_literal(activation in GATED_ACTIVATIONS)),
        ("bias", py_literal(bias)),
    ]


def _latent_attention_args(spec: Spec) -> list[tuple[str, str]]:
    """`LatentAttention`'s arguments as `archspec.compiler._latent_attention` computes them; the default scale is
    written as the expression it is (DeepSeek's YaRN correction enters squared), which Python evaluates to the
    same float."""
    attn, position = spec.attention, spec.position
    assert isinstance(attn, LatentAttentionSpec) and isinstance(position, RopeSpec)
    if attn.scale is not None:
        scale = py_literal(attn.scale)
    else:
        scale = f"{py_literal(attn.nope_dim + attn.rope_dim)}**-0.5"
        scaling = position.scaling
        if isinstance(scaling, YarnScaling) and scaling.mscale_all_dim:
            scale += f" * yarn_mscale({py_literal(scaling.factor)}, {py_literal(scaling.mscale_all_dim)}) ** 2"
    return [
        ("d_model", py_literal(spec.d_model)),
        ("heads", py_literal(attn.heads)),
        ("q_rank", py_literal(attn.q_rank)),
        ("kv_rank", py_literal(attn.kv_rank)),
        ("nope_dim", py_literal(attn.nope_dim)),
        ("rope_dim", py_literal(attn.rope_dim)),
        ("v_dim", py_literal(attn.v_dim)),
        ("bias", py_literal(attn.bias)),
        ("latent_norm_eps", py_literal(attn.latent_norm_eps)),
        ("scale", scale),
        ("rope_interleaved", py_literal(position.pairing == "interleaved")),
    ]


def _moe_call(spec: Spec) -> str:
    """`MoE(Router(...), Experts(...), ...)` as `archspec.compiler._moe` builds it, laid out as ruff formats it."""
    moe = spec.moe
    assert moe is not None and moe.d_ff is not None and moe.shared_d_ff is not None
    router = moe.router
    activation = spec.mlp.activation
    router_args = [
        ("d_model", py_literal(spec.d_model)),
        ("experts", py_literal(moe.experts)),
        ("top_k", py_literal(moe.top_k)),
        ("scoring", py_literal(router.scoring)),
        ("renormalize", py_literal(router.renormalize)),
        ("scale", py_literal(router.scale)),
        ("groups", py_literal(router.groups)),
        ("top_groups", py_literal(router.top_groups or router.groups)),
        ("group_score", py_literal(router.group_score)),
        ("correction_bias", py_literal(router.correction_bias)),
    ]
    expert_args = [
        ("experts", py_literal(moe.experts)),
        ("d_model", py_literal(spec.d_model)),
        ("d_ff", py_literal(moe.d_ff)),
        ("activation", _activation(GATED_ACTIVATIONS.get(activation, activation))),
        ("gated", py_literal(activation in GATED_ACTIVATIONS)),
    ]
    args: list[tuple[str | None, str]] = [
        (None, _call("Router", router_args, 2)),
        (None, _call("Experts", expert_args, 2)),
    ]
    if moe.shared_experts:
        args.append(("shared", _call("MLP", _mlp_args(spec, moe.shared_experts * moe.shared_d_ff, False), 2)))
    if moe.shared_gate:
        args.append(("shared_gate", f"nn.Linear({py_literal(spec.d_model)}, 1, bias=False)"))
    args.append(("jitter", py_literal(router.jitter)))
    return _call("MoE", args, 1)  # the body of make_moe()


def _call(function: str, args: list[tuple[str | None, str]], indent: int) -> str:
    """`function(` one argument per line with a trailing comma `)`, the closing bracket at `indent` levels."""
    pad = "    " * indent
    lines = [f"{function}("]
    lines += [f"{pad}    {key + '=' if key else ''}{value}," for key, value in args]
    return "\n".join([*lines, f"{pad})"])


def _ranges(layers: list[int]) -> str:
    """`[0, 1, 2, 5]` -> `"layers 0-2, 5"` (for docstrings)."""
    parts: list[str] = []
    for index in layers:
        if parts and parts[-1].split("-")[-1] == str(index - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(parts)


def _norm(spec: Spec, dim: int) -> str:
    if spec.norm.kind == "rmsnorm":
        return f"RMSNorm({py_literal(dim)}, {py_literal(spec.norm.eps)})"
    return f"nn.LayerNorm({py_literal(dim)}, eps={py_literal(spec.norm.eps)}, bias={py_literal(bool(spec.norm.bias))})"


def _rotary(spec: Spec) -> dict[str, Any]:
    position = spec.position
    assert isinstance(position, RopeSpec)
    scaling = position.scaling
    if position.block_positions:  # GLM 2-D: two RoPEs of half the width (no scaling, checked by the rules)
        args = [("rotary_dim", py_literal(spec.rotary_dim // 2)), ("theta", py_literal(position.theta))]
        return {"block": True, "function": "rope_frequencies", "args": args, "factor_args": None}
    args = [("rotary_dim", py_literal(spec.rotary_dim)), ("theta", py_literal(position.theta))]
    factor_args = None
    if isinstance(scaling, LinearScaling):
        function = "linear_scaled_frequencies"
        args.append(("factor", py_literal(scaling.factor)))
    elif isinstance(scaling, Llama3Scaling):
        function = "llama3_scaled_frequencies"
        args += [
            ("factor", py_literal(scaling.factor)),
            ("low_freq_factor", py_literal(scaling.low_freq_factor)),
            ("high_freq_factor", py_literal(scaling.high_freq_factor)),
            ("original_context", py_literal(scaling.original_context)),
        ]
    elif isinstance(scaling, YarnScaling):
        function = "yarn_scaled_frequencies"
        args += [
            ("factor", py_literal(scaling.factor)),
            ("original_context", py_literal(scaling.original_context)),
            ("beta_fast", py_literal(scaling.beta_fast)),
            ("beta_slow", py_literal(scaling.beta_slow)),
            ("truncate", py_literal(scaling.truncate)),
        ]
        factor_args = [
            ("factor", py_literal(scaling.factor)),
            ("mscale", py_literal(scaling.mscale)),
            ("mscale_all_dim", py_literal(scaling.mscale_all_dim)),
            ("explicit", py_literal(scaling.attention_factor)),
        ]
    elif scaling is None or isinstance(scaling, DynamicScaling):
        function = "rope_frequencies"
    else:
        raise NotImplementedError(f"emitting rope scaling {scaling.kind!r} is not supported yet")
    dynamic = (position.theta, scaling.factor, spec.context_length) if isinstance(scaling, DynamicScaling) else None
    return {
        "block": False,
        "function": function,
        "args": args,
        "factor_args": factor_args,
        "interleaved": py_literal(position.pairing == "interleaved"),
        "dynamic_ntk": py_literal(dynamic),
    }


@cache
def _decoder_parameters() -> frozenset[str]:
    from archspec.nn.models import DecoderLM

    return frozenset(inspect.signature(DecoderLM.__init__).parameters)


@cache
def _activation_sources(table: str = "ACTIVATIONS") -> dict[str, str]:
    """Source of each entry of a dict of activations in `archspec.nn` (`"gelu-tanh"` -> `partial(F.gelu, ...)`).

    An unpacked table (`{**ACTIVATIONS, "quick-gelu": quick_gelu}`) contributes its own entries."""
    definition = library().definitions[table]
    text = "\n".join(definition.lines)
    (node,) = ast.parse(text).body
    assert isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict)
    sources = {}
    for key, value in zip(node.value.keys, node.value.values, strict=True):
        if key is None:  # **OTHER
            assert isinstance(value, ast.Name)
            sources.update(_activation_sources(value.id))
            continue
        assert isinstance(key, ast.Constant) and isinstance(key.value, str)
        segment = ast.get_source_segment(text, value)
        assert segment is not None
        sources[key.value] = segment
    return sources


def _activation(name: str) -> str:
    try:
        return _activation_sources()[name]
    except KeyError:
        raise NotImplementedError(f"activation {name!r} is not in archspec.nn.activations.ACTIVATIONS") from None


def _vision_activation(name: str) -> str:
    try:
        return _activation_sources("VISION_ACTIVATIONS")[name]
    except KeyError:
        raise NotImplementedError(f"activation {name!r} is not in archspec.nn.vision.VISION_ACTIVATIONS") from None


# ------------------------------------------------------------------------------------------ header
def _moe_text(spec: Spec) -> str:
    moe = spec.moe
    assert moe is not None
    router = moe.router
    text = f"{moe.experts} experts top-{moe.top_k}, d_ff {moe.d_ff}"
    if moe.shared_experts:
        text += f", {moe.shared_experts} shared (d_ff {moe.shared_d_ff}" + (", gated)" if moe.shared_gate else ")")
    text += f", {router.scoring}"
    if router.groups > 1:
        text += f", best {router.top_groups} of {router.groups} groups ({router.group_score})"
    if router.correction_bias:
        text += ", correction bias"
    text += ", renormalised" if router.renormalize else ""
    if router.scale != 1:
        text += f", scale {router.scale!r}"
    dense = [index for index in range(spec.n_layers) if not spec.is_moe_layer(index)]
    if dense:
        text += f", dense {_ranges(dense)}"
    return text


def _vision_text(spec: Spec) -> str:
    vision = spec.vision
    assert vision is not None
    tower = vision.tower
    if isinstance(tower, ViTSpec):
        text = f"vit {tower.image_size}px / {tower.patch_size}, width {tower.width}, {tower.depth} blocks, "
        text += f"{tower.heads} heads, {tower.activation}, layer " + "/".join(map(str, vision.feature_layers))
        text += f", {vision.feature_select}"
    else:
        text = f"external ({tower.patches} x {tower.width})"
    projector = vision.projector
    text += f", {projector.kind} projector" + (
        f" ({projector.depth}, {projector.activation})" if projector.depth != 1 else ""
    )
    if vision.pooling is not None:
        text += f", pooled to {vision.pooling.tokens}"
    return text + f", {vision.tokens_per_image} tokens per image (id {vision.image_token})"


def _header(spec: Spec) -> str:
    """The spec's row of the architecture table, as markdown. Made only of validated names, kinds and numbers."""
    attn, position, block = spec.attention, spec.position, spec.block
    if isinstance(attn, LatentAttentionSpec):
        attention = f"MLA, {attn.heads} heads, q rank {attn.q_rank}, kv rank {attn.kv_rank}"
        attention += f", qk {attn.nope_dim}+{attn.rope_dim} (rope), v {attn.v_dim}" + (", bias" if attn.bias else "")
    else:
        kind = "MHA" if spec.kv_heads == attn.heads else "MQA" if spec.kv_heads == 1 else "GQA"
        attention = f"{kind}, {attn.heads} heads / {spec.kv_heads} kv, head_dim {spec.head_dim}"
        if attn.window is not None:
            attention += f", window {attn.window}" + (" (some layers)" if attn.window_layers is not None else "")
        if attn.qk_norm:
            attention += ", qk-norm"
        biased = [name for name in "qkvo" if getattr(attn.bias, name)]
        if biased:
            attention += ", bias " + "/".join(biased)
    if attn.scale is not None:
        attention += f", scale {attn.scale!r}"
    if isinstance(position, RopeSpec):
        pos = f"rope, theta {position.theta!r}"
        if position.fraction != 1:
            pos += f", {spec.rotary_dim} of {spec.head_dim} dims"
        if position.pairing == "interleaved":
            pos += ", interleaved"
        if position.scaling is not None:
            pos += f", {position.scaling.kind} x{position.scaling.factor!r}"
        if position.block_positions:
            pos += ", 2-D (position, block position)"
    elif isinstance(position, RelativeBiasSpec):
        pos = f"relative-bias, {position.buckets} buckets, max distance {position.max_distance}"
    else:
        pos = position.kind
    norm = f"{spec.norm.kind}, eps {spec.norm.eps!r}"
    if spec.norm.kind == "layernorm" and not spec.norm.bias:
        norm += ", no bias"
    block_text = block.kind
    if block.kind == "parallel":
        block_text += f", {block.parallel_norms} norm" + ("s" if block.parallel_norms == 2 else "")
    if block.residual_from_norm:
        block_text += ", residual from norm"
    if block.kind == "deepnorm":
        block_text += f", alpha {block.alpha!r}"
    mlp = f"{spec.mlp.activation}, d_ff {spec.mlp.d_ff}" + (", bias" if spec.mlp.bias else "")
    embeddings = ("tied" if spec.embeddings.tied else "untied") + (", norm" if spec.embeddings.norm else "")
    if spec.embeddings.scale_head:
        embeddings += ", head input scaled by 1/sqrt(d_model)"
    layers = str(spec.n_layers)
    if spec.n_decoder_layers is not None:
        layers = f"{spec.n_layers} encoder + {spec.n_decoder_layers} decoder"
    columns = ["name", "layers", "d_model", "attention", "position", "norm", "block", "mlp", "embeddings"]
    row = [spec.name, layers, str(spec.d_model), attention, pos, norm, block_text, mlp, embeddings]
    if spec.structure != "decoder":
        columns.insert(1, "structure")
        row.insert(1, "glm (prefix LM)" if spec.structure == "glm" else spec.structure)
    if spec.moe is not None:
        columns.append("moe")
        row.append(_moe_text(spec))
    if spec.vision is not None:
        columns.append("vision")
        row.append(_vision_text(spec))
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n| " + " | ".join(row) + " |"
    if re.fullmatch(r"[A-Za-z0-9 .,_/|+\-\n()]*", header) is None:  # defence in depth: nothing here can escape
        raise ValueError(f"unexpected characters in the generated header: {header!r}")
    return header
