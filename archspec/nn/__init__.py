"""The component library: small torch-only modules that take plain numbers and ready-made submodules, never spec
objects.

Where things live: norms.py (RMSNorm), activations.py, rope.py (RoPE and its scalings), positions.py (a call's
`Context`, ALiBi, T5's relative bias), masks.py (mask predicates), attend.py (the attention functions and which
one a layer uses in a call), flex.py (FlexAttention), attention.py, mla.py, mlp.py, moe.py, blocks.py (residual
layouts), models.py (the decoder LM), encoder_decoder.py (T5), vision.py and vlm.py (LLaVA), cache.py (KV cache),
generate.py (greedy and sampled decoding), init.py (initial weights).

`archspec.emit` copies these definitions verbatim into stand-alone files, specialised to the model's plan
features (`archspec.plan.FEATURES`):

* a line ending in `# emit-if: EXPR` is kept (without the marker) when EXPR holds, else dropped with the block
  indented under it. EXPR is a feature, `!feature`, features joined by `,` (all) or `|` (any); `library` is the
  feature of archspec's own models only (FlexAttention, fx tracing, compiled decoding): never emitted;
* an `if` line ending in `# emit-when: EXPR` is a condition that holds exactly when EXPR does (for every instance
  of that class in the model): when EXPR holds only its body is kept, dedented; else only its `else:` body, or
  nothing. Statements after a kept `return` in the same block are dropped as unreachable. Where instances differ
  (the plan's `varying` features) the `if` stays as it is.

Keep components importing only torch, the standard library and each other.
"""

import importlib
import pkgutil
from types import ModuleType


def modules() -> list[ModuleType]:
    """The component modules, by name."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
