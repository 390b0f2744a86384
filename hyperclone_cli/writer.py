"""Writing safetensors shards, streaming: each shard's header is emitted first, from the
plan, then each tensor's bytes as they are produced, so no shard is ever held in memory.

`ShardWriter` writes one file (hashing it on the way out for the model card, and starting
the disk write every 64 MB). `BackgroundWriter` runs ShardWriters on a thread of its own,
from a small pool of reused chunk buffers, so the next chunks are computed meanwhile.
Chunks computed on a GPU are copied into pinned pool buffers on a side stream without
waiting; only the writer thread waits, for that one copy, just before it writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import math
import mmap
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import TORCH_TO_ST
from .errors import EXIT_IO, HypercloneError

ProgressFn = Callable[[int], None]  # called with the bytes of each chunk written
CHUNK_BYTES = 16 * 1024 * 1024  # target bytes computed and written at a time
WRITER_DEPTH = 3  # chunks computed ahead of the disk
BUFFER_COUNT = WRITER_DEPTH + 2  # one chunk being computed, one being written, the queue
WRITEBACK_BYTES = 64 * 1024 * 1024  # ShardWriter starts the disk write every this many bytes
HASH_LAG = BUFFER_COUNT  # chunks the sha256 may run behind the writes
DIRECT_IO = True  # write shards with O_DIRECT where the file system takes it (_DirectFile)
STAGE_BYTES = 8 * 1024 * 1024  # a direct write's staging buffer


@dataclass(frozen=True)
class Entry:
    """One tensor of a shard to write."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class ShardResult:
    file: str
    bytes: int
    sha256: str


