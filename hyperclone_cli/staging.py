"""Where the output is made: a hidden directory beside DST, renamed to DST only once it is
complete, so that DST never exists half-made.

    with staged_output(src, dst, force=force, needed_bytes=n) as stage:
        ...write everything into stage.tmp...
        stage.commit()  # the rename; leave the block without it and nothing appears

On the way in: the paths are checked, free space is checked against `needed_bytes`, and
what killed runs left beside DST is removed. Inside: SIGINT and SIGTERM become
`Interrupted` (so this cleanup runs), and an OSError becomes a one-line HypercloneError
with exit code 4. On the way out, whatever happened, the temporary directory is gone.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_IO, EXIT_SIGINT, EXIT_SIGTERM, HypercloneError, Interrupted
from .units import format_size

DISK_MARGIN = 0.01  # of the output, plus 1 MiB: file-system blocks, index, card


def check_destination(src: str | Path, dst: str | Path, force: bool) -> Path:
    """Refuse a DST that overlaps the source, exists (without --force), is not a checkpoint
    (with --force), or lies in a parent we cannot write; return DST as the path to use."""
    src, dst = Path(src), Path(dst)
    if dst.name in ("", ".", ".."):  # the temporary directory is named after dst
        dst = Path(os.path.abspath(dst))
    s, d = src.resolve(), dst.resolve()
    if d == s:
        raise HypercloneError(f"{dst}: destination is the source; choose another directory")
    if s in d.parents:
        raise HypercloneError(f"{dst}: destination is inside the source; choose another directory")
    if d in s.parents:
        raise HypercloneError(f"{dst}: destination contains the source; choose another directory")
    if dst.exists() and not force:
        raise HypercloneError(f"{dst}: already exists; pass --force to replace it")
    if dst.exists() and not dst.is_dir():
        raise HypercloneError(f"{dst}: exists and is not a directory; remove it or choose another")
    if dst.exists() and any(dst.iterdir()) and not (dst / "config.json").is_file():
        raise HypercloneError(
            f"{dst}: --force replaces only a checkpoint (a directory with config.json) or an "
            "empty directory; this one is neither, so remove it yourself or choose another"
        )
    parent = d.parent
    if not parent.is_dir():
        raise HypercloneError(f"{parent}: destination's parent directory does not exist; create it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HypercloneError(
            f"{parent}: not writable (permission denied); choose a destination you can write to",
            code=EXIT_IO,
        )
    return dst


@dataclass
class Stage:
    """The temporary directory being filled, and how to put it in DST's place."""

    tmp: Path
    dst: Path
    force: bool

    def commit(self) -> None:
        """Rename the finished directory to dst; an old dst (--force) is swapped out only
        now. SIGINT/SIGTERM wait until both renames are done, so dst is never half-swapped."""
        dst = self.dst
        if dst.exists() and not self.force:
            raise HypercloneError(f"{dst}: appeared while expanding; pass --force to replace it")
        _deferred["on"] = True
        try:
            if dst.exists():
                old = dst.parent / f".{dst.name}.hyperclone-{os.getpid()}.old"
                os.rename(dst, old)
                try:
                    os.rename(self.tmp, dst)
                except OSError:
                    os.rename(old, dst)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.tmp, dst)
        finally:
            _deferred["on"] = False
        signum = _deferred.pop("signum", None)
        if signum is not None:
            name = signal.Signals(signum).name
            raise HypercloneError(
                f"interrupted by {name} after {dst} was complete and in place; it is kept",
                code=EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM,
            )


@contextlib.contextmanager
def staged_output(
    src: str | Path, dst: str | Path, *, force: bool, needed_bytes: int
) -> Iterator[Stage]:
    """A temporary directory beside dst to write into; see the module's docstring."""
    dst = check_destination(src, dst, force)
    _check_space(dst.resolve().parent, needed_bytes)
    _remove_stale(dst)
    tmp = dst.parent / f".{dst.name}.hyperclone-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _signals_raise():
            try:
                tmp.mkdir()
                yield Stage(tmp, dst, force)
            except KeyboardInterrupt as e:
                raise Interrupted(signal.SIGINT) from e
            except OSError as e:
                raise HypercloneError(os_error_message(e, dst), code=EXIT_IO) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_space(parent: Path, needed_bytes: int) -> None:
    need = needed_bytes + int(needed_bytes * DISK_MARGIN) + 2**20
    free = shutil.disk_usage(parent).free
    if need > free:
        raise HypercloneError(
            f"{parent}: not enough disk space: the output needs {format_size(need)}, "
            f"{format_size(free)} free; free some space or choose another destination",
            code=EXIT_IO,
        )


def os_error_message(e: OSError, dst: Path) -> str:
    """One line for a failed write under dst that says what to do about it."""
    where = Path(e.filename).name if e.filename else "the output"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full; free some space or choose another destination"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"{e.strerror}; choose a destination you can write to"
    else:
        hint = e.strerror or str(e)
    return f"{dst}: cannot write {where}: {hint}; nothing was left behind"


def _remove_stale(dst: Path) -> None:
    """Remove what a killed run (SIGKILL, power loss) left beside dst: `.DST.hyperclone-PID.*`
    of processes that no longer exist. A live PID's directory is left alone."""
    for p in dst.parent.glob(f".{glob.escape(dst.name)}.hyperclone-*"):
        pid = p.name.removeprefix(f".{dst.name}.hyperclone-").split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
            # a `.old` is a previous DST that a killed --force run was swapping out: keep it
        except OSError:
            pass  # alive under another user


_deferred: dict = {"on": False}  # set while dst is being renamed into place


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into exceptions so cleanup runs; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if _deferred["on"]:
            _deferred["signum"] = signum
            return
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
