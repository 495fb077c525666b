"""``ppl-vae``: a thin command-line layer over the Python API.

One module per group of commands, each with ``register(subparsers) -> {name: handler}``; argparse
definitions import nothing heavy, so ``ppl-vae --help``, ``ppl-vae CMD --help`` and ``ppl-vae list``
start in a fraction of a second, and torch, Pyro and ArviZ are imported only by the handler that runs.

The contract with the user: exit 0 with a result, or exit 2 with one line on standard error that names
the problem and the fix (bad flags, bad files, refused outputs, OS errors such as a full disk or a
missing permission); ``--debug`` shows the traceback instead. Anything else is a bug in ppl_vae and says
so in one line (exit 1). SIGINT/SIGTERM during training exit 130/143 after saving a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ppl_vae.errors import PplVaeError, TrainingInterrupted

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
EXIT_SIGTERM = 143  # 128 + SIGTERM

#: Modules that contribute subcommands through ``register(subparsers) -> {name: handler}``.
COMMAND_MODULES = (
    "ppl_vae.cli.run_commands",
    "ppl_vae.cli.latent",
    "ppl_vae.cli.compare_ae",
    "ppl_vae.cli.grad_variance",
    "ppl_vae.cli.diagnose",
    "ppl_vae.cli.compare",
)


class UsageError(PplVaeError):
    """A flag argparse refused."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused flag is one line (no usage block) and raises instead of exiting, so that
    ``main`` decides the exit code."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and the handler of every subcommand."""
    from ppl_vae.validation import Bound, arg, max_threads

    parser = _Parser(prog="ppl-vae", description="The VAE as a Pyro model and guide.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    handlers: dict = {}
    for name in COMMAND_MODULES:
        handlers.update(importlib.import_module(name).register(sub))
    for command in sub.choices.values():
        command.add_argument(
            "--threads",
            type=arg("threads", Bound(int, 1, max_threads())),
            help="torch intra-op threads (default: auto = 1, more only for large models on idle "
            "cores; measured, see ppl_vae.threads)",
        )
        command.add_argument(
            "--max-memory",
            metavar="SIZE",
            help="largest allocation any input may ask for, e.g. 8G (default: a quarter of this "
            "machine's memory; also PPL_VAE_MAX_MEMORY)",
        )
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
        )
    return parser, handlers


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(text).split())


def _os_error_message(error: OSError) -> str:
    reason = error.strerror or type(error).__name__
    where = f": {error.filename}" if error.filename else ""
    hints = {
        28: "free disk space or write elsewhere",
        13: "check the permissions or choose another path",
        30: "the file system is read-only; write elsewhere",
        2: "check the path",
        21: "a folder is in the way; choose another path",
        20: "a file is in the way of a folder; choose another path",
        36: "use a shorter path",
        122: "the disk quota is exceeded; free space",
    }
    hint = hints.get(error.errno, "check the path and the machine")
    return one_line(f"{reason}{where} ({hint})")


def main(argv: list[str] | None = None) -> int:
    """Run ``ppl-vae`` with ``argv`` (default: the process's arguments) and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    command = next((a for a in argv if not a.startswith("-")), "")
    prefix = f"ppl-vae {command}".strip()
    try:
        return _run(argv)
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    except BrokenPipeError:  # `ppl-vae list | head -1`: the reader left; nothing to report
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place every error becomes one line
        if debug:
            raise
        if isinstance(error, TrainingInterrupted):
            print(f"{prefix}: {one_line(error)}", file=sys.stderr)
            return EXIT_SIGTERM if error.signal_name == "SIGTERM" else EXIT_INTERRUPTED
        if isinstance(error, PplVaeError):
            print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(error, OSError):
            print(f"{prefix}: error: {_os_error_message(error)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(error, MemoryError):
            print(
                f"{prefix}: error: out of memory; use fewer examples, particles or samples per step, or a "
                "smaller model",
                file=sys.stderr,
            )
            return EXIT_USAGE
        print(
            f"{prefix}: internal error (a bug in ppl_vae; please report it with the output of --debug): "
            f"{type(error).__name__}: {one_line(error)[:300]}",
            file=sys.stderr,
        )
        return EXIT_BUG


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _run(argv: list[str]) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.max_memory is not None:
        from ppl_vae.limits import set_memory_limit

        set_memory_limit(args.max_memory)  # remembered as the flag's, so that refusals name it
    if args.command != "list":
        from ppl_vae import threads

        threads.apply(args.threads)
    handlers[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