def safetensors_header(entries: Iterable[Entry], metadata: dict[str, str] | None) -> bytes:
    """The header bytes (length prefix included), padded to 8 bytes as safetensors does."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": TORCH_TO_ST[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


class _DirectFile:
    """A file written with O_DIRECT through a reused, aligned staging buffer: the disk reads
    the bytes from it by DMA, where a normal write() copies them into page-cache pages and
    the kernel writes those later. Writing 1.8 GB took 0.4-0.6 s of CPU this way against
    2.3-3.0 s buffered on the 2-core VM (first-touched page-cache pages are dear in a VM),
    in less wall time. Nothing stays cached, so not for files read back next (verify).

    Each write() of the buffer is whole and aligned; the tail is padded to the alignment
    and the file cut back to its length at close. A file system that refuses O_DIRECT at
    open gets a normal file (`open` returns None); one that refuses a write has O_DIRECT
    taken off the descriptor and gets the same bytes buffered."""

    ALIGN = 4096  # the largest logical block size in use
    STAGE_BYTES = STAGE_BYTES

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._stage = mmap.mmap(-1, self.STAGE_BYTES)  # page-aligned, reused
        self._view = memoryview(self._stage)
        self._staged = 0
        self._length = 0

    @classmethod
    def open(cls, path: Path) -> _DirectFile | None:
        direct = getattr(os, "O_DIRECT", 0)
        if not direct or not DIRECT_IO:
            return None
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct | getattr(os, "O_CLOEXEC", 0)
        try:
            return cls(os.open(path, flags, 0o666))
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return None

    def write(self, data: memoryview) -> None:
        data = data.cast("B")
        done = 0
        while done < data.nbytes:
            n = min(data.nbytes - done, self.STAGE_BYTES - self._staged)
            self._view[self._staged : self._staged + n] = data[done : done + n]
            self._staged += n
            done += n
            if self._staged == self.STAGE_BYTES:
                self._put(self.STAGE_BYTES)
        self._length += data.nbytes

    def _put(self, nbytes: int) -> None:
        done = 0
        while done < nbytes:
            try:
                done += os.write(self._fd, self._view[done:nbytes])
            except OSError as e:
                if e.errno != errno.EINVAL or not self._undirect():
                    raise
        self._staged = 0

    def _undirect(self) -> bool:
        """Take O_DIRECT off (a write refused for it); False when it was not on."""
        import fcntl  # (POSIX; O_DIRECT is only ever on there)

        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        if not flags & os.O_DIRECT:
            return False
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        return True

    def flush(self) -> None:
        """Write what is staged (padded to the alignment), then cut the file to its length."""
        if self._staged:
            tail = self._staged
            padded = -(-tail // self.ALIGN) * self.ALIGN
            self._view[tail:padded] = bytes(padded - tail)
            self._put(padded)
            if padded != tail:
                os.ftruncate(self._fd, self._length)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        os.close(fd)
        with contextlib.suppress(BufferError):  # a failed write's traceback may hold a slice
            self._view.release()
            self._stage.close()  # (else unmapped when the last slice goes)


class ShardWriter:
    """Write one safetensors file: header first, then each tensor's bytes in plan order."""

    def __init__(
        self,
        path: Path,
        entries: list[Entry],
        metadata: dict[str, str] | None = None,
        keep_cached: bool = False,
    ):
        self.path = path
        self.keep_cached = keep_cached  # the written pages stay in the page cache
        self.entries = entries
        self.sha256 = hashlib.sha256()
        head = safetensors_header(entries, metadata)
        self.expected = len(head) + sum(e.nbytes for e in entries)
        # the disk's DMA reads the bytes from a staging buffer of our own, when the file
        # system takes O_DIRECT and the pages need not stay cached: see _DirectFile
        self._file = _DirectFile.open(path) if not keep_cached else None
        self._direct = self._file is not None
        if self._file is None:
            self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.written = 0
        self._flushed = 0  # bytes handed to the kernel's writeback so far
        self._hashing: deque[Future] = deque()  # chunks handed to the hash thread, in order
        self._emit(memoryview(head))

    def _emit(self, data: memoryview, then: Callable[[], None] | None = None) -> None:
        """Write `data` and hash it; `then()` once, when neither needs its memory any more.
        sha256 costs about as much CPU as the write, so a thread of its own hashes the chunks
        in order, up to HASH_LAG behind: a write that waits on the disk does not hold it up."""
        job = None
        if data.nbytes >= 1 << 20 or self._hashing:  # (in order behind those in flight)
            job = _hasher().submit(self.sha256.update, data)
            self._hashing.append(job)
        else:
            self.sha256.update(data)
        try:
            self._file.write(data)
        except OSError as e:  # name the file: a failed write() does not (ENOSPC, EIO)
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        finally:
            if then is not None:
                if job is None:
                    then()
                else:
                    job.add_done_callback(lambda _: then())  # at once if already done
        while self._hashing and (self._hashing[0].done() or len(self._hashing) > HASH_LAG):
            self._hashing.popleft().result()
        self.written += data.nbytes
        if self.written - self._flushed >= WRITEBACK_BYTES and not self._direct:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Start writing the new dirty pages to disk now, while computing goes on, instead
        of all at the fsync in close() (the kernel waits for ~10% of RAM to be dirty)."""
        with contextlib.suppress(OSError):  # a hint: write errors surface in write/close
            n = self.written - self._flushed
            start_writeback(self._file.fileno(), self._flushed, n, self.keep_cached)
        self._flushed = self.written

    def write(self, chunk: torch.Tensor, then: Callable[[], None] | None = None) -> None:
        """Append a chunk's bytes; `then()` once its memory is free to reuse."""
        try:
            if chunk.device.type != "cpu":
                chunk = chunk.cpu()
            data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
            if self.written + data.nbytes > self.expected:
                raise RuntimeError(f"{self.path.name}: more bytes than the plan allows")
        except BaseException:
            if then is not None:
                then()
            raise
        self._emit(memoryview(data), then)

    def close(self) -> str:
        """Flush to disk and return the file's sha256; the byte count must match the plan."""
        try:
            while self._hashing:
                self._hashing.popleft().result()
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        finally:
            self._file.close()
        if self.written != self.expected:
            raise RuntimeError(f"{self.path.name}: wrote {self.written} of {self.expected} bytes")
        return self.sha256.hexdigest()

    def abort(self) -> None:
        while self._hashing:  # (their chunks go back to the pool as they finish)
            self._hashing.popleft().exception()
        with contextlib.suppress(OSError):  # buffered bytes may not fit either (ENOSPC)
            self._file.close()


