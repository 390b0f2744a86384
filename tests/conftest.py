import os
import sys
from pathlib import Path

import pytest

# no test touches the network: a hub id resolves only from a (fake) cache. Set before
# huggingface_hub is imported, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def cli(capsys):
    """Run the real CLI entry point in-process: returns (exit code, stdout, stderr)."""
    from hyperclone_cli.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what building the fixtures printed
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
