"""The ``cachewise`` console command.

Each subcommand lives in the module that does its work; that module exposes
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``.
Modules are imported only when their subcommand runs, so ``cachewise ingest`` never
pays for importing MLflow or vLLM.

Errors: a user error (bad params key or value, a path that cannot be read or written, a
model or registry that cannot be used: ``ValueError``, ``OSError``, the project's own error
types and MLflow's) prints ONE line ``cachewise <command>: error: ...`` on stderr and exits
2; anything else prints one line and exits 1. ``--debug`` (before or after the command)
shows the traceback instead. SIGTERM is turned into ``SystemExit(143)`` so that every
``finally`` runs: staged outputs are removed and an MLflow run ends ``KILLED``. A library
may catch that ``SystemExit`` and raise its own error instead (MLflow wraps exceptions
raised inside its calls); once SIGTERM has arrived (:func:`terminated`), the command still
exits 143. Python drops an exception raised while it runs a weakref callback or ``__del__``
(the signal can land there), and an exception raised half-way through a state change (an
MLflow run being created or ended) leaves that state half-changed. So a command calls
:func:`stop_if_terminated` before it commits (a swallowed SIGTERM stops it there) and wraps
each state change in :func:`sigterm_deferred`: inside, SIGTERM is recorded, not raised (the
change completes: a run exists or has ended, outputs are swapped in), and it is raised at
the exit; a second SIGTERM is raised at once (a step hung on an unreachable store can still be
stopped). A command that returns after a SIGTERM still exits 143.

Repeatable runs: the console command (:func:`entry`: ``cachewise`` and ``python -m cachewise.cli``)
and the wide cross-family table (``python -m cachewise.replay.cross_family``) pin Python's hash seed
(:func:`pin_hash_seed`). The replay's host tier runs vLLM's CPU offloading manager, which iterates
sets of block keys, so its rows depend on the seed (README, "Replay benchmark"). With
``PYTHONHASHSEED`` unset the command re-executes itself once with ``PYTHONHASHSEED=0`` before doing
any work (``os.execv``: same process id, same arguments); a seed the user sets is kept. :func:`main`
(what tests and other Python code call) never re-executes.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("cachewise.data.ingest", "read traces and write the events table"),
    "featurize": ("cachewise.features.featurize", "events table -> feature table with labels"),
    "train": ("cachewise.train.train", "train the LightGBM next-reuse model, log to MLflow"),
    "export": ("cachewise.train.export", "register the model and export it to models/"),
    "score": ("cachewise.train.score", "report a model's prediction quality next to baselines"),
    "replay": ("cachewise.replay.cli", "replay agent sessions through vLLM's scheduler"),
    "agents": ("cachewise.loadgen.cli", "replay agent sessions as real clients of an OpenAI-compatible server"),
}
USER_ERROR, INTERNAL_ERROR, TERMINATED = 2, 1, 128 + signal.SIGTERM
#: Python's hash seed for a command run with none set (module doc, "Repeatable runs").
HASH_SEED = "0"
#: Project error types that are not ValueError/OSError subclasses (matched by name: no imports).
_USER_ERROR_NAMES = frozenset({"IngestError", "ModelLoadError", "MlflowException", "ReplayStuck"})


def is_user_error(exc: BaseException) -> bool:
    """True for errors caused by the input (module doc), as opposed to bugs."""
    return isinstance(exc, (ValueError, OSError)) or any(c.__name__ in _USER_ERROR_NAMES for c in type(exc).__mro__)


_SIGTERM = threading.Event()


def terminated() -> bool:
    """True once this process received SIGTERM while a command ran."""
    return _SIGTERM.is_set()


_DEFERRED = threading.Event()


def stop_if_terminated() -> None:
    """Raise ``SystemExit(143)`` if SIGTERM arrived, even if its first ``SystemExit`` was swallowed."""
    if terminated():
        raise SystemExit(TERMINATED)


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A state change that SIGTERM never interrupts half-way (module doc); not reentrant."""
    _DEFERRED.set()
    try:
        yield
    finally:
        _DEFERRED.clear()
    stop_if_terminated()


def _terminate(signum: int, frame: FrameType | None) -> None:
    again = _SIGTERM.is_set()  # a second SIGTERM stops even a deferred step (one that hangs on a dead store)
    _SIGTERM.set()
    if again or not _DEFERRED.is_set():
        raise SystemExit(TERMINATED)


def main(argv: list[str] | None = None, keep_sigterm_handler: bool = False) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen subcommand (errors: module doc).
    The SIGTERM handler is restored on return unless ``keep_sigterm_handler`` (:func:`entry`)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="cachewise", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        if name == chosen:
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    _SIGTERM.clear()
    _DEFERRED.clear()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        status = int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)
        return TERMINATED if terminated() else status
    except Exception as exc:
        if args.debug:
            raise
        if terminated():
            print(f"cachewise {args.command}: terminated (SIGTERM) during {type(exc).__name__}", file=sys.stderr)
            return TERMINATED
        user = is_user_error(exc)
        kind = "error" if user else f"internal error ({type(exc).__name__}; re-run with --debug for the traceback)"
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"cachewise {args.command}: {kind}: {message}", file=sys.stderr)
        return USER_ERROR if user else INTERNAL_ERROR
    finally:
        if in_main_thread and not keep_sigterm_handler:
            signal.signal(signal.SIGTERM, previous)


def pin_hash_seed() -> None:
    """With ``PYTHONHASHSEED`` unset, re-execute this interpreter's command line with it set to
    :data:`HASH_SEED` (module doc, "Repeatable runs"); a seed already set, ``random`` included, is kept.
    Call it first in a command's ``__main__``, before any work: the process is replaced."""
    if "PYTHONHASHSEED" not in os.environ and sys.executable:
        os.environ["PYTHONHASHSEED"] = HASH_SEED
        os.execv(sys.executable, sys.orig_argv)


def entry() -> None:
    """The console command: pin the hash seed (:func:`pin_hash_seed`), then exit with :func:`main`'s status.

    A SIGTERM that lands after the command finished ends it with 143 or the command's status, never
    killed by the signal (-15), so a caller reads 143 as "stopped" and 0 as "done" (tests/test_faults_pipeline.py's
    export case saw -15 in CI twice). Two windows: up to the ``atexit`` callbacks :func:`main`'s handler
    stays installed; after them Python puts the default action back, before the garbage collection and
    module teardown (which take a while after MLflow and pandas), so the last ``atexit`` callback
    (registered first) sets SIGTERM to be ignored, process-wide (a mask would cover only the main thread,
    and the kernel may deliver the signal to another; Python leaves an ignored signal ignored)."""
    pin_hash_seed()
    atexit.register(signal.signal, signal.SIGTERM, signal.SIG_IGN)
    sys.exit(main(keep_sigterm_handler=True))


if __name__ == "__main__":
    # `python -m cachewise.cli` runs this file as `__main__`, a second copy of the module; the
    # subcommands import `cachewise.cli`, so its entry, main (and SIGTERM state) are the ones that run.
    from cachewise.cli import entry as _entry

    _entry()