def start_writeback(fd: int, offset: int, nbytes: int, keep_cached: bool = False) -> None:
    """Have the kernel start writing a range's dirty pages, without waiting for it.

    POSIX_FADV_DONTNEED does that on Linux, and also drops the pages whose write has
    finished by the time it returns (about a third of SmolLM2 x2's): memory that the
    writes reuse, which on the 2-core VM made SmolLM2 x2 --no-verify ~1.5 s faster than
    keeping every page. `keep_cached` (a verification reads the files back next) uses
    Linux's sync_file_range instead, which keeps them all: verification then reads them
    from memory rather than the disk."""
    call = _sync_file_range() if keep_cached else None
    if call is not None:
        if call(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    elif hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)


SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


@functools.cache
def _hasher() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="hyperclone-sha256")


def finish_shard(sw: ShardWriter) -> ShardResult:
    """Close a shard, then read its header back: what the disk kept must be what we wrote."""
    digest = sw.close()
    check_written_shard(sw.path, sw.entries, sw.expected)
    return ShardResult(sw.path.name, sw.expected, digest)


def check_written_shard(path: Path, entries: list[Entry], expected_size: int) -> None:
    """Re-read a written shard's header with the safetensors library and compare to the plan."""
    from safetensors import safe_open

    def bad(what: str) -> HypercloneError:
        return HypercloneError(
            f"{path.name}: the shard just written {what}; the disk or file system lost data, "
            "so nothing was kept; check the disk and rerun",
            code=EXIT_IO,
        )

    size = path.stat().st_size
    if size != expected_size:
        raise bad(f"has {size} bytes where {expected_size} were written")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            if names != {e.name for e in entries}:
                raise bad("holds other tensors than planned")
            shapes = {e.name: list(f.get_slice(e.name).get_shape()) for e in entries}
    except HypercloneError:
        raise
    except Exception as e:  # the library's own error types differ between releases
        raise bad(f"does not parse ({' '.join(str(e).split())[:120]})") from e
    wrong = [e.name for e in entries if shapes[e.name] != list(e.shape)]
    if wrong:
        raise bad(f"has the wrong shape for {wrong[0]}")


