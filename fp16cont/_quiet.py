"""Quiet start for the command line: no TensorFlow C++ startup log unless ``--verbose``.

Imported first by ``fp16cont/__init__.py``. It acts only when this process is
the ``fp16cont`` command (``python -m fp16cont ...`` or the ``fp16cont``
script) and ``--verbose`` is not among its arguments: it sets
``TF_CPP_MIN_LOG_LEVEL=3`` (unless already set) and imports Keras and its
backend with the process's stderr pointed at ``/dev/null``, which hides the
lines TensorFlow writes before its logger starts (``cudart_stub``,
``cpu_feature_guard``, the ``cuInit`` error of a machine without a GPU).
Python exceptions are unaffected: stderr is restored before any is printed.
A library import (``import fp16cont``) changes nothing.

Example:
    >>> is_quiet_command(["python", "-m", "fp16cont", "demo"])
    True
    >>> is_quiet_command(["python", "-m", "fp16cont", "demo", "--verbose"])
    False
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["is_quiet_command", "quiet_backend_import"]


def is_quiet_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (the interpreter's, ``sys.orig_argv``) runs the fp16cont command without ``--verbose``."""
    args = list(argv)
    command = any(a == "-m" and i + 1 < len(args) and args[i + 1] == "fp16cont" for i, a in enumerate(args))
    script = bool(args) and os.path.basename(sys.argv[0] if sys.argv else "") == "fp16cont"
    verbose = any(a == "--verbose" or a.startswith("--verbose=") for a in args)
    return (command or script) and not verbose


def quiet_backend_import() -> None:
    """Import Keras and its backend with C++ logging off and fd 2 silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        sys.stderr.flush()
        os.dup2(null, 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices()  # the CUDA probe logs here
        except Exception:  # noqa: BLE001 - the real import below reports it, with stderr back
            pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


if is_quiet_command(getattr(sys, "orig_argv", sys.argv)):
    quiet_backend_import()
