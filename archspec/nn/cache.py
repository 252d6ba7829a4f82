"""A static key/value cache: tensors allocated once for the whole generation and written in place.

Slot t holds position t, so the causal mask alone hides the slots not yet written, and decoding steps keep
static shapes (what `torch.compile` and CUDA graphs need). gpt-fast's design.
"""

import torch


class LayerKVCache:
    """Keys and values of one attention layer: [batch, kv_heads, max_len, head_dim] each."""

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        value_dim: int | None = None,
    ) -> None:
        self.keys = torch.zeros(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros(batch, kv_heads, max_len, value_dim or head_dim, dtype=dtype, device=device)
        self.visible: int | None = None  # set by the model per call: slots `update` returns (None: all)

    def update(
        self, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values at `positions` ([seq]) and return the first `visible` slots (default all).

        When the new keys are all that is visible (a prompt's first chunk), they are returned as they are: the
        same numbers as the slots just written, without attention reading them back through a strided view.
        """
        self.keys.index_copy_(2, positions, keys)
        self.values.index_copy_(2, positions, values)
        if self.visible is None:
            return self.keys, self.values
        if self.visible == keys.shape[2]:
            return keys, values
        return self.keys[:, :, : self.visible], self.values[:, :, : self.visible]


class KVCache:
    """The caches of every layer plus how many positions have been written."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        self.layers = layers
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.layers[0].keys.shape[2]