class BackgroundWriter:
    """Shards written on a thread of their own while the caller computes the next chunks.

        with BackgroundWriter(out_dir, pooled=True) as w:
            w.start_shard(file, entries); w.write(chunk) ...; w.end_shard()
            results = w.finish()

    At most WRITER_DEPTH chunks wait for the disk. A failure in the thread is raised in the
    caller's next call; leaving the block by an exception drops the queued chunks and
    closes the open files (the caller removes them)."""

    def __init__(
        self,
        out_dir: Path,
        *,
        pooled: bool,
        pinned: bool = False,
        progress: ProgressFn | None = None,
        keep_cached: bool = False,
    ):
        self._dir = out_dir
        self._keep_cached = keep_cached
        self._progress = progress
        self._q: queue.Queue = queue.Queue(maxsize=WRITER_DEPTH)
        self._error: BaseException | None = None
        self._cancelled = False
        self._opened: list[ShardWriter] = []
        self._results: list[ShardResult] = []
        self._thread = threading.Thread(target=self._run, name="hyperclone-writer", daemon=True)
        self._thread.start()
        pooled = pooled or pinned
        self._pool = _BufferPool(BUFFER_COUNT, CHUNK_BYTES, self._check, pinned) if pooled else None
        self._copies = _DeviceToHost(self._pool.take) if pinned else None

    @property
    def alloc(self) -> Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None:
        """Where the caller should put the chunks it computes (None: allocate as usual)."""
        return self._pool.take if self._pool is not None else None

    def start_shard(self, file: str, entries: list[Entry]) -> None:
        self._opened.append(
            ShardWriter(self._dir / file, entries, {"format": "pt"}, self._keep_cached)
        )

    def write(self, chunk: torch.Tensor) -> None:
        """Queue a chunk (a GPU chunk starts its copy to the host now, without waiting)."""
        ready = None
        if chunk.device.type == "cuda" and self._copies is not None:
            chunk, ready = self._copies(chunk)
        self._submit(lambda sw=self._opened[-1]: self._write(sw, chunk, ready))

    def end_shard(self) -> None:
        self._submit(lambda sw=self._opened[-1]: self._results.append(finish_shard(sw)))

    def finish(self) -> list[ShardResult]:
        """Wait for every chunk to be on disk; the shards' sizes and hashes, in order."""
        self._q.put(None)
        self._thread.join()
        self._check()
        return self._results

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._cancel()
            for sw in self._opened:
                sw.abort()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None and not self._cancelled:
                try:
                    job()
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e

    def _submit(self, job: Callable[[], None]) -> None:
        self._check()
        self._q.put(job)

    def _check(self) -> None:
        """Re-raise, in the calling thread, what made the writer thread fail."""
        if self._error is not None:
            raise self._error

    def _cancel(self) -> None:
        """Drop queued chunks and wait only for the one being written (after Ctrl-C, ENOSPC)."""
        self._cancelled = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join()

    def _write(self, sw: ShardWriter, chunk: torch.Tensor, ready: object = None) -> None:
        give = None if self._pool is None else (lambda: self._pool.give(chunk))
        try:
            if ready is not None:
                ready.synchronize()  # this chunk's device-to-host copy; releases the GIL
        except BaseException:
            if give is not None:
                give()
            raise
        sw.write(chunk, then=give)  # the buffer returns once written and hashed
        if self._progress is not None:
            self._progress(chunk.numel() * chunk.element_size())


class _BufferPool:
    """Chunk memory reused round-robin: a written chunk's buffer holds a later one, so its
    pages are not faulted in and zeroed again for every chunk (a sixth of expand's CPU
    time), and the memory in flight is bounded. Larger chunks get memory of their own."""

    def __init__(
        self, count: int, nbytes: int, check: Callable[[], None], pinned: bool = False
    ) -> None:
        self._nbytes = nbytes
        self._check = check
        self._pinned = pinned  # page-locked: the GPU copies into it directly, at full speed
        self._free: queue.Queue = queue.Queue()
        self._owner: dict[int, torch.Tensor] = {}
        for _ in range(count):
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
            self._owner[buf.data_ptr()] = buf
            self._free.put(buf)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape) * dtype.itemsize
        if n > self._nbytes:
            return torch.empty(shape, dtype=dtype, pin_memory=self._pinned)
        while True:  # the writer hands buffers back; if it failed, say why instead of waiting
            try:
                buf = self._free.get(timeout=0.2)
                break
            except queue.Empty:
                self._check()
        return buf[:n].view(dtype).view(shape)

    def give(self, chunk: torch.Tensor) -> None:
        buf = self._owner.get(chunk.untyped_storage().data_ptr())
        if buf is not None:
            self._free.put(buf)


class _DeviceToHost:
    """GPU chunks into pinned host buffers, on a stream of their own: the copy of one chunk
    overlaps the computing of the next, and nothing here waits for the device."""

    def __init__(self, alloc: Callable[[tuple[int, ...], torch.dtype], torch.Tensor]) -> None:
        self._alloc = alloc
        self._stream: torch.cuda.Stream | None = None

    def __call__(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        if self._stream is None:
            self._stream = torch.cuda.Stream(chunk.device)
        host = self._alloc(tuple(chunk.shape), chunk.dtype)
        self._stream.wait_stream(torch.cuda.current_stream(chunk.device))  # computed first
        with torch.cuda.stream(self._stream):
            host.copy_(chunk, non_blocking=True)
            chunk.record_stream(self._stream)  # its memory is not reused before the copy ends
            done = torch.cuda.Event()
            done.record(self._stream)
        return host, done
