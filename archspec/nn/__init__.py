"""The component library: small torch-only modules that take plain numbers, never spec objects.

Where things live: norms.py (RMSNorm), activations.py, rope.py (RoPE and its scalings), positions.py (ALiBi,
learned), masks.py (causal / sliding-window masks), attention.py, mlp.py, blocks.py (residual layouts),
cache.py (KV cache), models.py (the decoder LM), generate.py (greedy and sampled decoding).

`archspec.emit` copies these definitions verbatim into stand-alone files. A line ending in `# emit-if: FEATURE`
(rope, qk_norm, alibi, dynamic_ntk, moe) starts a branch only models with that feature take: emitted files of
other models leave the line and its indented block out. Keep such branches free of `else:` so dropping them is
exact, and keep components importing only torch, the standard library and each other.
"""
