"""A vision-language model: a decoder LM whose input sequence carries image tokens at placeholder positions."""

import torch
from torch import nn

from archspec.nn.cache import KVCache
from archspec.nn.generate import generate
from archspec.nn.models import DecoderLM, LMOutput
from archspec.nn.vision import PatchPool, Projector, placeholder_mismatch, splice_image_tokens


class VisionLanguageLM(DecoderLM):
    """A `DecoderLM` (same text parts, names and cache) plus a vision tower, a projector and optional pooling.

    `model(input_ids, pixel_values=...)` runs the tower; `model(input_ids, image_features=...)` starts from tower
    features [images, patches, width] (external towers). Either way the projected (and pooled) image tokens replace
    the embeddings at the placeholder positions, image after image in reading order of the batch. Without images
    the call is the text model's, unchanged. `vision_tower` is None for an external tower: set it to any module or
    callable mapping pixel_values to features to use `pixel_values=` with one.
    """

    def __init__(
        self,
        *args: object,
        vision_tower: nn.Module | None,
        projector: Projector,
        pooling: PatchPool | None,
        image_token: int,
        tokens_per_image: int,
        feature_shape: tuple[int, int],
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.vision_tower = vision_tower
        self.projector = projector
        self.pooling = pooling
        self.image_token, self.tokens_per_image = image_token, tokens_per_image
        self.feature_shape = feature_shape  # (tokens, width) of the features one image gives the projector

    def image_tokens(
        self, pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[images, tokens_per_image, d_model]: tower (unless features are given) -> projector -> pooling."""
        if (pixel_values is None) == (image_features is None):
            raise ValueError("pass exactly one of pixel_values and image_features")
        if image_features is None:
            if self.vision_tower is None:
                raise ValueError(
                    "this spec's vision tower is external: pass image_features=[images, patches, width], "
                    "or set model.vision_tower to a module returning them"
                )
            image_features = self.vision_tower(pixel_values)
        if tuple(image_features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"image features have shape {tuple(image_features.shape)}; the spec expects "
                f"[images, {self.feature_shape[0]}, {self.feature_shape[1]}]"
            )
        tokens = self.projector(image_features)
        return self.pooling(tokens) if self.pooling is not None else tokens

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        **text_options: object,
    ) -> LMOutput:
        """`text_options` go to `DecoderLM.forward` as they are."""
        if pixel_values is None and image_features is None:
            return super().forward(input_ids, cache=cache, labels=labels, **text_options)  # type: ignore[arg-type]
        image_tokens = self.image_tokens(pixel_values, image_features)
        return self.forward_with_image_tokens(input_ids, image_tokens, cache, labels, **text_options)

    def forward_with_image_tokens(
        self,
        input_ids: torch.Tensor,
        image_tokens: torch.Tensor,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        **text_options: object,
    ) -> LMOutput:
        """The forward pass with image tokens already computed ([images, tokens_per_image, d_model])."""
        if not torch.compiler.is_compiling():  # the count check syncs with the device; a compiled graph skips it
            problem = placeholder_mismatch(input_ids, self.image_token, image_tokens.shape[0], self.tokens_per_image)
            if problem is not None:
                raise ValueError(problem)
        embeds = splice_image_tokens(self.embed(input_ids), input_ids, image_tokens, self.image_token)
        return super().forward(input_ids, cache=cache, labels=labels, inputs_embeds=embeds, **text_options)  # type: ignore[arg-type]

    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        *,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        **options: object,
    ) -> torch.Tensor:
        """`DecoderLM.generate` with images: their tokens are computed once, spliced into the prompt's forward pass,
        and from then on the KV cache holds them (without a cache every step splices them again)."""
        if pixel_values is None and image_features is None:
            return super().generate(input_ids, max_new_tokens, **options)
        options.setdefault("eos_token_id", self.eos_token_id)
        options.setdefault("pad_token_id", self.pad_token_id)
        step = _WithImages(self, self.image_tokens(pixel_values, image_features))
        return generate(step, input_ids, max_new_tokens, **options)  # type: ignore[arg-type]


class _WithImages:
    """What `generate` calls: the prompt's pass (empty or no cache) gets the image tokens, decode steps do not."""

    def __init__(self, model: VisionLanguageLM, image_tokens: torch.Tensor) -> None:
        self.model, self.image_tokens = model, image_tokens
        self.pos_embed = model.pos_embed  # emit-if: learned_positions

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return self.model.new_cache(batch, max_len)

    def __call__(self, input_ids: torch.Tensor, cache: KVCache | None = None, **options: object) -> LMOutput:
        if cache is None or cache.length == 0:
            return self.model.forward_with_image_tokens(input_ids, self.image_tokens, cache, **options)
        return self.model(input_ids, cache=cache, **options)
