"""hyperclone: widen a pretrained causal LM into a larger one that computes the same function.

Python API (the CLI is a thin layer over these):

    from hyperclone_cli import expand, verify, inspect
    result = expand("small/", "wide/", factor=2, noise=10.0)
    report = verify("small/", "wide/")
    info = inspect("small/", factor=2)

The names are loaded on first use, so that `import hyperclone_cli` (and `hyperclone --help`)
does not pay for torch and transformers.
"""

from ._version import __version__
from .errors import HypercloneError, VerificationError

# public name → module that defines it
_LAZY = {
    "expand": "pipeline",
    "ExpandResult": "pipeline",
    "inspect": "inspection",
    "Inspection": "inspection",
    "verify": "verification",
    "VerifyReport": "verification",
    "Recipe": "recipe",
    "build_recipe": "recipe",
    "load_recipe": "recipe",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hyperclone_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["HypercloneError", "VerificationError", "__version__", *_LAZY]
