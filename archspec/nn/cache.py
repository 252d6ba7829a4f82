"""A static key/value cache: tensors allocated once for the whole generation and written in place.

Slot t holds position t, so the causal mask alone hides the slots not yet written, and decoding steps keep
static shapes (what `torch.compile` and CUDA graphs need). gpt-fast's design.
"""

import torch


class LayerKVCache:
    """Keys and values of one attention layer, [batch, kv_heads, max_len, head_dim] each (zeros to begin with)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(
        self, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values at `positions` ([seq]); return the first `visible` slots."""
        self.keys.index_copy_(2, positions, keys)
        self.values.index_copy_(2, positions, values)
        if visible == keys.shape[2]:  # only the new ones: the same numbers, without a strided read
            return keys, values
        return self.keys[:, :, :visible], self.values[:, :, :visible]


class KVCache:
    """The caches of every layer plus how many positions have been written."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        self.layers, self.length = layers, 0

    @property  # emit-if: library|encoder_decoder
    def max_len(self) -> int:
        return self.layers[0].keys.shape[2]


class EncoderDecoderCache(KVCache):
    """The decoder's self-attention caches, plus the cross-attention keys/values of the encoder output."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        super().__init__(layers)
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None
