"""``minibert sweep`` and ``minibert lr-find``: the training experiments.

    minibert sweep --lr 3e-4,1e-3,3e-3 --steps 300          # one knob around the default job
    minibert sweep --lr 1e-4,1e-3 --batch-size 16,32 --grid  # every combination
    minibert lr-find --steps 200                             # the learning-rate range test
    minibert sweep --job finetune --task bbc-news --model runs/pretrain/best_model \
        --lr 3e-5,1e-4,3e-4 --epochs 1                       # fine-tuning runs instead

Both take every ``minibert pretrain`` option as the baseline (see ``minibert.sweep``); with
``--job finetune`` the baseline is a ``minibert finetune --task`` command and its options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .cli import HelpFormatter
from .cli_pretrain import add_pretrain_options

PER_RUN_OPTIONS = ("name", "output_root", "resume", "no_progress")     # set by the sweep for each run
# the options of minibert finetune that minibert pretrain lacks, accepted by the sweep for --job finetune
FINETUNE_PASS_THROUGH = {"--epochs": int, "--limit": int, "--max-length": int, "--metric": str}
# the sweep's own options, with their value counts
SWEEP_OPTIONS = {"--job": 1, "--task": 1, "--model": 1, "--grid": 0, "--output": 1, "--jobs": 1, "--max-runs": 1,
                 "--yes": 0, "--same-compute": 0}


def add_sweep_commands(subparsers) -> None:
    from .sweep import JOBS, KNOBS

    p = subparsers.add_parser(
        "sweep", help="pretraining or fine-tuning runs that vary the learning rate, batch size, warm-up "
                      "or weight decay",
        description="Run minibert pretrain (or, with --job finetune, minibert finetune --task) once per "
                    "setting of the knobs (comma-separated values), one knob at a time around the baseline "
                    "(or every combination with --grid), and write sweep_report.md with the curves, the "
                    "sweet spot and a label for each run.",
        formatter_class=HelpFormatter, conflict_handler="resolve")
    add_pretrain_options(p)
    knobs = p.add_argument_group("knobs (comma-separated; one value sets the baseline)")
    for name in KNOBS:
        knobs.add_argument("--" + name.replace("_", "-"), default=None, metavar="VALUES",
                           help=f"values of --{name.replace('_', '-')} to try"
                                + (" (--warmup-ratio of fine-tuning)" if name == "warmup" else ""))
    finetune = p.add_argument_group(
        "fine-tuning (with --job finetune; the other options of minibert finetune pass through too, "
        "and the pretraining ones above are refused)")
    finetune.add_argument("--job", choices=JOBS, default="pretrain",
                          help="the command each run is: minibert pretrain or minibert finetune --task")
    finetune.add_argument("--task", default=None, help="the fine-tuning task: bbc-news or wnut16")
    finetune.add_argument("--model", default=None, metavar="DIR", help="the checkpoint folder to fine-tune")
    for flag, kind in FINETUNE_PASS_THROUGH.items():
        finetune.add_argument(flag, type=kind, default=None, help=f"as {flag} of minibert finetune")
    sweep = p.add_argument_group("sweep")
    sweep.add_argument("--grid", action="store_true", help="every combination of the knobs' values")
    sweep.add_argument("--same-compute", action="store_true",
                       help="give every pretraining run as many tokens as the baseline (steps x batch size x "
                            "sequence length): --batch-size 64 against 32 runs half the --steps, and "
                            "--eval-every scales with them")
    sweep.add_argument("--output", default="runs/sweep", help="the sweep's folder: one sub-folder per run")
    sweep.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                       help="runs at the same time, one BLAS thread each")
    sweep.add_argument("--max-runs", type=int, default=12, help="refuse larger sweeps unless --yes")
    sweep.add_argument("--yes", action="store_true", help="run a sweep larger than --max-runs")
    p.set_defaults(func=run_sweep_command)

    p = subparsers.add_parser(
        "lr-find", help="the learning-rate range test: loss against an exponentially growing learning rate",
        description="Train the pretraining model for --steps steps while the learning rate grows from "
                    "--start-lr to --end-lr, plot the loss against it and suggest a learning rate. "
                    "--lr, --warmup and the evaluation options of pretrain are not used.",
        formatter_class=HelpFormatter)
    add_pretrain_options(p)
    p.add_argument("--start-lr", type=float, default=1e-6, help="the first learning rate of the ramp")
    p.add_argument("--end-lr", type=float, default=1.0, help="the last learning rate of the ramp")
    p.set_defaults(func=run_lr_find_command, steps=200, name="lr-find")


def _pretrain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    add_pretrain_options(parser)
    return parser


def _baseline(args) -> tuple[list[str], dict]:
    """The ``minibert pretrain`` arguments shared by every run, and the baseline's knob values."""
    from .pretrain import DEFAULTS
    from .sweep import KNOBS

    defaults = {"lr": DEFAULTS["learning_rate"], "batch_size": DEFAULTS["batch_size"],
                "warmup": DEFAULTS["warmup_fraction"], "weight_decay": DEFAULTS["weight_decay"],
                "max_seq_length": DEFAULTS["max_seq_length"]}
    arguments = []
    for action in _pretrain_parser()._actions:
        name = action.dest
        if not action.option_strings or name in PER_RUN_OPTIONS or name in KNOBS:
            continue
        value = getattr(args, name)
        if isinstance(action, argparse._StoreTrueAction):
            arguments += [action.option_strings[0]] if value else []
        elif value is not None:
            arguments += [action.option_strings[0], str(value)]
    return arguments, defaults


