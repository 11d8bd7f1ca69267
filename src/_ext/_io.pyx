# cython: language_level=3
"""A helper thread that writes one buffer at a time to a file, and never takes the GIL.

:class:`fastims._staging.StagingFile` hands full staged runs to it from inside h5py's file
driver callbacks, where the HDF5 writer thread holds h5py's global lock. Anything that thread
waits for there must never need that lock itself -- and any Python code may: the garbage
collector runs in whichever thread allocates, and freeing an h5py object found in a reference
cycle (any library's) takes h5py's lock. A Python helper thread, or ``ThreadPoolExecutor.submit``
(a process-wide lock another thread may hold while it collects garbage), deadlocked the writer
that way. This thread's loop runs without the GIL from start to end: it waits on a raw
``PyThread`` lock, calls ``pwrite`` and signals another, so a waiter holding h5py's lock always
gets its answer.

Not a numerical kernel: there is no NumPy twin; without this module (or off POSIX) staged runs
are written synchronously by the caller.
"""

import os
import threading

from cpython.pythread cimport (
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
    NOWAIT_LOCK,
    WAIT_LOCK,
)
from libc.stdint cimport uint8_t

cdef extern from *:
    """
    #ifdef _WIN32
    static Py_ssize_t fastims_pwrite_all(int fd, const char *buf, size_t n, long long off) {
        (void)fd; (void)buf; (void)n; (void)off;
        return -38;  /* ENOSYS: the staging file writes synchronously there */
    }
    #else
    #include <errno.h>
    #include <unistd.h>
    static Py_ssize_t fastims_pwrite_all(int fd, const char *buf, size_t n, long long off) {
        size_t done = 0;
        while (done < n) {
            ssize_t got = pwrite(fd, buf + done, n - done, (off_t)(off + (long long)done));
            if (got < 0) {
                if (errno == EINTR) continue;
                return -(Py_ssize_t)errno;
            }
            if (got == 0) return -EIO;
            done += (size_t)got;
        }
        return (Py_ssize_t)done;
    }
    #endif
    """
    Py_ssize_t fastims_pwrite_all(int fd, const char* buf, size_t n, long long off) nogil


cdef class RunWriter:
    """Write buffers handed over one at a time to `fd` from a helper thread that never takes the GIL.

    Parameters
    ----------
    fd : int
        Open descriptor (e.g. an ``O_DIRECT`` one); not closed here.
    name : str, optional
        Name of the helper thread.

    Notes
    -----
    The constructor returns once the helper runs without the GIL: create it outside HDF5
    callbacks (it starts a Python thread). One run in flight at a time: :meth:`submit`, then
    :meth:`wait` (which releases the GIL while it waits) before the next :meth:`submit`;
    :attr:`finished` asks without waiting. :meth:`close` stops the thread.
    """

    cdef PyThread_type_lock _job   # released by submit/close: one job (or stop) posted
    cdef PyThread_type_lock _done  # released by the helper: the job finished
    cdef int _fd
    cdef const uint8_t* _buf
    cdef size_t _len
    cdef long long _off
    cdef Py_ssize_t _result  # bytes written, or -errno
    cdef bint _stop
    cdef bint _busy
    cdef bint _finished  # the helper's signal for the run in flight was already taken by finished
    cdef bint _closed
    cdef object _owner   # the buffer in flight, kept alive until wait()
    cdef object _thread

    def __cinit__(self):
        self._job = PyThread_allocate_lock()
        self._done = PyThread_allocate_lock()
        if self._job == NULL or self._done == NULL:
            raise MemoryError("RunWriter: could not allocate its locks")
        # both start taken: each release posts one event to the other side
        PyThread_acquire_lock(self._job, WAIT_LOCK)
        PyThread_acquire_lock(self._done, WAIT_LOCK)

    def __init__(self, int fd, str name="fastims-staging"):
        self._fd = fd
        # the thread's target keeps this object alive while the loop runs
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        # wait until the helper runs without the GIL: until then it runs Python code, whose
        # garbage collection may free an h5py object and so wait for h5py's lock -- which a
        # caller inside an HDF5 callback holds while it waits for this thread (a deadlock)
        with nogil:
            PyThread_acquire_lock(self._done, WAIT_LOCK)

    def __dealloc__(self):
        # only reached once the loop has returned (see __init__), so nobody waits on these
        if self._job != NULL:
            PyThread_free_lock(self._job)
        if self._done != NULL:
            PyThread_free_lock(self._done)

    def _loop(self):
        with nogil:
            self._run()

    cdef void _run(self) noexcept nogil:
        PyThread_release_lock(self._done)  # started (see __init__)
        while True:
            PyThread_acquire_lock(self._job, WAIT_LOCK)
            if self._stop:
                PyThread_release_lock(self._done)
                return
            self._result = fastims_pwrite_all(self._fd, <const char*>self._buf, self._len, self._off)
            PyThread_release_lock(self._done)

    @property
    def busy(self) -> bool:
        """True while a submitted buffer has not been waited for."""
        return self._busy

    @property
    def finished(self) -> bool:
        """True when the run in flight has been written (or failed): :meth:`wait` will not block.

        False while it is being written, and when nothing is in flight. Never blocks.
        """
        if not self._busy:
            return False
        if not self._finished and PyThread_acquire_lock(self._done, NOWAIT_LOCK):
            self._finished = True
        return self._finished

    def submit(self, const uint8_t[::1] buffer, long long offset) -> None:
        """Start writing `buffer` (C-contiguous uint8) at `offset`; returns at once.

        The buffer must stay unchanged until :meth:`wait` returns.
        """
        if self._closed:
            raise RuntimeError("RunWriter is closed")
        if self._busy:
            raise RuntimeError("a run is in flight: wait() for it first")
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        self._owner = buffer
        self._len = buffer.shape[0]
        self._buf = &buffer[0] if self._len else NULL
        self._off = offset
        self._busy = True
        PyThread_release_lock(self._job)

    def wait(self) -> int:
        """Wait (GIL released) for the run in flight; its byte count (0 if none).

        Raises
        ------
        OSError
            With the ``pwrite`` errno (EINVAL when the disk refuses the alignment of a direct
            write, ENOSPC, ...). The run is then finished with nothing more written by it.
        """
        if not self._busy:
            return 0
        if not self._finished:
            with nogil:
                PyThread_acquire_lock(self._done, WAIT_LOCK)
        self._finished = False
        self._busy = False
        self._owner = None
        if self._result < 0:
            raise OSError(-self._result, os.strerror(-self._result))
        return self._result

    def close(self) -> None:
        """Wait for the run in flight (its error is raised), then stop the thread."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._stop = True
            PyThread_release_lock(self._job)
            with nogil:
                PyThread_acquire_lock(self._done, WAIT_LOCK)
            self._thread.join()
