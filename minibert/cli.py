"""The ``minibert`` command: one sub-command per job.

    minibert pretrain                  pretrain a small BERT on the built-in corpus
    minibert fill-mask DIR "text"      query a saved model
    minibert tokenize / train-vocab    the WordPiece tokenizer
    minibert embed                     sentence embeddings with a pretrained checkpoint
    minibert finetune                  fine-tune a checkpoint for text classification
    minibert sweep / lr-find           training experiments: knobs swept, the learning-rate range test

Each family of commands lives beside the code it drives (``cli_*.py``) and registers itself
here; this file only builds the parser and turns expected errors into one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# module name -> function that adds its sub-commands to the parser
COMMAND_MODULES = {
    "minibert.cli_tokenizer": "add_tokenizer_commands",
    "minibert.cli_pretrain": "add_pretrain_commands",
    "minibert.cli_embed": "add_embed_commands",
    "minibert.cli_finetune": "add_finetune_commands",
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    from .fast.cpu import keep_freed_memory

    keep_freed_memory()              # each training step reuses the memory of the last one
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
        print(f"minibert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