def _finetune_parser() -> argparse.ArgumentParser:
    from .cli_finetune import add_finetune_commands

    subparsers = argparse.ArgumentParser(add_help=False).add_subparsers()
    add_finetune_commands(subparsers)
    parser = subparsers.choices["finetune"]
    parser.exit_on_error = False                   # a bad value raises, to be reported in one line
    return parser


def _without(argv: list[str], options: dict) -> list[str]:
    """``argv`` less the given options (``{flag: number of values}``) and their values."""
    kept, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in options:
            i += 1 if "=" in argv[i] else 1 + options[flag]
        else:
            kept.append(argv[i])
            i += 1
    return kept


def _finetune_baseline(args) -> tuple[list[str], dict, str | None]:
    """For ``--job finetune``: the ``minibert finetune`` arguments shared by every run, the
    baseline's knob values (finetune's defaults unless given) and the validation metric that
    chooses the best run (None: the loss)."""
    from .data.tasks import TASKS, task_path
    from .sweep import KNOBS, OPTION_NAMES

    if args.task is None:
        raise ValueError(f"--job finetune needs --task: one of {', '.join(TASKS)}")
    if args.task not in TASKS:
        raise ValueError(f"--task {args.task!r} is unknown; the tasks are {', '.join(TASKS)}")
    if args.model is None:
        raise ValueError("--job finetune needs --model DIR, the checkpoint folder to fine-tune")
    task_path(args.task)                                  # installed, or how to install it
    if not os.path.isfile(os.path.join(args.model, "vocab.txt")):
        raise FileNotFoundError(f"--model {args.model}: no vocab.txt there (a checkpoint folder with its "
                                "vocabulary is needed)")
    argv = list(args.command_line)
    argv = argv[argv.index("sweep") + 1:] if "sweep" in argv else argv
    knob_flags = {"--" + name.replace("_", "-"): 1 for name in KNOBS}
    rest = _without(argv, {**SWEEP_OPTIONS, **knob_flags})
    parser = _finetune_parser()
    try:
        options, unknown = parser.parse_known_args(["--task", args.task, "--model", args.model, *rest])
    except argparse.ArgumentError as exc:
        raise ValueError(f"--job finetune: {exc}") from None
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        raise ValueError(f"--job finetune: {flag} is not an option of minibert finetune")
    dests = {name: OPTION_NAMES["finetune"][name][2:].replace("-", "_") for name in KNOBS}
    baseline = {name: getattr(options, dest) for name, dest in dests.items()}
    arguments = []
    for action in parser._actions:
        value = getattr(options, action.dest, None)
        if (not action.option_strings or action.dest in (*dests.values(), "help", "output", "no_progress")
                or value is None):
            continue
        if isinstance(action, argparse._StoreTrueAction):
            arguments += [action.option_strings[0]] if value else []
        else:
            arguments += [action.option_strings[0], str(value)]
    if options.task == "wnut16":
        metric = "entity_f1" if options.metric == "accuracy" else options.metric    # as minibert finetune
    else:
        metric = options.metric
    return arguments, baseline, None if metric == "loss" else metric


def _check_finetune_run(settings: dict) -> None:
    if settings["warmup"] >= 1:
        raise ValueError(f"--warmup: {settings['warmup']:g} must be below 1 for fine-tuning (a share of the steps)")


