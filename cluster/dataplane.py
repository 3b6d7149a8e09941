"""The data plane: where a node's frame payload lives, and how it is reached.

A node actor owns its payload array (DESIGN.md principle 3). It creates it
as a file in shared memory (shm_dir(): /dev/shm by default) and maps it; any
process on the same host maps the same file, so the coordinator reads,
writes and migrates those frames with one memcpy, like a CPU reaching
another NUMA node's memory. From another host the array is reached through
:class:`RemoteRows`: every access is one actor call whose payload batch
travels as a Ray object (numpy arrays are zero-copy on the reading side).

Both kinds look like a numpy array to the model's steps (indexing with
arrays, slices and ``view``), so the model runs unchanged on either.
"""
from __future__ import annotations

import mmap
import os
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emulator.frames import copy_rows


SHM_DIR_ENV = "NUMAEMU_SHM_DIR"


def shm_dir(path: str = "") -> Path:
    """Where this host's shared files go: ``path`` when given (``--shm-dir``),
    else ``$NUMAEMU_SHM_DIR`` when set, else /dev/shm, else the temporary
    directory. A tmpfs mounted with ``huge=always`` gives the payloads huge
    pages, which /dev/shm does not under its default ``huge=never``: a
    migration's copy is then as fast as one between anonymous arrays."""
    path = path or os.environ.get(SHM_DIR_ENV, "")
    if path:
        return checked_shm_dir(path)
    d = Path("/dev/shm")
    return d if d.is_dir() and os.access(d, os.W_OK) else Path(tempfile.gettempdir())


def checked_shm_dir(path: str) -> Path:
    """``path`` as a directory for shared files, or ValueError saying why not."""
    d = Path(path)
    if not d.is_dir():
        why = "not a directory" if d.exists() else "no such directory"
        raise ValueError(f"shared memory directory {path}: {why}")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ValueError(f"shared memory directory {path}: not writable")
    if shm_fs(d)[0] == "hugetlbfs":     # files there must be whole huge pages, and are never sparse
        raise ValueError(f"shared memory directory {path}: a hugetlbfs mount; use a tmpfs mounted with "
                         "huge=always for huge pages")
    return d


MOUNTINFO = Path("/proc/self/mountinfo")
SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")


def shm_fs(d: Path) -> tuple[str, str]:
    """The file system that holds ``d`` and, for a tmpfs, its huge page
    setting: the mount's ``huge=`` ("never" without one), or the system-wide
    ``deny`` or ``force`` of shmem_enabled, which override every mount.
    ("", "") when it cannot be told. The mount is found by device number, so
    symlinks, bind mounts, mounts hidden by later ones and escaped names in
    the table do not mislead it."""
    try:
        dev = os.stat(d).st_dev
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return "", ""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    for line in lines:
        left, sep, right = line.partition(" - ")
        ours, theirs = left.split(), right.split()
        if not sep or len(ours) < 5 or ours[2] != want or len(theirs) < 3:
            continue
        fstype, opts = theirs[0], theirs[2].split(",")
        if fstype != "tmpfs":
            return fstype, ""
        huge = next((o.split("=", 1)[1] for o in opts if o.startswith("huge=")), "never")
        try:
            system = SHMEM_ENABLED.read_text()
        except OSError:
            system = ""
        return fstype, next((w for w in ("deny", "force") if f"[{w}]" in system), huge)
    return "", ""


def shm_huge(d: Path) -> str:
    """The huge page setting of the tmpfs that holds ``d`` (shm_fs), or "" when it is no tmpfs."""
    return shm_fs(d)[1]


def payload_shape(nframes: int, page_size: int, payload: str) -> tuple[tuple[int, ...], np.dtype]:
    if payload == "token":
        return (nframes,), np.dtype(np.int64)
    return (nframes, page_size), np.dtype(np.uint8)


