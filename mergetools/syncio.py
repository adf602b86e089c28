"""Flush while writing: start write-back of written ranges early, and make files durable.

A durable write is ``fdatasync`` of every file, then ``fsync`` of its folder, before the rename
that publishes it. Done only at the end, that waits for the whole output to reach the disk after
the last byte is produced. :class:`WriteBehind` instead asks the kernel to start writing each range
soon after it is written (Linux ``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``:
submit the dirty pages for write-out, do not wait), so the disk works while the merge computes
and the final ``fdatasync`` finds little left. It changes *when* pages are written, never *whether*:
the guarantee still comes from :func:`fdatasync` (and the folder's ``fsync``) before the rename.

``sync_file_range`` has no Python binding; it is called through ``ctypes`` on the C library.
Where it does not exist (not Linux, a C library without it), or the kernel or the file system
refuses it (``ENOSYS``, ``EINVAL``, ``EOPNOTSUPP``, ``ESPIPE``) the write-behind is switched off
and writing carries on: only the final flush gets slower. Any other error from it also switches it
off (the final ``fdatasync`` reports real I/O errors).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

SYNC_FILE_RANGE_WRITE = 2
"""From ``<fcntl.h>``: start write-out of dirty pages in the range, do not wait."""

WRITE_BEHIND_BYTES = 8 << 20
"""Contiguous written bytes gathered before one write-back request (fewer, larger requests)."""

_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ESPIPE})

SyncRange = Callable[[int, int, int], None]
"""``sync_range(fd, offset, nbytes)``: start write-back; raises ``OSError`` when refused."""


@functools.cache
def _libc_sync_file_range() -> SyncRange | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def sync_range(fd: int, offset: int, nbytes: int) -> None:
        # ctypes releases the GIL for the call: other threads keep computing meanwhile.
        if function(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return sync_range


def sync_range_function() -> SyncRange | None:
    """The write-back starter of this platform, or None where there is none."""
    return _libc_sync_file_range()


def fdatasync(fd: int) -> None:
    """``fdatasync`` where the platform has it (data and the metadata needed to read it back,
    such as the size), else ``fsync``."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # macOS, Windows
        os.fsync(fd)


class WriteBehind:
    """Starts write-back of one file's written ranges while the file is still being written.

    Call :meth:`written` after each write; contiguous ranges are gathered up to
    :data:`WRITE_BEHIND_BYTES` and handed to the kernel. Safe to call from several threads.
    ``enabled=False`` (or a platform without the call) makes every method a no-op.
    """

    def __init__(
        self,
        fd: int,
        *,
        enabled: bool = True,
        chunk: int = WRITE_BEHIND_BYTES,
        sync_range: SyncRange | None = None,
    ) -> None:
        self.fd = fd
        self.chunk = chunk
        self._sync_range = (sync_range or sync_range_function()) if enabled else None
        self._lock = threading.Lock()
        self._pending: dict[object, tuple[int, int]] = {}
        self.requests = 0
        self.bytes_requested = 0

    @property
    def active(self) -> bool:
        return self._sync_range is not None

    def written(self, offset: int, nbytes: int, *, stream: object = None) -> None:
        """Note that ``[offset, offset + nbytes)`` was written (``stream`` keys one writer's
        sequence of adjacent writes, e.g. a tensor, so interleaved writers do not split runs)."""
        if self._sync_range is None or nbytes <= 0:
            return
        runs: list[tuple[int, int]] = []
        with self._lock:
            start, end = self._pending.get(stream, (offset, offset))
            if offset != end:  # not adjacent: hand over what was gathered, start a new run
                runs.append((start, end))
                start = offset
            end = offset + nbytes
            if end - start >= self.chunk:
                runs.append((start, end))
                self._pending.pop(stream, None)
            else:
                self._pending[stream] = (start, end)
        for run_start, run_end in runs:  # outside the lock: the call may wait on a busy disk
            self._request(run_start, run_end - run_start)

    def finish(self, stream: object = None) -> None:
        """Hand over what ``stream`` gathered (its writes are done)."""
        if self._sync_range is None:
            return
        with self._lock:
            run = self._pending.pop(stream, None)
        if run is not None:
            self._request(run[0], run[1] - run[0])

    def flush_all(self) -> None:
        """Hand over every gathered range."""
        if self._sync_range is None:
            return
        with self._lock:
            runs, self._pending = list(self._pending.values()), {}
        for start, end in runs:
            self._request(start, end - start)

    def _request(self, offset: int, nbytes: int) -> None:
        if self._sync_range is None or nbytes <= 0:
            return
        try:
            self._sync_range(self.fd, offset, nbytes)
        except OSError as exc:
            reason = "not supported here" if exc.errno in _UNSUPPORTED else "failed"
            logger.debug("sync_file_range %s (%s); flushing at the end only", reason, exc)
            self._sync_range = None
            return
        with self._lock:
            self.requests += 1
            self.bytes_requested += nbytes
