"""Small shared utilities: user errors, atomic file writes, safe array files, logging, timers."""
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np


class UserError(Exception):
    """Bad input from the user (missing file, wrong flag, corrupt data).

    The driver prints the message as one line and exits with status 2; no traceback.
    A bug is any other exception and keeps its traceback.
    """


def str2bool(v):
    """argparse type of the True/False flags: true/1/yes, false/0/no (any case), or a bool."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    import argparse
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def one_line(err):
    """The message of a UserError as one line.

    A DataLoader worker re-raises it in the main process with the worker's whole traceback as the
    message ("Caught UserError in DataLoader worker process 0. Original Traceback ..."), whose last
    line holds the original message.
    """
    lines = [line for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split("UserError: ", 1)[-1].strip()
    return " ".join(line.strip() for line in lines)


def require_file(path, what, hint=""):
    """Raise UserError unless `path` is an existing file."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}" + (f"; {hint}" if hint else ""))


def require_dir(path, what, hint=""):
    if not os.path.isdir(path):
        raise UserError(f"{what} not found: {path}" + (f"; {hint}" if hint else ""))


def free_bytes(path):
    """Bytes an unprivileged write may still take on the file system that holds `path` (or, for a path not
    made yet, its nearest existing parent folder)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def format_bytes(n):
    for unit, size in (("GB", 2 ** 30), ("MB", 2 ** 20), ("kB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# torch.save to a file name fails in C++ with a RuntimeError that has lost the errno; a write that failed with
# less than this left on the disk is taken for a full disk
NEARLY_FULL = 2 ** 20
RERUN = ("then rerun the same command (per-image steps go on with the images not done yet; a training goes on "
         "from its last checkpoint with --resume)")


def disk_full_cause(err):
    """The OSError of a full disk or an exceeded quota that `err` is or was raised from, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class DiskFullError(UserError):
    """The UserError of a write that found no space left (disk_full_error). Its folder and whether a quota was
    exceeded are attributes, which travel in __dict__ when a worker process pickles the error, so the driver can
    say it again with the estimate of what the step still needed (as_disk_full)."""
    directory = None  # an error rebuilt from its message alone (a DataLoader worker's) has none
    quota = False


def disk_full_error(directory, err=None, need=None, quota=None):
    """The DiskFullError of a write into `directory` that found no space left (or the quota used up): one line
    with the folder, the space left there, `need` (what the step still needed, by estimate) and what to do."""
    quota = err is not None and err.errno == errno.EDQUOT if quota is None else quota
    try:
        free = f"{format_bytes(free_bytes(directory))} free there"
    except OSError:
        free = "free space unknown"
    what, fix = (("disk quota exceeded", "free space or raise the quota") if quota else
                 ("no space left on the disk", "free space on that disk"))
    e = DiskFullError(f"{what} while writing into {directory} ({free}{f'; {need}' if need else ''}): {fix}, {RERUN}")
    e.directory, e.quota = directory, quota
    return e


def as_disk_full(err, need=lambda: None, directory="."):
    """The DiskFullError for `err` if a full disk (or quota) caused it, else None: `err` itself made anew with
    need() (a DiskFullError of atomic_path), or the one line for an ENOSPC / EDQUOT OSError that a write outside
    atomic_path raised (its file's folder; else `directory`, or the current one)."""
    if isinstance(err, DiskFullError):
        return disk_full_error(err.directory, need=need(), quota=err.quota) if err.directory else err
    cause = disk_full_cause(err)
    if cause is None:
        return None
    if cause.filename:
        directory = os.path.dirname(os.path.abspath(os.fsdecode(cause.filename)))
    return disk_full_error(directory or ".", cause, need=need())