def create_payload(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zeroed payload array backed by a new shared file (sparse until written)."""
    size = int(np.prod(shape)) * dtype.itemsize
    with open(path, "xb") as fh:
        fh.truncate(max(size, 1))
    return _advise_huge(np.memmap(path, dtype=dtype, mode="r+", shape=shape))


def overcommitted(descs: list[dict[str, Any]]) -> list[str]:
    """A warning per host whose node actors' payload files add up to more than
    its shared memory had free: the files are sparse, so such a run works
    until its workloads have written that much, and then a process touching
    a new page dies of SIGBUS (the run reports the node actor lost)."""
    hosts: dict[str, dict[str, Any]] = {}
    for i, d in enumerate(descs):
        h = hosts.setdefault(d["host"], {"nodes": [], "bytes": 0, "free": d["shm_free"],
                                         "dir": str(Path(d["path"]).parent)})
        h["nodes"].append(i)
        h["bytes"] += d["bytes"]
        h["free"] = min(h["free"], d["shm_free"])
    return [f"host {host[:12]}: the payloads of nodes {', '.join(map(str, h['nodes']))} take "
            f"{h['bytes'] / 2**30:.1f} GiB, with {h['free'] / 2**30:.1f} GiB free in {h['dir']}: "
            "a run that writes more than that loses a node actor (SIGBUS)"
            for host, h in hosts.items() if h["bytes"] > h["free"]]


def attach_payload(path: str | Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return _advise_huge(np.memmap(path, dtype=dtype, mode="r+", shape=tuple(shape)))


def _advise_huge(a: np.memmap) -> np.memmap:
    """Ask for huge pages (MADV_HUGEPAGE): a tmpfs mounted ``huge=advise``
    then gives them, as ``huge=always`` does unasked; ``never`` ignores it."""
    mm = getattr(a, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return a


def unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class RemoteRows:
    """A node actor's payload array on another host, indexed like numpy.

    Reads block on one actor call; writes are sent and waited for, so a later
    read of the same frames sees them (actor calls from threads are not
    otherwise ordered). A node actor that dies (or answers nothing for
    PAYLOAD_TIMEOUT_S) takes its frames' contents with it: from the first
    call that finds it gone, this array (and every view of it) is a local one
    of zeros, so the operation in progress completes on frames whose
    contents are lost instead of failing half done; ``on_lost(node, why)``
    is told once (the coordinator: cluster/coordinator.py)."""

    def __init__(self, handle: Any, shape: tuple[int, ...], dtype: np.dtype, view: np.dtype | None = None,
                 node: int = -1, state: dict[str, Any] | None = None):
        self.handle = handle
        self.node = node
        self.base_shape = tuple(shape)
        self.base_dtype = np.dtype(dtype)
        self.view_dtype = None if view is None else np.dtype(view)
        self.dtype = self.view_dtype or self.base_dtype
        if self.view_dtype is None or len(shape) == 1:
            self.shape = self.base_shape
        else:
            self.shape = (shape[0], shape[1] * self.base_dtype.itemsize // self.view_dtype.itemsize)
        self.ndim = len(self.shape)
        # shared with every view: the local zeros once the node is lost, and who to tell
        self.state = state if state is not None else {"local": None, "on_lost": None, "lock": threading.Lock()}

    def __len__(self) -> int:
        return self.shape[0]

    def view(self, dtype) -> "RemoteRows":
        return RemoteRows(self.handle, self.base_shape, self.base_dtype, dtype, self.node, self.state)

    @property
    def lost(self) -> bool:
        return self.state["local"] is not None

    def _local(self) -> np.ndarray:
        a = self.state["local"]
        return a if self.view_dtype is None else a.view(self.view_dtype)

    def _lose(self, exc: BaseException) -> None:
        with self.state["lock"]:
            if self.state["local"] is not None:
                return
            self.state["local"] = np.zeros(self.base_shape, self.base_dtype)
        if self.state["on_lost"] is not None:
            self.state["on_lost"](self.node, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def _call(self, submit: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, the call's answer), or (False, None) when the node is lost: its
        actor died, answers nothing, stays unavailable (UNAVAILABLE_TRIES
        calls a second apart: a moment's network trouble is not a loss), or
        the answer was lost with its host before it was fetched."""
        import ray
        ex = ray.exceptions
        for attempt in range(UNAVAILABLE_TRIES):
            if self.state["local"] is not None:
                break
            try:
                return True, ray.get(submit(), timeout=PAYLOAD_TIMEOUT_S)
            except ex.ActorUnavailableError as exc:
                if attempt + 1 < UNAVAILABLE_TRIES:
                    time.sleep(1.0)
                    continue
                self._lose(exc)
            except (ex.RayActorError, ex.GetTimeoutError, ex.ObjectLostError) as exc:
                self._lose(exc)
        return False, None

    def __getitem__(self, key):
        ok, rows = self._call(lambda: self.handle.rows_get.remote(key, self.view_dtype))
        return rows if ok else np.array(self._local()[key])

    def __setitem__(self, key, value) -> None:
        ok, _ = self._call(lambda: self.handle.rows_set.remote(key, np.asarray(value), self.view_dtype))
        if not ok:
            self._local()[key] = value

    def __array__(self, dtype=None, copy=None):
        a = self[slice(None)]
        return a if dtype is None else a.astype(dtype)

    def pull(self, src: "RemoteRows", si: np.ndarray, di: np.ndarray) -> None:
        """self[di] = src[si] between two other hosts: the batch goes from one
        node actor to the other, not through the caller. If either is lost,
        through the caller, which then finds which."""
        import ray
        if not (self.lost or src.lost):
            try:
                ray.get(self.handle.rows_pull.remote(src.handle, si, di, src.view_dtype, self.view_dtype),
                        timeout=PAYLOAD_TIMEOUT_S)
                return
            except Exception:   # noqa: BLE001 - src gone (a RayTaskError, also a RayActorError) or this node:
                pass            # the two calls below tell which, each marking its own node lost
        self[di] = src[si]

    def tobytes(self) -> bytes:
        return np.asarray(self).tobytes()

    def copy(self) -> np.ndarray:
        return np.array(np.asarray(self))


PAYLOAD_TIMEOUT_S = 120.0       # a node actor that answers no payload call this long is lost
UNAVAILABLE_TRIES = 3


# A large copy between mapped payloads runs on two threads (numpy's memcpy
# drops the GIL), as the kernel's batched migration may copy folios on
# several CPUs: one core does not saturate the memory bus here.
PARALLEL_MIN_BYTES = 4 << 20
_copiers = ThreadPoolExecutor(1, thread_name_prefix="migrate-copy") if (os.cpu_count() or 1) > 1 else None


def copy_batch(src, si: np.ndarray, dst, di: np.ndarray) -> None:
    """A migration's copy (the data plane), while other operations step:
    one memcpy per run between mapped payloads; between two remote node
    actors, one transfer from one to the other (rather than through the
    coordinator, twice)."""
    if isinstance(src, RemoteRows) and isinstance(dst, RemoteRows):
        if len(si):
            dst.pull(src, si, di)
        return
    copy_rows(src, si, dst, di)


OVERLAP_CHUNK_BYTES = 4 << 20


class CopyInFlight:
    """Migration copies between payloads mapped here, running on a copier
    thread while the operation that asked for them, and those after it,
    take steps that need no contents (cluster/concurrent.py). Split in
    chunks of 4 MiB (few, as the copier needs the GIL between two; 1 MiB
    was slower here): whoever waits copies the chunks not taken yet beside
    the copier, so the copy ends on both cores. Whoever copies its last
    chunk runs what was left for then (``post``): the coordinator lets the
    node actors in again."""

    def __init__(self, copies: list[tuple]):
        self.chunks = []
        for src, si, dst, di in copies:
            rows = max(1, OVERLAP_CHUNK_BYTES // (src.shape[1] * src.itemsize))
            self.chunks += [(src, si[a:a + rows], dst, di[a:a + rows]) for a in range(0, len(si), rows)]
        self.taken = 0
        self.finished = 0
        self.then: Callable[[], None] | None = None
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.helper = _copiers.submit(self._work)

    @staticmethod
    def fits(copies: list[tuple]) -> bool:
        """Large copies between payloads mapped in this process (not RemoteRows)."""
        return _copiers is not None and all(
            isinstance(src, np.ndarray) and isinstance(dst, np.ndarray) and src.ndim == 2
            for src, _si, dst, _di in copies) and \
            sum(len(si) * src.shape[1] * src.itemsize for src, si, _dst, _di in copies) >= PARALLEL_MIN_BYTES

    def _work(self) -> None:
        while True:
            with self.lock:
                i = self.taken
                self.taken += 1
            if i >= len(self.chunks):
                return
            try:
                copy_rows(*self.chunks[i])
            except Exception as exc:    # noqa: BLE001 - the chunks after it still go, so the copy ends
                self.error = self.error or exc
            finally:
                with self.lock:
                    self.finished += 1
                    then = self.then if self.finished == len(self.chunks) else None
                if then is not None:
                    then()

    def done(self) -> bool:
        return self.helper.done()

    def wait(self) -> None:
        """Until the last chunk is copied, copying chunks not taken yet."""
        self._work()
        self.helper.result()

    def failure(self) -> str:
        return ("a migration's copy failed, the contents of the pages it moved are undefined: "
                + "".join(traceback.format_exception(self.error)))

    def post(self, then: Callable[[], None]) -> None:
        """Run ``then`` once the last chunk is copied, on the thread that
        copied it (this one, if that has happened already)."""
        with self.lock:
            now = self.finished == len(self.chunks)
            if not now:
                self.then = then
        if now:
            then()
