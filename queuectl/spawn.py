"""Starting a job's process: glibc's posix_spawn where there is one, subprocess elsewhere.

subprocess.Popen spends about 100 µs of Python per start (the environment encoded
anew, an error pipe read back) on top of the vfork and exec, and Python 3.11's
os.posix_spawn cannot change directory, which nearly every job does (inline jobs run
where `enqueue` ran). glibc's posix_spawn can (posix_spawn_file_actions_addchdir_np,
glibc 2.29), so it is called through ctypes: the same vfork and exec, a new session
for the job's process group, stdin from /dev/null, stdout and stderr into the log, every
other descriptor closed, an empty signal mask and every signal at its default, as
Popen(start_new_session=True, restore_signals=True) gives for the two that Python ignores
(SIGPIPE, SIGXFSZ); a signal the worker itself inherited ignored is not passed on either.

The worker's one other glibc setting lives here too: keep_freed_heap.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from .procs import Spawned

POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
OPAQUE_BYTES = 1024  # larger than glibc's posix_spawnattr_t (336) and file actions (80)
SIGSET_BYTES = 128
# Every signal a process can set (glibc's own two, 32 and 33, included: its posix_spawn
# leaves them ignored in the child, and an ignored signal stays ignored across exec). Its
# child resets each named signal with one call; any other it first asks about, then
# resets if the worker handles it: naming all of them halves those ~128 calls a start.
DEFAULT_SIGNALS = tuple(
    sig for sig in range(1, signal.SIGRTMAX + 1) if sig not in (signal.SIGKILL, signal.SIGSTOP)
)
M_TRIM_THRESHOLD = -1  # mallopt's parameter number
HEAP_KEPT_BYTES = 16 * 1024 * 1024
FILE_ACTIONS_KEPT = 64
ARGV_KEPT = 64  # short commands whose argv stays encoded
KEPT_MAX_CHARS = 4096  # longer commands (and job envs) are encoded anew each time, not kept


class Glibc:
    """The posix_spawn functions of glibc, or AttributeError/OSError where they are missing."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.spawn = libc.posix_spawn
        self.mallopt = libc.mallopt
        self.fa_init = libc.posix_spawn_file_actions_init
        self.fa_destroy = libc.posix_spawn_file_actions_destroy
        self.fa_dup2 = libc.posix_spawn_file_actions_adddup2
        self.fa_chdir = libc.posix_spawn_file_actions_addchdir_np
        self.fa_closefrom = libc.posix_spawn_file_actions_addclosefrom_np
        self.spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        self.fa_chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        empty = ctypes.create_string_buffer(SIGSET_BYTES)  # all zero: the empty set
        # Bits set by hand: glibc's sigaddset refuses its internal signals. A sigset_t is
        # an array of unsigned longs, signal n at bit n - 1 (the byte order of x86 and ARM).
        bits = bytearray(SIGSET_BYTES)
        for sig in DEFAULT_SIGNALS:
            bits[(sig - 1) // 8] |= 1 << (sig - 1) % 8
        defaults = ctypes.create_string_buffer(bytes(bits), SIGSET_BYTES)
        # The same attributes serve every job: set once, only ever read by posix_spawn.
        self.attr = ctypes.create_string_buffer(OPAQUE_BYTES)
        libc.posix_spawnattr_init(self.attr)
        libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
        libc.posix_spawnattr_setflags(
            self.attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        )
        libc.posix_spawnattr_setsigmask(self.attr, empty)
        libc.posix_spawnattr_setsigdefault(self.attr, defaults)
        self.lock = threading.Lock()
        self._file_actions: dict[tuple[int, int, str | None], ctypes.Array[ctypes.c_char]] = {}

    def file_actions(self, stdin: int, output: int, cwd: str | None) -> ctypes.Array[ctypes.c_char]:
        """stdin and the output on 0, 1 and 2, `cwd`, every other descriptor closed. Built
        once per (descriptors, directory): a worker's log descriptor is usually the same
        number each time, and its jobs usually run in a few directories."""
        key = (stdin, output, cwd)
        actions = self._file_actions.get(key)
        if actions is not None:
            return actions
        if len(self._file_actions) >= FILE_ACTIONS_KEPT:
            for old in self._file_actions.values():
                self.fa_destroy(old)
            self._file_actions.clear()
        actions = ctypes.create_string_buffer(OPAQUE_BYTES)
        self.fa_init(actions)
        for fd, target in ((stdin, 0), (output, 1), (output, 2)):
            self.fa_dup2(actions, fd, target)
        if cwd is not None:
            self.fa_chdir(actions, os.fsencode(cwd))
        self.fa_closefrom(actions, 3)
        self._file_actions[key] = actions
        return actions


def _load() -> Glibc | None:
    try:
        return Glibc()
    except (OSError, AttributeError):  # not glibc, or older than 2.34: Popen serves
        return None


GLIBC = _load()


def keep_freed_heap(libc: Glibc | None = GLIBC) -> None:
    """Let this process keep up to HEAP_KEPT_BYTES of freed heap. A worker's transaction
    frees about 170 KB at its end and takes it back in the next; by default glibc returns
    it to the kernel each time, and the page faults of taking it back cost ~10% of a
    worker's CPU on short jobs."""
    if libc is not None:
        libc.mallopt(M_TRIM_THRESHOLD, HEAP_KEPT_BYTES)


class Environ:
    """A job's environment, encoded for execve once and reused: the worker's environment
    with the job's own `env` stays fixed, and each attempt sets only the `varying` names
    (its job id, attempt number). Encoding some 40 entries anew cost ~40 µs per start."""

    def __init__(self, fixed: Mapping[str, str], varying: Sequence[str] = ()) -> None:
        self.fixed = {name: value for name, value in fixed.items() if name not in varying}
        self.varying = tuple(varying)
        entries = [os.fsencode(f"{name}={value}") for name, value in self.fixed.items()]
        self._first_varying = len(entries)
        # The varying slots and the terminating NULL start as None (NULL).
        self.envp = (ctypes.c_char_p * (len(entries) + len(self.varying) + 1))(*entries)
        self._values: tuple[str, ...] = ()

    def set(self, values: Sequence[str]) -> None:
        """The varying names' values for the next start, in the order of `varying`."""
        self._values = tuple(values)
        for slot, (name, value) in enumerate(zip(self.varying, self._values, strict=True)):
            self.envp[self._first_varying + slot] = os.fsencode(f"{name}={value}")

    def as_dict(self) -> dict[str, str]:
        return {**self.fixed, **dict(zip(self.varying, self._values, strict=True))}


def spawn(
    args: Sequence[str],
    env: Environ,
    cwd: str | None,
    stdin: int,
    output: int,
    *,
    libc: Glibc | None = GLIBC,
) -> Spawned | subprocess.Popen[bytes]:
    """Start `args` in a session of its own. OSError as Popen raises it: the filename is
    `cwd` when the directory is what failed, else the command. `libc` None: by Popen."""
    if libc is None:
        return subprocess.Popen(  # noqa: S603 - running the job's command is the point
            args,
            stdin=stdin,
            stdout=output,
            stderr=output,
            cwd=cwd,
            env=env.as_dict(),
            start_new_session=True,  # its own group: timeouts kill it all
        )
    with libc.lock:  # the file actions it reuses are the glibc object's
        return Spawned(_posix_spawn(libc, args, env, cwd, stdin, output))


def _posix_spawn(
    libc: Glibc, args: Sequence[str], env: Environ, cwd: str | None, stdin: int, output: int
) -> int:
    program = _program(args[0], env.fixed, cwd)
    pid = ctypes.c_int()
    err = libc.spawn(
        ctypes.byref(pid),
        os.fsencode(program),
        libc.file_actions(stdin, output, cwd),
        libc.attr,
        _argv(tuple(args)) if sum(map(len, args)) <= KEPT_MAX_CHARS else _encode_argv(args),
        env.envp,
    )
    if err:
        # One errno for a failed chdir and a failed exec: look at the directory to tell.
        unusable_cwd = cwd is not None and not (os.path.isdir(cwd) and os.access(cwd, os.X_OK))
        raise OSError(err, os.strerror(err), cwd if unusable_cwd else args[0])
    return pid.value


@functools.lru_cache(maxsize=ARGV_KEPT)
def _argv(args: tuple[str, ...]) -> ctypes.Array[ctypes.c_char_p]:
    """argv of a short command, built once: a worker runs the same few often."""
    return _encode_argv(args)


def _encode_argv(args: Sequence[str]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(args) + 1))(*[os.fsencode(arg) for arg in args])


def _program(name: str, env: Mapping[str, str], cwd: str | None) -> str:
    """The file to execute: `name` itself if it has a slash (relative to `cwd`, as exec
    in the child sees it), else found on the job's own PATH, as Popen looks it up."""
    if os.sep in name:
        return name
    path = os.pathsep.join(os.get_exec_path(env))
    found = shutil.which(name, path=path)
    if found is not None:
        return found
    if any(os.path.exists(os.path.join(d, name)) for d in os.get_exec_path(env)):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
