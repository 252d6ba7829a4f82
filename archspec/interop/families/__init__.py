"""One module per `transformers` model family, each defining its `FAMILY` (see `archspec.interop.family`).

`common` holds what several families share; `archspec.interop.registry` lists the families.
"""
