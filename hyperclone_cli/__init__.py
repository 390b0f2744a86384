"""hyperclone: widen a pretrained causal LM into a larger one that computes the same function.

Python API (the CLI is a thin layer over these):

    from hyperclone_cli import expand, verify, inspect
    result = expand("small/", "wide/", factor=2, noise=10.0)
    report = verify("small/", "wide/")
    info = inspect("small/", factor=2)
"""

__version__ = "0.1.0"

from .errors import HypercloneError, VerificationError  # noqa: E402


def __getattr__(name: str):
    # Lazy: `import hyperclone_cli` stays cheap (no torch/transformers until needed).
    if name == "expand":
        from .expand import expand

        return expand
    if name == "verify":
        from .verify import verify

        return verify
    if name == "inspect":
        from .inspect import inspect

        return inspect
    if name == "load_recipe":
        from .recipe import load_recipe

        return load_recipe
    raise AttributeError(name)


__all__ = ["HypercloneError", "VerificationError", "expand", "inspect", "load_recipe", "verify"]
