"""LLaVA (`model_type: llava`, transformers' LlavaForConditionalGeneration): a text model, a CLIP tower, a projector.

A LLaVA config nests a text config (read and written by that family's own code: Llama, Mistral or Qwen2) and a
CLIP vision config; its top level holds the projector and the splice: `vision_feature_layer` (int or list),
`vision_feature_select_strategy` ("default" drops CLIP's class token, "full" keeps it), `projector_hidden_act`,
`multimodal_projector_bias`, `image_token_index`. Matched against transformers 5.25.0
`models/llava/modeling_llava.py` and `models/clip/modeling_clip.py`: hidden_states[0] of the tower is its
pre-normed embeddings, hidden_states[k] block k's output, and post_layernorm never touches the features.

Checkpoint names: `save_pretrained` (5.x) and the llava-hf hub checkpoints both write `language_model.model.*`,
`language_model.lm_head`, `multi_modal_projector.linear_{1,2}` and the tower under `vision_tower.` (hub files have
the tower under `vision_tower.vision_model.`, accepted as an alias).
"""

from __future__ import annotations

from typing import Any

from archspec.interop.convert import config_of, differences, spec_of
from archspec.interop.errors import NoCounterpart, UnsupportedConfigError
from archspec.interop.families import llama
from archspec.interop.families.common import LLAMA_LAYER, PLAIN_FROM_HF, PLAIN_TO_HF, Getter, hf_name, needs, token_ids
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.errors import ArchspecError
from archspec.spec.schema import Spec, ViTSpec

TEXT_FAMILY = llama.FAMILY
TEXT_MODEL_TYPES = ("llama", "mistral", "qwen2")  # of TEXT_FAMILY's: those transformers' LLaVA checkpoints use

# transformers' CLIPVisionConfig class defaults, for keys a vision_config leaves out ...
CLIP_VISION_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
    image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
# ... and LlavaConfig's vision tower when the config has no vision_config at all (CLIP ViT-L/14-336).
LLAVA_VISION_DEFAULTS: dict[str, Any] = dict(
    CLIP_VISION_DEFAULTS, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14,
)  # fmt: skip
LLAVA_DEFAULTS: dict[str, Any] = dict(
    image_token_index=32000, projector_hidden_act="gelu", vision_feature_select_strategy="default",
    vision_feature_layer=-2, multimodal_projector_bias=True, tie_word_embeddings=False,
)  # fmt: skip
_VISION_FROM_HF = {**PLAIN_FROM_HF, "quick_gelu": "quick-gelu"}
_VISION_TO_HF = {**PLAIN_TO_HF, "quick-gelu": "quick_gelu"}


# ============================================================================================ config -> spec
def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    """The spec (as data) of a LLaVA config: the text model's, plus a `vision` section."""
    text = dict(get.config.get("text_config") or {})
    text_type = text.get("model_type", "llama")
    if text_type not in TEXT_MODEL_TYPES:
        raise UnsupportedConfigError(
            f"llava with text model_type {text_type!r} (supported: {', '.join(TEXT_MODEL_TYPES)})"
        )
    text_get = Getter(text, TEXT_FAMILY.defaults[text_type])
    data = TEXT_FAMILY.to_spec(text_get, text_type)

    vision_config = get.config.get("vision_config")
    vision = Getter(dict(vision_config or {}), CLIP_VISION_DEFAULTS if vision_config else LLAVA_VISION_DEFAULTS)
    if vision("model_type", "clip_vision_model") != "clip_vision_model":
        raise UnsupportedConfigError(
            f"llava with vision model_type {vision('model_type')!r} (supported: clip_vision_model)"
        )
    strategy = get("vision_feature_select_strategy")
    if strategy not in ("default", "full"):
        raise UnsupportedConfigError(f"vision_feature_select_strategy {strategy!r} (supported: default, full)")
    data["vision"] = {
        "tower": {
            "kind": "vit",
            "image_size": vision("image_size"),
            "patch_size": vision("patch_size"),
            "channels": vision("num_channels"),
            "width": vision("hidden_size"),
            "depth": vision("num_hidden_layers"),
            "heads": vision("num_attention_heads"),
            "d_ff": vision("intermediate_size"),
            "activation": _activation(vision("hidden_act")),
            "norm_eps": vision("layer_norm_eps"),
        },
        "feature_layer": get("vision_feature_layer"),
        "feature_select": "patches" if strategy == "default" else "all",
        "projector": {
            "kind": "mlp",
            "depth": 2,
            "activation": _activation(get("projector_hidden_act")),
            "bias": bool(get("multimodal_projector_bias")),
        },
        "image_token": get("image_token_index"),
    }
    # LlavaConfig ties the head if either its own or the text config's tie_word_embeddings is set
    data["embeddings"]["tied"] = bool(get("tie_word_embeddings") or text_get("tie_word_embeddings"))
    pad = get.config.get("pad_token_id", text_get("pad_token_id"))
    data["tokens"] = token_ids(text_get("bos_token_id"), text_get("eos_token_id"), pad)
    return data


