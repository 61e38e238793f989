"""Small shared utilities: user errors, atomic file writes, safe array files, logging, timers."""
import contextlib
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


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    An interrupted write never leaves a half file under the final name.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
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
