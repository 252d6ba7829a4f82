"""The component library: small torch-only modules that take plain numbers, never spec objects.

Where things live: norms.py (RMSNorm), activations.py, rope.py (RoPE and its scalings), positions.py (ALiBi,
learned), masks.py (causal / sliding-window masks), attention.py, mlp.py, blocks.py (residual layouts),
cache.py (KV cache), models.py (the decoder LM), generate.py (greedy and sampled decoding).
"""
