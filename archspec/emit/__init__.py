"""Emit a spec's model as one stand-alone, readable Python file (torch + stdlib only), and keep it current.

src  = emit_source(spec)                  # the text
path = write_generated(spec, "generated") # generated/<module_name(spec.name)>.py, written atomically
is_stale(spec, "generated")               # True when that file is missing or differs from emit_source(spec)
"""

from archspec.emit.files import generated_path, is_stale, write_generated
from archspec.emit.source import class_name, emit_source, module_name

__all__ = ["class_name", "emit_source", "generated_path", "is_stale", "module_name", "write_generated"]