def require_free_space(path, need_bytes, what):
    """UserError unless the disk of `path` (a folder or file, made yet or not) has need_bytes free: for a check
    before a step that writes that much."""
    free = free_bytes(path)
    if free < need_bytes:
        raise UserError(f"{what} needs about {format_bytes(need_bytes)} in {path}, {format_bytes(free)} free "
                        f"there: free space on that disk (or write elsewhere), {RERUN}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    An interrupted write never leaves a half file under the final name, nor a temporary one. A write that
    fails for want of space (ENOSPC, EDQUOT, or a writer's error with the disk all but full) becomes a
    UserError naming the folder, the space left and what to do.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        base, ext = os.path.splitext(os.path.basename(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
        os.close(fd)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full_error(directory, e) from e
        raise
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        cause = disk_full_cause(e)
        full = cause is not None
        if not full and isinstance(e, (RuntimeError, OSError)):
            with contextlib.suppress(OSError):
                full = free_bytes(directory) < NEARLY_FULL  # measured before the temporary file goes
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if full:
            raise disk_full_error(directory, cause) from e
        raise


# Names of what atomic_path (and cda.pool's temporary folders) leave behind when the process is killed:
# ".<name>.<8 random characters>.tmp[.<ext>]".
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def remove_temp_files(*roots, recursive=True):
    """Delete the temporaries an interrupted run left in the folders `roots`; return how many.

    Only names made by atomic_path / cda.pool match TEMP_NAME, so nothing else is touched. Call it before
    any step runs: a temporary is never trusted, it is only garbage.
    """
    removed = 0
    for root in roots:
        for parent, dirs, files in os.walk(root):
            for name in [d for d in dirs if TEMP_NAME.match(d)]:
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                dirs.remove(name)
                removed += 1
            for name in files:
                if TEMP_NAME.match(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(parent, name))
                    removed += 1
            if not recursive:
                break
    return removed


def save_bytes(path, data, unless_same=False):
    """Write bytes atomically; with unless_same, leave a file that already holds them untouched (no new mtime)."""
    if unless_same and os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def save_lines(path, lines, unless_same=False):
    """Write one string per line ("\n" after each), atomically."""
    save_bytes(path, "".join(line + "\n" for line in lines).encode(), unless_same)


def save_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def load_json(path, default=None):
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def save_npz(path, **arrays):
    """Save arrays as an uncompressed .npz (no pickle), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def save_torch(path, obj):
    """torch.save(obj), atomically. Through a Python file object: torch's own file writer reports a full disk as
    a RuntimeError without its errno."""
    import torch
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def load_npz(path, keys=()):
    """Load a .npz written by save_npz, without pickle; check that `keys` are present."""
    require_file(path, "array file")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except Exception as e:  # zip or header corruption
        raise UserError(f"cannot read {path} ({e.__class__.__name__}: {e}); delete it and rerun the step that wrote it")
    missing = [k for k in keys if k not in out]
    if missing:
        raise UserError(f"{path} lacks {missing}; it was written by another program: delete it and rerun the step")
    return out


LOGGER_NAME = "cda"


def get_logger():
    return logging.getLogger(LOGGER_NAME)


def setup_logging(log_file=None, level=logging.INFO):
    """Log to stdout and (if given) to `log_file`, appending. Safe to call more than once."""
    logger = get_logger()
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(message)s")
    sh = logging.StreamHandler(sys.stdout)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(fh)
    return logger


def log(msg):
    get_logger().info(msg)


class Timer:
    """Wall-clock timer: `with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def is_fresh(out_path, *deps):
    """True if `out_path` exists and is at least as new as every dependency that exists.

    Outputs are written atomically, so an existing file is complete; an output older than the weights or
    inputs it came from is stale and gets redone. This is what makes per-image steps resumable.
    """
    if not os.path.isfile(out_path):
        return False
    t = os.path.getmtime(out_path)
    return all(t >= os.path.getmtime(d) for d in deps if d and os.path.exists(d))


def require_range(args, names, at_least=None, positive=False, unit=False):
    """UserError for the first flag of `names` (a number or a list of numbers) out of its range: below
    at_least, not positive, or outside [0, 1]."""
    for name in names:
        v = getattr(args, name)
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if at_least == 0 and min(values) < 0:
            raise UserError(f"--{name} must not be negative, got {v}")
        if at_least and min(values) < at_least:
            raise UserError(f"--{name} must be at least {at_least}, got {v}")
        if positive and (not values or min(values) <= 0):
            raise UserError(f"--{name} must be positive, got {v}")
        if unit and not all(0 <= x <= 1 for x in values):
            raise UserError(f"--{name} must be within [0, 1], got {v}")


def require_ordered(args, names):
    """UserError for the first MIN MAX flag of `names` whose MIN exceeds its MAX."""
    for name in names:
        lo, hi = getattr(args, name)
        if lo > hi:
            raise UserError(f"--{name} MIN MAX: MIN must not exceed MAX, got {lo} {hi}")
