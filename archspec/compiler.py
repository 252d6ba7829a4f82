"""Spec -> Plan: the one place that reads a spec and chooses components. Components only see numbers.

`plan(spec)` writes down every decision as a tree of component calls (`archspec.plan`): which attention, which
norm, which residual layout, which router, the numbers each gets, and the facts the emitter specialises the copied
components on. `archspec.build` instantiates that tree, `archspec.emit_source` prints it, `archspec.analysis`
counts over it and `archspec.distributed` reads the modules built from it; none of them looks at the spec again.
Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import assert_never

from archspec.plan import Call, Fn, Layers, Plan, Value, call
from archspec.spec.schema import (
    GATED_ACTIVATIONS,
    AlibiSpec,
    AttentionSpec,
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

__all__ = ["plan"]


def plan(spec: Spec) -> Plan:
    """The plan of `spec`'s model: what `archspec.build` instantiates and `archspec.emit_source` prints."""
    return _Compiler(spec).plan()


class _Compiler:
    """One spec's decisions; `features` collects the facts the emitter needs as they are decided."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.features: set[str] = set()
        self.varying: set[str] = set()

    def plan(self) -> Plan:
        spec = self.spec
        model = self.encoder_decoder() if spec.structure == "encoder-decoder" else self.decoder()
        beta = None
        if spec.block.kind == "deepnorm":
            self.features.add("deepnorm")
            beta = spec.block.beta or 1.0
        return Plan(spec.name, model, frozenset(self.features), frozenset(self.varying), deepnorm_beta=beta)

    # ------------------------------------------------------------------------------------------- numbers
    def linear(self, d_in: int, d_out: int, bias: bool) -> Call:
        if bias:
            self.features.add("linear_bias")
        return call("nn.Linear", d_in, d_out, bias=bias)

    def embedding(self, rows: int, dim: int) -> Call:
        return call("nn.Embedding", rows, dim)

    def norm(self, dim: int) -> Call:
        norm = self.spec.norm
        match norm.kind:
            case "rmsnorm":
                return call("OffsetRMSNorm" if norm.offset else "RMSNorm", dim, eps=norm.eps)
            case "layernorm":
                return call("nn.LayerNorm", dim, eps=norm.eps, bias=bool(norm.bias))
            case _:
                assert_never(norm.kind)

    def activation(self, name: str, table: str = "ACTIVATIONS") -> Fn:
        """The function of an activation name (a gated MLP's: the one applied to its gate)."""
        return Fn(table, GATED_ACTIVATIONS.get(name, name))

    # ------------------------------------------------------------------------------------------- decoder
    def decoder(self) -> Call:
        spec = self.spec
        d, position = spec.d_model, spec.position
        args: dict[str, Value] = {
            "embed": self.embedding(spec.vocab_size, d),
            "layers": self.layers(),
            "final_norm": call("nn.Identity") if spec.block.kind in ("post-norm", "deepnorm") else self.norm(d),
            "lm_head": self.linear(d, spec.vocab_size, False),
            "attention": self.attention_paths(),
        }
        if spec.layers is not None:
            args |= self.layer_positions()
        elif isinstance(position, RopeSpec):
            args["rotary"] = self.rotary()
        elif isinstance(position, LearnedPositionSpec):
            self.features.add("learned_positions")
            args["pos_embed"] = self.embedding(spec.context_length, d)
        else:
            assert isinstance(position, AlibiSpec | NoPositionSpec)  # the rules keep relative-bias to T5
        if spec.embeddings.norm:
            self.features.add("embed_norm")
            args["embed_norm"] = self.norm(d)
        if any(spec.is_moe_layer(index) for index in range(spec.n_layers)):  # an moe section may route no layer
            args["router_loss"] = self.router_loss()
        if spec.embeddings.tied:
            self.features.add("tied")
            args["tied"] = True
        if spec.structure == "glm":
            self.features.add("prefix_lm")
            args["prefix_lm"] = True
        args |= self.scalars()
        args |= self.tokens()
        if spec.vision is None:
            return Call("DecoderLM", tuple(args.items()))
        return Call("VisionLanguageLM", tuple((args | self.vision()).items()))

    def layer_positions(self) -> dict[str, Value]:
        """Positions where layer kinds may set their own: one rotary when every layer has the same, else one per
        distinct RoPE and each layer's (None: NoPE)."""
        spec = self.spec
        positions = [spec.position_for_layer(index) for index in range(spec.n_layers)]
        ropes: list[RopeSpec] = []
        for position in positions:
            if isinstance(position, RopeSpec) and position not in ropes:
                ropes.append(position)
        if not ropes:
            return {}
        if len(ropes) == 1 and all(isinstance(position, RopeSpec) for position in positions):
            return {"rotary": self.rotary(ropes[0])}
        self.features.add("layer_positions")
        of_layer = tuple(ropes.index(p) if isinstance(p, RopeSpec) else None for p in positions)
        rotaries = tuple(self.rotary(rope) for rope in ropes)
        return {"layer_rotary": call("LayerRotary", rotaries=rotaries, of_layer=of_layer)}

    def scalars(self) -> dict[str, Value]:
        """The embedding and logit multipliers and the logit soft-cap (Gemma, Granite, Cohere)."""
        embeddings, args = self.spec.embeddings, {}
        if embeddings.scale is not None:
            self.features.add("embed_scale")
            if embeddings.scale == "sqrt-d-model":
                self.features.add("embed_scale_in_dtype")
                args |= {"embed_scale": self.spec.d_model**0.5, "embed_scale_in_dtype": True}
            else:
                args["embed_scale"] = embeddings.scale
        if embeddings.logit_scale != 1.0:
            self.features.add("logit_scale")
            args["logit_scale"] = embeddings.logit_scale
        if embeddings.logit_softcap is not None:
            self.features.add("logit_softcap")
            args["logit_softcap"] = embeddings.logit_softcap
        return args

    def tokens(self) -> dict[str, Value]:
        eos = self.spec.tokens.eos
        return {
            "eos_token_id": tuple(eos) if isinstance(eos, list) else eos,
            "pad_token_id": self.spec.tokens.pad,
        }

    def layers(self) -> Layers:
        """One call per distinct block; layers whose blocks are equal share a kind (a window is not part of the
        block: layers with and without one are one kind)."""
        spec = self.spec
        blocks = [self.block(index) for index in range(spec.n_layers)]
        return _stack(blocks, [("moe" if spec.is_moe_layer(i) else "dense") for i in range(spec.n_layers)])

    def block(self, index: int) -> Call:
        spec = self.spec
        attn = self.latent_attention() if isinstance(spec.attention, LatentAttentionSpec) else self.attention()
        mlp = self.moe() if spec.is_moe_layer(index) else self.mlp(spec.mlp.d_ff, spec.mlp.bias)
        block = spec.block
        match block.kind:
            case "pre-norm":
                extra: dict[str, Value] = {}
                if block.residual_from_norm:
                    self.features.add("residual_from_norm")
                    extra["residual_from_norm"] = True
                if block.residual_scale != 1.0:
                    self.features.add("residual_scale")
                    extra["residual_scale"] = block.residual_scale
                return call("PreNormBlock", attn_norm=self.norm(spec.d_model), attn=attn,
                            mlp_norm=self.norm(spec.d_model), mlp=mlp, **extra)  # fmt: skip
            case "sandwich":
                d = spec.d_model
                return call("SandwichBlock", attn_norm=self.norm(d), attn=attn, attn_out_norm=self.norm(d),
                            mlp_norm=self.norm(d), mlp=mlp, mlp_out_norm=self.norm(d))  # fmt: skip
            case "output-norm":  # the sandwich without its input norms (OLMo 2)
                d = spec.d_model
                return call("SandwichBlock", attn_norm=call("nn.Identity"), attn=attn, attn_out_norm=self.norm(d),
                            mlp_norm=call("nn.Identity"), mlp=mlp, mlp_out_norm=self.norm(d))  # fmt: skip
            case "post-norm":
                return call("PostNormBlock", attn=attn, attn_norm=self.norm(spec.d_model), mlp=mlp,
                            mlp_norm=self.norm(spec.d_model))  # fmt: skip
            case "deepnorm":
                return call("DeepNormBlock", attn=attn, attn_norm=self.norm(spec.d_model), mlp=mlp,
                            mlp_norm=self.norm(spec.d_model), alpha=block.alpha or 1.0)  # fmt: skip
            case "parallel":
                if block.parallel_norms == 2:
                    self.features.add("two_parallel_norms")
                    return call("ParallelBlock", attn_norm=self.norm(spec.d_model), attn=attn, mlp=mlp,
                                mlp_norm=self.norm(spec.d_model))  # fmt: skip
                return call("ParallelBlock", attn_norm=self.norm(spec.d_model), attn=attn, mlp=mlp)
            case _:
                assert_never(block.kind)

    def attention(self, *, cross: bool = False) -> Call:
        spec = self.spec
        attn = spec.attention
        assert isinstance(attn, AttentionSpec)
        d, heads, kv_heads, head_dim = spec.d_model, attn.heads, spec.kv_heads, spec.head_dim
        args: dict[str, Value] = {
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "q": self.linear(d, heads * head_dim, attn.bias.q),
            "k": self.linear(d, kv_heads * head_dim, attn.bias.k),
            "v": self.linear(d, kv_heads * head_dim, attn.bias.v),
            "o": self.linear(heads * head_dim, d, attn.bias.o),
        }
        if attn.qk_norm is not None and not cross:  # cross-attention has none
            args |= self.qk_norms(heads, kv_heads, head_dim)
        if attn.scale is not None:
            args["scale"] = attn.scale
        if attn.sinks and not cross:
            self.features.add("sinks")
            args["sinks"] = True
        return Call("CrossAttention" if cross else "Attention", tuple(args.items()))

    def qk_norms(self, heads: int, kv_heads: int, head_dim: int) -> dict[str, Value]:
        """The norms of q and k, of the spec's norm kind: per head (one weight, or each head's own), or over the
        whole projection; before RoPE or after it."""
        qk_norm = self.spec.attention.qk_norm  # type: ignore[union-attr]
        assert qk_norm is not None
        self.features.add("qk_norm")
        if qk_norm.over == "projection":
            norms = {"q_norm": self.norm(heads * head_dim), "k_norm": self.norm(kv_heads * head_dim)}
        elif qk_norm.per_head_weights:
            norms = {"q_norm": self.head_norm(heads, head_dim), "k_norm": self.head_norm(kv_heads, head_dim)}
        else:
            norms = {"q_norm": self.norm(head_dim), "k_norm": self.norm(head_dim)}
        placement = "projection" if qk_norm.over == "projection" else "rotated" if qk_norm.after_rope else "head"
        self.features.add(f"qk_norm_{placement}")
        if placement != "head":
            self.features.add("qk_norm_placement")
            norms["qk_norm_at"] = placement
        return norms

    def head_norm(self, heads: int, head_dim: int) -> Call:
        """A weightless norm of each head with each head's own weight (Cohere)."""
        norm = self.spec.norm
        if norm.kind == "layernorm":
            plain = call("nn.LayerNorm", head_dim, eps=norm.eps, elementwise_affine=False)
        else:
            plain = call("nn.RMSNorm", head_dim, eps=norm.eps, elementwise_affine=False)
        return call("HeadNorm", plain, heads, head_dim)

    def latent_attention(self) -> Call:
        spec = self.spec
        attn, position = spec.attention, spec.position
        assert isinstance(attn, LatentAttentionSpec) and isinstance(position, RopeSpec)
        d, heads, qk = spec.d_model, attn.heads, attn.nope_dim + attn.rope_dim
        args: dict[str, Value] = {
            "heads": heads,
            "kv_rank": attn.kv_rank,
            "nope_dim": attn.nope_dim,
            "rope_dim": attn.rope_dim,
            "v_dim": attn.v_dim,
        }
        if attn.q_rank is None:
            args["q"] = self.linear(d, heads * qk, False)
        else:
            args["q_down"] = self.linear(d, attn.q_rank, attn.bias)
            args["q_latent_norm"] = call("RMSNorm", attn.q_rank, eps=attn.latent_norm_eps)
            args["q_up"] = self.linear(attn.q_rank, heads * qk, False)
        args["kv_down"] = self.linear(d, attn.kv_rank + attn.rope_dim, attn.bias)
        args["kv_latent_norm"] = call("RMSNorm", attn.kv_rank, eps=attn.latent_norm_eps)
        args["kv_up"] = self.linear(attn.kv_rank, heads * (attn.nope_dim + attn.v_dim), False)
        args["o"] = self.linear(heads * attn.v_dim, d, attn.bias)
        if attn.scale is not None:
            args["scale"] = attn.scale
        elif isinstance(position.scaling, YarnScaling) and position.scaling.mscale_all_dim:
            # DeepSeek: the YaRN temperature correction enters the softmax scale squared
            scaling = position.scaling
            args["scale"] = call("latent_attention_scale", qk, scaling.factor, scaling.mscale_all_dim)
        return Call("LatentAttention", tuple(args.items()))

    def attention_paths(self) -> Call:
        spec = self.spec
        windows = tuple(spec.window_for_layer(index) for index in range(spec.n_layers))
        args: dict[str, Value] = {}
        if any(window is not None for window in windows):
            self.features |= {"window", "distance_bias"}
            args["windows"] = windows
        else:
            args["layers"] = spec.n_layers
        if isinstance(spec.position, AlibiSpec):
            args["alibi"] = self.alibi(spec.position)
        if isinstance(spec.attention, AttentionSpec) and spec.attention.softcap is not None:
            self.features.add("softcap")
            args["softcap"] = spec.attention.softcap
        if isinstance(spec.attention, AttentionSpec) and spec.attention.sinks:
            args["sinks"] = True
        if isinstance(spec.attention, AttentionSpec) and spec.attention.inverse_layer_scale:
            self.features.add("inverse_layer_scale")
            return Call("LayerScaledPaths", tuple(args.items()))
        return Call("AttentionPaths", tuple(args.items()))

    def alibi(self, position: AlibiSpec) -> Call:
        self.features |= {"alibi", "distance_bias"}
        args: dict[str, Value] = {"slopes": call("alibi_slopes", self.spec.attention.heads)}
        if position.scaled:
            args["divisor"] = math.sqrt(self.spec.head_dim)
        if position.precision == "bfloat16":
            self.features.add("alibi_bfloat16")
            args["bfloat16"] = True
        return Call("Alibi", tuple(args.items()))

    def rotary(self, position: RopeSpec | None = None) -> Call:
        """The RotaryEmbedding of `position` (default: the spec's)."""
        spec = self.spec
        position = position or spec.position
        assert isinstance(position, RopeSpec)
        self.features.add("rope")
        dim = spec.rotary_dim if position is spec.position else int(spec.head_dim * position.fraction)
        if dim < spec.head_dim:
            self.features.add("partial_rotary")
        theta, scaling = position.theta, position.scaling
        if position.block_positions:  # GLM 2-D: two RoPEs of half the width (no scaling, checked by the rules)
            self.features.add("block_positions")
            return call("BlockRotaryEmbedding", inv_freq=call("rope_frequencies", dim // 2, theta))
        args: dict[str, Value] = {}
        if isinstance(scaling, LinearScaling):
            args["inv_freq"] = call("linear_scaled_frequencies", dim, theta, scaling.factor)
        elif isinstance(scaling, Llama3Scaling):
            args["inv_freq"] = call(
                "llama3_scaled_frequencies",
                dim,
                theta,
                scaling.factor,
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_context=scaling.original_context,
            )
        elif isinstance(scaling, YarnScaling):
            args["inv_freq"] = call(
                "yarn_scaled_frequencies",
                dim,
                theta,
                scaling.factor,
                original_context=scaling.original_context,
                beta_fast=scaling.beta_fast,
                beta_slow=scaling.beta_slow,
                truncate=scaling.truncate,
            )
        elif scaling is not None and scaling.kind == "longrope":  # short factors; the long ones below
            args["inv_freq"] = call("longrope_frequencies", dim, theta, tuple(scaling.short_factor))
        else:
            assert scaling is None or isinstance(scaling, DynamicScaling)
            args["inv_freq"] = call("rope_frequencies", dim, theta)
        interleaved = position.pairing == "interleaved"
        if interleaved:
            self.features.add("rope_interleaved")
        args["pairing"] = call("InterleavedPairs" if interleaved else "HalfPairs")
        if isinstance(scaling, YarnScaling):
            self.features.add("rope_attention_factor")
            args["attention_factor"] = call(
                "yarn_attention_factor",
                scaling.factor,
                mscale=scaling.mscale,
                mscale_all_dim=scaling.mscale_all_dim,
                explicit=scaling.attention_factor,
            )
        if isinstance(scaling, DynamicScaling):
            self.features.add("dynamic_ntk")
            args["dynamic_ntk"] = (theta, scaling.factor, spec.context_length)
        if scaling is not None and scaling.kind == "longrope":
            self.features |= {"rope_attention_factor", "longrope"}
            args["attention_factor"] = call(
                "longrope_attention_factor",
                spec.context_length,
                scaling.original_context,
                explicit=scaling.attention_factor,
            )
            args["long_inv_freq"] = call("longrope_frequencies", dim, theta, tuple(scaling.long_factor))
            args["original_context"] = scaling.original_context
        return Call("RotaryEmbedding", tuple(args.items()))

    # ----------------------------------------------------------------------------------------- MLP, MoE
    def mlp(self, d_ff: int, bias: bool, d_model: int | None = None, activation: Fn | None = None) -> Call:
        """The spec's MLP of width `d_ff` (gated or plain by its activation); `activation` given: a plain MLP."""
        d = d_model or self.spec.d_model
        name = self.spec.mlp.activation
        if activation is None and name in GATED_ACTIVATIONS:
            gate = self.linear(d, d_ff, bias)
            return call("GatedMLP", gate=gate, up=self.linear(d, d_ff, bias), down=self.linear(d_ff, d, bias),
                        activation=self.activation(name))  # fmt: skip
        up, down = self.linear(d, d_ff, bias), self.linear(d_ff, d, bias)
        return call("MLP", up=up, down=down, activation=activation or self.activation(name))

    def moe(self) -> Call:
        spec = self.spec
        moe = spec.moe
        assert moe is not None and moe.d_ff is not None and moe.shared_d_ff is not None
        self.features.add("moe")
        if any(not spec.is_moe_layer(index) for index in range(spec.n_layers)):
            self.features.add("dense_and_moe")
        router = moe.router
        router_args: dict[str, Value] = {
            "d_model": spec.d_model,
            "experts": moe.experts,
            "top_k": moe.top_k,
            "scoring": Fn("SCORINGS", router.scoring),
            "renormalize": router.renormalize,
            "scale": router.scale,
        }
        if router.groups > 1:
            self.features.add("group_limited")
            top_groups = router.top_groups or router.groups
            score = Fn("GROUP_SCORES", router.group_score)
            router_args["group_limit"] = call("GroupLimit", router.groups, top_groups, score=score)
        if router.correction_bias:
            self.features.add("correction_bias")
            router_args["correction_bias"] = call("torch.zeros", moe.experts)
        if router.bias:
            self.features.add("router_bias")
            router_args["bias"] = True
        gated = spec.mlp.activation in GATED_ACTIVATIONS
        if gated:
            self.features.add("gated_experts")
        expert_args: dict[str, Value] = {"activation": self.activation(spec.mlp.activation), "gated": gated}
        if spec.mlp.activation == "clamped-swiglu":
            self.features.add("expert_glu")
            expert_args["glu"] = call("ClampedSwiGLU", limit=spec.mlp.limit, alpha=spec.mlp.alpha)
        if moe.bias:
            self.features.add("expert_bias")
            expert_args["bias"] = True
        experts = call("Experts", moe.experts, spec.d_model, moe.d_ff, **expert_args)
        args: dict[str, Value] = {"router": Call("Router", tuple(router_args.items())), "experts": experts}
        if moe.shared_experts:
            self.features.add("shared_experts")
            args["shared"] = self.mlp(moe.shared_experts * moe.shared_d_ff, False)
        if moe.shared_gate:
            self.features.add("shared_gate")
            args["shared_gate"] = self.linear(spec.d_model, 1, False)
        if router.jitter > 0:
            self.features.add("router_jitter")
            args["jitter"] = router.jitter
        return Call("MoE", tuple(args.items()))

    def router_loss(self) -> Call:
        router = self.spec.moe.router  # type: ignore[union-attr]
        match router.aux_loss:
            case "token" if router.aux_loss_counts == "softmax-top-k":
                self.features.add("balance_softmax_top_k")
                balance = call("TokenBalancingLoss", softmax_top_k=True)
            case "token":
                balance = call("TokenBalancingLoss")
            case "sequence":
                self.features.add("sequence_aux_loss")
                balance = call("SequenceBalancingLoss", scoring=Fn("SCORINGS", router.scoring))
            case _:
                assert_never(router.aux_loss)
        return call("RouterLoss", balance=balance, aux_coef=router.aux_loss_coef, z_coef=router.z_loss_coef)

    # -------------------------------------------------------------------------------------------- vision
    def vision(self) -> dict[str, Value]:
        """The image side of a VisionLanguageLM: tower (None when external), projector, pooling, splice numbers."""
        spec = self.spec
        vision = spec.vision
        assert vision is not None and vision.tower is not None and vision.projector.depth is not None
        self.features.add("vision")
        tower = vision.tower
        tower_call = None
        if isinstance(tower, ViTSpec):
            self.features.add("vision_tower")
            tower_call = self.vision_tower()
        layers_read = len(vision.feature_layers) if isinstance(tower, ViTSpec) else 1
        width = tower.width * layers_read
        pooling = None
        if vision.pooling is not None:
            self.features.add("pooling")
            grid, side = round(vision.feature_tokens**0.5), round(vision.pooling.tokens**0.5)
            pooling = call("PatchPool", grid, side)
        projector = vision.projector
        dims = [width] + [spec.d_model] * projector.depth
        linears = tuple(self.linear(a, b, projector.bias) for a, b in zip(dims[:-1], dims[1:], strict=True))
        return {
            "vision_tower": tower_call,
            "projector": call(
                "Projector", layers=linears, activation=self.activation(projector.activation, "VISION_ACTIVATIONS")
            ),
            "pooling": pooling,
            "image_token": vision.image_token,
            "tokens_per_image": vision.tokens_per_image,
            "feature_shape": (vision.feature_tokens, width),
        }

    def vision_tower(self) -> Call:
        """A ViT/CLIP tower built from the library's own blocks: pre-norm, MHA with biases, plain MLP, LayerNorm."""
        vision = self.spec.vision
        assert vision is not None and isinstance(vision.tower, ViTSpec)
        tower = vision.tower
        width, grid, bias = tower.width, tower.image_size // tower.patch_size, tower.bias

        def norm() -> Call:
            return call("nn.LayerNorm", width, eps=tower.norm_eps)

        head_dim = width // tower.heads
        attn = call("Attention", heads=tower.heads, kv_heads=tower.heads, head_dim=head_dim,
                    q=self.linear(width, width, bias), k=self.linear(width, width, bias),
                    v=self.linear(width, width, bias), o=self.linear(width, width, bias))  # fmt: skip
        mlp = self.mlp(
            tower.d_ff, bias, d_model=width, activation=self.activation(tower.activation, "VISION_ACTIVATIONS")
        )
        block = call("PreNormBlock", attn_norm=norm(), attn=attn, mlp_norm=norm(), mlp=mlp)
        # where the decoder's pre-norm blocks and attention differ from the tower's plain ones
        self.varying |= self.features & {"residual_from_norm", "residual_scale", "qk_norm_head", "qk_norm_projection",
                                         "qk_norm_rotated", "sinks"}  # fmt: skip
        if self.varying & {"qk_norm_head", "qk_norm_projection", "qk_norm_rotated"}:
            self.features.add("qk_norm_placement")  # the kept `if`s read qk_norm_at: the file must keep it
        patches = call("nn.Conv2d", tower.channels, width, kernel_size=tower.patch_size, stride=tower.patch_size,
                       bias=tower.patch_bias)  # fmt: skip
        embed = call("PatchEmbedding", proj=patches, positions=self.embedding(grid * grid + int(tower.class_token), width),
                     class_token=tower.class_token)  # fmt: skip
        hidden_states = tower.depth + 1
        return call(
            "VisionTower",
            embed=embed,
            layers=Layers((("vision", block),), ("vision",) * tower.depth),
            pre_norm=norm() if tower.pre_norm else None,
            post_norm=norm() if tower.post_norm else None,
            feature_layers=tuple(layer % hidden_states for layer in vision.feature_layers),
            drop_class_token=tower.class_token and vision.feature_select == "patches",
        )

    # ---------------------------------------------------------------------------------- encoder-decoder
    def encoder_decoder(self) -> Call:
        """T5: a bidirectional encoder and a causal decoder with cross-attention, each with its own relative-bias
        table (computed once per stack), one shared embedding, and optionally the d_model^-0.5 head scale."""
        spec = self.spec
        position = spec.position
        assert isinstance(position, RelativeBiasSpec)  # checked by the spec rules
        assert spec.n_decoder_layers is not None and spec.tokens.decoder_start is not None
        self.features.add("encoder_decoder")
        d = spec.d_model

        def bias(bidirectional: bool) -> Call:
            table = self.embedding(position.buckets, spec.attention.heads)
            return call("RelativePositionBias", table=table, max_distance=position.max_distance,
                        bidirectional=bidirectional)  # fmt: skip

        def mlp() -> Call:
            return self.mlp(spec.mlp.d_ff, spec.mlp.bias)

        encoder_block = call("PreNormBlock", attn_norm=self.norm(d), attn=self.attention(), mlp_norm=self.norm(d),
                             mlp=mlp())  # fmt: skip
        decoder_block = call("CrossAttentionBlock", attn_norm=self.norm(d), attn=self.attention(),
                             cross_norm=self.norm(d), cross_attn=self.attention(cross=True), mlp_norm=self.norm(d),
                             mlp=mlp())  # fmt: skip
        args: dict[str, Value] = {
            "embed": self.embedding(spec.vocab_size, d),
            "encoder": call(
                "Stack",
                layers=Layers((("encoder", encoder_block),), ("encoder",) * spec.n_layers),
                position_bias=bias(True),
                final_norm=self.norm(d),
            ),
            "decoder": call(
                "Stack",
                layers=Layers((("decoder", decoder_block),), ("decoder",) * spec.n_decoder_layers),
                position_bias=bias(False),
                final_norm=self.norm(d),
            ),
            "lm_head": self.linear(d, spec.vocab_size, False),
            "decoder_start": spec.tokens.decoder_start,
        }
        if spec.embeddings.scale_head:
            self.features.add("head_scale")
            args["head_scale"] = d**-0.5
        if spec.embeddings.tied:
            self.features.add("tied")
            args["tied"] = True
        return Call("EncoderDecoderLM", tuple((args | self.tokens()).items()))


def _stack(blocks: list[Call], hints: list[str]) -> Layers:
    """Layers from one block call per layer: equal calls share a kind, named after what tells the kinds apart
    (`dense` / `moe`), or numbered when the hint does not."""
    distinct: list[Call] = []
    for block in blocks:
        if block not in distinct:
            distinct.append(block)
    if len(distinct) == 1:
        names = ["block"]
    else:
        first = [next(hint for b, hint in zip(blocks, hints, strict=True) if b == block) for block in distinct]
        names = first if len(set(first)) == len(first) else [f"block_{index}" for index in range(len(distinct))]
    kinds = tuple(zip(names, distinct, strict=True))
    pattern = tuple(names[distinct.index(block)] for block in blocks)
    return Layers(kinds, pattern)
