"""hyperclone: widen a pretrained causal LM into a larger one that computes the same function.

Python API (the CLI is a thin layer over these):

    from hyperclone_cli import expand, verify, inspect
    result = expand("small/", "wide/", factor=2, noise=10.0)
    report = verify("small/", "wide/")
    info = inspect("small/", factor=2)

`hyperclone_cli.expand` is the function; its module is `hyperclone_cli.pipeline`.
`.verify` and `.inspect` are functions too, named like their modules, which stay reachable
with `importlib.import_module("hyperclone_cli.verify")` and the like.
"""

__version__ = "0.1.0"

from .errors import HypercloneError, VerificationError  # noqa: E402
from .inspect import Inspection, inspect  # noqa: E402
from .pipeline import ExpandResult, expand  # noqa: E402
from .recipe import Recipe, load_recipe  # noqa: E402
from .verify import VerifyReport, verify  # noqa: E402

__all__ = [
    "ExpandResult",
    "HypercloneError",
    "Inspection",
    "Recipe",
    "VerificationError",
    "VerifyReport",
    "expand",
    "inspect",
    "load_recipe",
    "verify",
]
