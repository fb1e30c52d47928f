"""The ``minibert`` command: one sub-command per job.

    minibert pretrain                  pretrain a small BERT on the built-in corpus
    minibert fill-mask DIR "text"      query a saved model
    minibert tokenize / train-vocab    the WordPiece tokenizer
    minibert embed                     sentence embeddings with a pretrained checkpoint
    minibert finetune                  fine-tune a checkpoint for text classification

Each family of commands lives beside the code it drives (``cli_*.py``) and registers itself
here; this file only builds the parser and turns expected errors into one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module name -> function that adds its sub-commands to the parser
COMMAND_MODULES = {
    "minibert.cli_tokenizer": "add_tokenizer_commands",
    "minibert.cli_pretrain": "add_pretrain_commands",
    "minibert.cli_embed": "add_embed_commands",
    "minibert.cli_finetune": "add_finetune_commands",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minibert", description="BERT from scratch on NumPy.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name, function_name in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:             # a real missing dependency: say so
                raise
            continue
        getattr(module, function_name)(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .fast.cpu import keep_freed_memory

    keep_freed_memory()              # each training step reuses the memory of the last one
    try:
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