def _activation(name: str) -> str:
    if name not in _VISION_FROM_HF:
        raise UnsupportedConfigError(f"activation {name!r} is not supported in a vision tower or projector")
    return _VISION_FROM_HF[name]


# ============================================================================================ spec -> config
def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    """The text config of the first text model type that reads back as the text part, a CLIP vision config and
    the projector / splice keys."""
    vision = spec.vision
    needs(vision is not None, "vision")
    assert vision is not None
    needs(isinstance(vision.tower, ViTSpec), "vision.tower.kind")
    needs(vision.pooling is None, "vision.pooling")
    needs(vision.projector.kind == "mlp" and vision.projector.depth == 2, "vision.projector")
    tower = vision.tower
    assert isinstance(tower, ViTSpec)
    text_config = _text_config(spec.model_copy(update={"vision": None}), spec.name)
    text_config.pop("architectures", None)
    return {
        "text_config": text_config,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": tower.width,
            "intermediate_size": tower.d_ff,
            "num_hidden_layers": tower.depth,
            "num_attention_heads": tower.heads,
            "num_channels": tower.channels,
            "image_size": tower.image_size,
            "patch_size": tower.patch_size,
            "hidden_act": hf_name(_VISION_TO_HF, tower.activation, "vision.tower.activation"),
            "layer_norm_eps": tower.norm_eps,
        },
        "image_token_index": vision.image_token,
        "image_seq_length": vision.tokens_per_image,
        "projector_hidden_act": hf_name(_VISION_TO_HF, vision.projector.activation, "vision.projector.activation"),
        "multimodal_projector_bias": vision.projector.bias,
        "vision_feature_layer": vision.feature_layer,
        "vision_feature_select_strategy": "default" if vision.feature_select == "patches" else "full",
        "tie_word_embeddings": spec.embeddings.tied,
    }


def _text_config(text_spec: Spec, name: str) -> dict[str, Any]:
    """The first text model type's config that reads back as `text_spec`; else the first's, so that the read-back
    of the whole LLaVA config names what the text model lacks."""
    for text_type in TEXT_MODEL_TYPES:
        try:
            candidate = config_of(TEXT_FAMILY, text_type, text_spec)
            if not differences(text_spec, spec_of(TEXT_FAMILY, candidate, candidate, name=name)):
                return candidate
        except (NoCounterpart, ArchspecError, AttributeError, KeyError, TypeError, ValueError):
            continue
    return config_of(TEXT_FAMILY, TEXT_MODEL_TYPES[0], text_spec)


def key_map(spec: Spec, model_type: str) -> KeyMap:
    """archspec module -> LLaVA checkpoint module, for the text model, the tower and the projector."""
    vision = spec.vision
    assert vision is not None
    top = {
        "embed": "language_model.model.embed_tokens",
        "final_norm": "language_model.model.norm",
        "lm_head": "language_model.lm_head",
    }
    projector_depth = vision.projector.depth or 1
    names = ["linear_1", "linear_2"] if projector_depth == 2 else [f"linear_{k + 1}" for k in range(projector_depth)]
    for index, name in enumerate(names):
        top[f"projector.layers.{index}"] = f"multi_modal_projector.{name}"
    tower = vision.tower
    if isinstance(tower, ViTSpec):
        ours, theirs = "vision_tower.", "vision_tower."
        top |= {
            ours + "embed": theirs + "embeddings",  # its class_embedding parameter
            ours + "embed.proj": theirs + "embeddings.patch_embedding",
            ours + "embed.positions": theirs + "embeddings.position_embedding",
            ours + "pre_norm": theirs + "pre_layrnorm",
            ours + "post_norm": theirs + "post_layernorm",
        }
        block = {
            "attn_norm": "layer_norm1",
            "mlp_norm": "layer_norm2",
            "attn.q": "self_attn.q_proj",
            "attn.k": "self_attn.k_proj",
            "attn.v": "self_attn.v_proj",
            "attn.o": "self_attn.out_proj",
            "mlp.up": "mlp.fc1",
            "mlp.down": "mlp.fc2",
        }
        for i in range(tower.depth):
            for mine, hf in block.items():
                top[f"{ours}layers.{i}.{mine}"] = f"{theirs}encoder.layers.{i}.{hf}"
    return KeyMap(
        top,
        "language_model.model.layers.{i}.",
        LLAMA_LAYER,
        aliases={"vision_tower.": "vision_tower.vision_model."},
    )


FAMILY = Family(
    name="llava",
    model_types=("llava",),
    architectures={"llava": "LlavaForConditionalGeneration"},
    defaults={"llava": LLAVA_DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="vision",
    auto_class="AutoModelForImageTextToText",
)