def run_sweep_command(args) -> int:
    from . import sweep
    from .cli_pretrain import check_options

    for name in ("jobs", "max_runs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    finetuning = args.job == "finetune"
    metric = None
    if finetuning and args.same_compute:
        raise ValueError("--same-compute evens out the tokens of pretraining runs; fine-tuning runs go by --epochs")
    if finetuning:
        arguments, baseline, metric = _finetune_baseline(args)
    else:
        given = [flag for flag in ("--task", "--model", *FINETUNE_PASS_THROUGH)
                 if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            raise ValueError(f"{given[0]} is an option of fine-tuning: add --job finetune")
        arguments, baseline = _baseline(args)
    option_names = sweep.OPTION_NAMES[args.job]
    knobs = {}
    for name in sweep.KNOBS:
        text = getattr(args, name)
        if text is None:
            continue
        values = sweep.parse_values(text, name)
        if len(values) == 1:
            baseline[name] = values[0]                    # one value: part of the baseline
        else:
            knobs[name] = values
    if not knobs:
        raise ValueError("nothing to sweep: give a knob two or more values, such as --lr 3e-4,1e-3,3e-3")
    for name, value in baseline.items():
        arguments += [option_names[name], repr(value) if isinstance(value, float) else str(value)]
    plan = sweep.plan_runs(baseline, knobs, grid=args.grid)
    if finetuning:
        for overrides in plan:
            _check_finetune_run({**baseline, **overrides})
    else:
        options = _pretrain_parser().parse_args(arguments)
        for overrides in plan:                             # every run's options valid before any run
            check_options(argparse.Namespace(**{**vars(options), **overrides}))
    if len(plan) > args.max_runs and not args.yes:
        raise ValueError(f"this sweep would launch {len(plan)} runs (more than --max-runs {args.max_runs}): "
                         "pass --yes to run them all, or fewer values")
    derived = None
    if args.same_compute:
        def derived(overrides):
            return sweep.same_compute(baseline, overrides, args.steps, args.eval_every)
    description = {"baseline": arguments, "knobs": knobs, "grid": args.grid}
    if args.same_compute:
        description["same_compute"] = True
    sweep.check_sweep_folder(args.output, {"job": "finetune", **description} if finetuning else description)
    def describe(overrides) -> str:
        options = " ".join(f"{flag} {value}" for flag, value in derived(overrides).items()) if derived else ""
        return sweep.run_name(overrides) + (f" ({options})" if options else "")

    print(f"{len(plan)} runs of minibert {args.job} in {args.output}, {min(args.jobs, len(plan))} at a time: "
          + ", ".join(describe(o) for o in plan))
    command = [sys.executable, "-m", "minibert.cli", args.job, *arguments]
    runs = sweep.run_sweep(plan, baseline, command, args.output, jobs=args.jobs, job=args.job, derived=derived)
    report, results = sweep.write_report(runs, baseline, args.output, metric=metric, option_names=option_names)
    for row in results:
        score = f"  best validation {metric} {row[f'best_validation_{metric}']:.4f}" if (
            metric and row[f"best_validation_{metric}"] is not None) else ""
        print(f"  {row['name']:28s} best validation loss {row['best_validation_loss']:.4f}{score}  "
              f"{row['label']}: {row['why']}")
    print(f"report: {report}")
    return 0


def run_lr_find_command(args) -> int:
    from . import pretrain as job
    from .cli_pretrain import check_options, model_config
    from .data.corpus import split_documents
    from .modeling import BertForPreTraining
    from .sweep import lr_find, plot_range_test
    from .training import Trainer, TrainingArguments

    check_options(args)
    folder = os.path.join(args.output_root, args.name)
    documents = job.load_documents(args.corpus, args.corpus_format)
    train_docs, validation_docs = split_documents(documents, args.validation_fraction, args.seed)
    os.makedirs(folder, exist_ok=True)
    tokenizer = job.build_tokenizer(train_docs, folder, args.vocab, args.vocab_size)
    data = job.build_datasets(train_docs, validation_docs, tokenizer, args.max_seq_length, args.batch_size,
                              args.dupe_factor, args.whole_word_masking, args.seed)
    model = BertForPreTraining(model_config(args, tokenizer), seed=args.seed, device=args.device)
    settings = TrainingArguments(output_dir=None, checkpoints=False, max_steps=args.steps,
                                 learning_rate=args.start_lr, warmup_steps=0, weight_decay=args.weight_decay,
                                 gradient_accumulation_steps=args.accumulation, seed=args.seed,
                                 progress=not args.no_progress)
    trainer = Trainer(model, settings, data.train, None, tokenizer, masking=data.masking)
    result = lr_find(trainer, args.start_lr, args.end_lr, args.steps, progress=not args.no_progress)
    plot = plot_range_test(result, os.path.join(folder, "lr_find.png"))
    with open(os.path.join(folder, "lr_find.json"), "w", encoding="utf-8") as f:
        json.dump(result.to_dict(), f, indent=2)
    print(f"{len(result.learning_rates)} steps from lr {result.learning_rates[0]:.2g} to "
          f"{result.learning_rates[-1]:.2g}; suggested learning rate: {result.suggested_lr:.2g}")
    print(f"why: {result.reason}")
    print(f"plot: {plot}")
    return 0
