"""Images as tokens: a ViT/CLIP-style tower, the projector into the LM's width, patch pooling, and the splice.

```
pixel_values [images, C, H, W]
  -> VisionTower: patches + class token + positions -> pre-norm -> blocks -> hidden state(s) of feature_layers
  -> features [images, patches, width]        (or image_features given directly: an external tower)
  -> Projector (linear, or MLP: linear, act, linear, ...) -> [images, patches, d_model]
  -> PatchPool (optional: g x g grid -> s x s by averaging windows) -> [images, tokens_per_image, d_model]
  -> splice_image_tokens: placeholder positions of input_ids, in reading order, take the image tokens in order
```
ViT: Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929. CLIP: Radford et al. 2021,
https://arxiv.org/abs/2103.00020. LLaVA: Liu et al. 2023, https://arxiv.org/abs/2304.08485.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from archspec.nn.activations import ACTIVATIONS, quick_gelu
from archspec.nn.attend import unmasked_attention
from archspec.nn.mlp import Activation
from archspec.nn.positions import Context

VISION_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {**ACTIVATIONS, "quick-gelu": quick_gelu}


class PatchEmbedding(nn.Module):
    """Non-overlapping patches, each mapped linearly to the tower's width (`proj`: a strided convolution), an
    optional learned class token in front, plus learned absolute position embeddings (`positions`).

    Patches are numbered in reading order (row by row), so token 1 + r * grid + c is patch (r, c).
    """

    def __init__(self, proj: nn.Conv2d, positions: nn.Embedding, class_token: bool) -> None:
        super().__init__()
        self.proj = proj
        width = proj.out_channels
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5) if class_token else None
        self.positions = positions

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.proj(pixel_values.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            x = torch.cat((self.class_embedding.expand(x.shape[0], 1, -1), x), dim=1)
        return x + self.positions.weight


class VisionTower(nn.Module):
    """pixel_values [images, C, H, W] -> the features a VLM reads: [images, tokens, width * len(feature_layers)].

    `feature_layers` index the hidden states: 0 is the (pre-normed) embeddings, k the output of block k. Only the
    blocks up to the deepest one read are run. `drop_class_token` keeps the patch tokens only. `post_norm` is CLIP's
    post_layernorm, kept so its checkpoints load: it normalises the pooled class token (`pooled`), not the features.
    Blocks attend bidirectionally: they get an all-true mask, never the causal fast path.
    """

    def __init__(
        self,
        embed: PatchEmbedding,
        layers: list[nn.Module],
        pre_norm: nn.Module | None,
        post_norm: nn.Module | None,
        *,
        feature_layers: list[int],
        drop_class_token: bool,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.pre_norm = pre_norm or nn.Identity()
        self.layers = nn.ModuleList(layers)
        self.post_norm = post_norm or nn.Identity()
        self.feature_layers = feature_layers
        self.drop_class_token = drop_class_token

    def hidden_states(self, pixel_values: torch.Tensor, up_to: int) -> list[torch.Tensor]:
        """The embeddings and the outputs of blocks 1..up_to."""
        x = self.pre_norm(self.embed(pixel_values))
        tokens = x.shape[1]
        context = Context(torch.arange(tokens, device=x.device), tokens, rows=x.shape[0])
        states = [x]
        for layer in self.layers[:up_to]:
            x = layer(x, context, unmasked_attention)  # bidirectional attention
            states.append(x)
        return states

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        states = self.hidden_states(pixel_values, max(self.feature_layers))
        features = torch.cat([states[index] for index in self.feature_layers], dim=-1)
        return features[:, 1:] if self.drop_class_token else features

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP's pooled output: the class token after the last block, post-normed ([images, width])."""
        return self.post_norm(self.hidden_states(pixel_values, len(self.layers))[-1][:, 0])


class Projector(nn.Module):
    """layers[0](x), then activation and the next layer for each further layer: LLaVA-1.5's two-layer GELU MLP
    (two layers) or a single linear map, from the tower's width to the LM's."""

    def __init__(self, layers: list[nn.Linear], activation: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = layer(self.activation(x))
        return x


class PatchPool(nn.Module):
    """[images, grid^2, d] -> [images, side^2, d]: the reading-order grid of each image averaged over
    (grid / side)^2 windows, e.g. 24 x 24 = 576 tokens -> 12 x 12 = 144 with 2 x 2 windows."""

    def __init__(self, grid: int, side: int) -> None:
        super().__init__()
        self.grid, self.window = grid, grid // side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images, _, dim = x.shape
        x = x.view(images, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        x = F.avg_pool2d(x, kernel_size=self.window, stride=self.window)
        return x.flatten(2).transpose(1, 2)


def splice_image_tokens(
    embeds: torch.Tensor, input_ids: torch.Tensor, image_tokens: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """embeds [batch, seq, d] with its placeholder positions (input_ids == image_token_id), taken in reading order
    (row by row, left to right), replaced by the rows of image_tokens [images, tokens, d] in order.

    Static shapes and no host sync: the k-th placeholder gathers image token k (a cumulative count), so it traces
    and compiles. The caller checks that the counts agree (`placeholder_mismatch`).
    """
    flat = image_tokens.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    if flat.shape[0] == 0:  # no images (a static shape: no graph break)
        return embeds
    is_image = input_ids == image_token_id
    index = (is_image.flatten().cumsum(0) - 1).clamp(min=0).view_as(input_ids)
    return torch.where(is_image[..., None], flat[index], embeds)


def placeholder_mismatch(
    input_ids: torch.Tensor, image_token_id: int, images: int, tokens_per_image: int
) -> str | None:
    """Why input_ids cannot take `images` images (None when they can): each image fills tokens_per_image
    placeholders, so the placeholder count must be images * tokens_per_image. Syncs with the device."""
    found = int((input_ids == image_token_id).sum())
    if found == images * tokens_per_image:
        return None
    return (
        f"input_ids hold {found} image placeholder tokens (id {image_token_id}), but {images} image(s) x "
        f"{tokens_per_image} tokens per image need {images * tokens_per_image}: put one run of {tokens_per_image} "
        "placeholders in the text for each image given"
    )
