"""The ``minibert`` command: one sub-command per job.

    minibert pretrain                  pretrain a small BERT on the built-in corpus
    minibert fill-mask DIR "text"      query a saved model
    minibert tokenize / train-vocab    the WordPiece tokenizer
    minibert embed                     sentence embeddings with a pretrained checkpoint
    minibert finetune                  fine-tune a checkpoint for text classification
    minibert distill                   distil a trained BERT into a smaller student
    minibert sweep / lr-find           training experiments: knobs swept, the learning-rate range test

Each family of commands lives beside the code it drives (``cli_*.py``) and registers itself
here; this file only builds the parser and turns expected errors into one clear line.

Under ``mpiexec`` every rank runs the command. An error on a rank prints its line with the
rank's number; when every rank fails at the same point (a bad option, ranks started
differently, a diverged run) they all exit normally, otherwise the job is aborted so that no
rank is left waiting for the failed one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings

# module name -> function that adds its sub-commands to the parser
COMMAND_MODULES = {
    "minibert.cli_tokenizer": "add_tokenizer_commands",
    "minibert.cli_pretrain": "add_pretrain_commands",
    "minibert.cli_embed": "add_embed_commands",
    "minibert.cli_finetune": "add_finetune_commands",
    "minibert.cli_distill": "add_distill_commands",
    "minibert.cli_sweep": "add_sweep_commands",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minibert", description="BERT from scratch on NumPy.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    parser.set_defaults(commands=subparsers.choices)
    for module_name, function_name in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:             # a real missing dependency: say so
                raise
            continue
        getattr(module, function_name)(subparsers)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the command line, allowing options between positionals
    (``minibert fill-mask DIR --top-k 3 "the [MASK]"``), as most commands do."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:                       # parse the sub-command's own arguments again, intermixed
        command = args.command
        args = args.commands[command].parse_intermixed_args(argv[argv.index(command) + 1:])
        args.command = command
    args.command_line = argv         # to show the command that continues an interrupted run
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning as one plain line (no source file and line of the library)."""
    print(f"warning: {message}", file=file or sys.stderr)


# seconds the ranks of an MPI job wait for one another after an error before aborting the job
ERROR_HANDSHAKE_SECONDS = 10.0


def _stop_every_rank(code: int) -> int:
    """After an error under MPI: exit with ``code`` if every rank failed at the same point,
    else abort the job (a rank waiting in a collective would otherwise wait for ever)."""
    from .distributed import made_world

    sys.stdout.flush()
    sys.stderr.flush()
    comm = made_world()
    if comm is None or comm.size == 1 or comm.all_stopped_together(ERROR_HANDSHAKE_SECONDS):
        return code
    comm.abort(code)
    return code


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    from .distributed import launched_by_mpi, rank_label, world
    from .fast.cpu import keep_freed_memory

    keep_freed_memory()              # each training step reuses the memory of the last one
    try:
        if launched_by_mpi():
            world()                  # join the MPI job (a clear error without mpi4py)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"minibert {args.command}: error{rank_label()}: {exc}\n")     # one write: one line
        return _stop_every_rank(2)
    except Exception:                # a bug: its traceback, and no rank left waiting
        if launched_by_mpi():
            traceback.print_exc()
            print(f"minibert {args.command}: unexpected error{rank_label()} (traceback above)", file=sys.stderr)
            return _stop_every_rank(1)
        raise
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
