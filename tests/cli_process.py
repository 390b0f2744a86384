"""Run the real CLI in a process of its own, fast: most runs fork from a "zygote" process that
has already imported torch and the package (a fresh `python -m hyperclone_cli` costs ~2 s,
too much for ~100 runs on a shared 2-core machine). Each run is still a separate process
with its own stdout, stderr (file descriptors 1 and 2) and exit status, running `cli.main`
as `python -m hyperclone_cli` does. `real=True` (or HYPERCLONE_TEST_REAL=1 for every run)
starts a fresh interpreter instead: for signals, resource limits and the like.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}
ENV.pop("HYPERCLONE_DEBUG", None)

ALL_REAL = bool(os.environ.get("HYPERCLONE_TEST_REAL"))

# Runs the CLI after executing the patch given in HC_TEST_PATCH (test harness only).
WRAPPER = (
    "import os, sys\n"
    "exec(os.environ['HC_TEST_PATCH'])\n"
    "from hyperclone_cli.cli import main\n"
    "main(sys.argv[1:])\n"
)

# Reads one JSON request per line, forks, runs cli.main in the child with fds 1/2 on the
# given files, and answers with the child's exit status (negative: killed by a signal).
ZYGOTE = r"""
import json, os, sys, traceback
import torch, hyperclone_cli.cli, hyperclone_cli.pipeline  # the expensive part, done once
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd, path in ((1, req["out"]), (2, req["err"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            os.environ.update(req["env"])
            if req.get("patch"):
                exec(req["patch"], {})
            sys.argv = ["hyperclone", *req["argv"]]
            hyperclone_cli.cli.main(req["argv"])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
            text=True,
        )
        self.scratch = Path(tempfile.mkdtemp(prefix="hyperclone-zygote-"))

    def run(self, argv: list[str], env: dict, patch: str | None):
        out, err = self.scratch / "out", self.scratch / "err"
        req = {"argv": argv, "out": str(out), "err": str(err), "env": env, "patch": patch}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "the zygote died"
        code = json.loads(answer)["code"]
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.scratch, ignore_errors=True)


_zygote: Zygote | None = None


def start() -> None:
    """Start the zygote (a module fixture calls this; stop() ends it)."""
    global _zygote
    _zygote = None if ALL_REAL else Zygote()


def stop() -> None:
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None


def tree_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file under path, by relative name (the source's fingerprint)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def run(*args, src: Path | None = None, patch: str | None = None, prefix=(), real=False):
    """Run the CLI in its own process; when `src` is given, its bytes must be unchanged."""
    before = tree_hashes(src) if src is not None else None
    argv = [str(a) for a in args]
    if _zygote is not None and not real and not prefix:
        r = _zygote.run(argv, {}, patch)
    else:
        cmd = [sys.executable, "-m", "hyperclone_cli"]
        env = ENV
        if patch is not None:
            cmd = [sys.executable, "-c", WRAPPER]
            env = {**ENV, "HC_TEST_PATCH": patch}
        r = subprocess.run(
            [*prefix, *cmd, *argv], capture_output=True, text=True, env=env, timeout=300
        )
    if src is not None:
        assert tree_hashes(src) == before, "the source changed"
    return r
