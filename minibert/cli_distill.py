"""``minibert distill --teacher DIR``: distil a trained BERT into a smaller DistilBERT student.

    minibert distill --teacher path/to/bert --layers 3 --output runs/distill --steps 300

The student copies the teacher's embeddings and evenly spaced layers (every other one by
default) and trains with DistilBERT's triple loss (minibert/distill.py) on the default corpus
(or ``--corpus``), through the one training loop. The student with the best validation loss
is saved in ``--output`` as a DistilBERT checkpoint (model.safetensors, config.json,
vocab.txt), beside metrics.jsonl, loss_curve.png and results.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

from .cli import HelpFormatter


def add_distill_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "distill", help="distil a trained BERT into a smaller DistilBERT (DistilBERT's triple loss)",
        description="Distil a BERT (or DistilBERT) checkpoint into a student with fewer layers: the student "
                    "starts from the teacher's embeddings and evenly spaced layers and learns from the "
                    "teacher's soft masked-LM targets, the true masked tokens and the teacher's hidden "
                    "states (loss = a_ce L_ce + a_mlm L_mlm + a_cos L_cos).",
        formatter_class=HelpFormatter)
    p.add_argument("--teacher", required=True, metavar="DIR", help="the teacher's checkpoint folder (with vocab.txt)")
    p.add_argument("--layers", type=int, default=None,
                   help="student layers, copied from evenly spaced teacher layers (default: half the "
                        "teacher's, i.e. every other layer)")
    p.add_argument("--output", metavar="DIR", default="runs/distill", help="where the student is saved")
    data = p.add_argument_group("data")
    data.add_argument("--corpus", default=None,
                      help="a .txt file or folder of them (default: the built-in standard-library corpus)")
    data.add_argument("--corpus-format", default="auto", choices=["auto", "lines", "paragraphs"],
                      help="'lines': one sentence per line, blank lines between documents")
    data.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence")
    data.add_argument("--dupe-factor", type=int, default=1, help="passes over the corpus when making sequences")
    data.add_argument("--validation-fraction", type=float, default=0.05,
                      help="share of the documents held out for validation")
    loss = p.add_argument_group("loss")
    loss.add_argument("--alpha-ce", type=float, default=None,
                      help="weight of the soft-target cross-entropy (default: 5, or 0 for a teacher "
                           "without a masked-LM head)")
    loss.add_argument("--alpha-mlm", type=float, default=None,
                      help="weight of the student's masked-LM loss (default: 2, or 0 for a teacher without "
                           "a masked-LM head: the student's head would start from random weights)")
    loss.add_argument("--alpha-cos", type=float, default=1.0, help="weight of the hidden-state cosine loss")
    loss.add_argument("--temperature", type=float, default=2.0, help="softening of both distributions in L_ce")
    train = p.add_argument_group("training")
    train.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch")
    train.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--steps", type=int, default=300, help="optimizer steps")
    train.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    train.add_argument("--warmup", type=float, default=0.05,
                       help="warm-up: a fraction of the steps (< 1) or a number of steps")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    train.add_argument("--eval-every", type=int, default=100, help="steps between validations")
    train.add_argument("--eval-batches", type=int, default=10, help="validation batches per evaluation")
    train.add_argument("--seed", type=int, default=0, help="seed of the data, the masks, the fresh weights, dropout")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_distill)


def check_options(args) -> None:
    """Refuse a bad option before anything is read or written."""
    for name in ("max_seq_length", "dupe_factor", "batch_size", "accumulation", "steps", "eval_every",
                 "eval_batches", "layers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.max_seq_length < 8:
        raise ValueError(f"--max-seq-length must leave room for [CLS] A [SEP] B [SEP]: at least 8, "
                         f"got {args.max_seq_length}")
    for name in ("alpha_ce", "alpha_mlm", "alpha_cos"):
        value = getattr(args, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
    if args.alpha_ce == 0 and args.alpha_mlm == 0 and args.alpha_cos == 0:
        raise ValueError("--alpha-ce, --alpha-mlm and --alpha-cos are all 0: nothing to learn from")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise ValueError(f"--temperature must be a positive number, got {args.temperature}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not (args.warmup >= 0 and math.isfinite(args.warmup)):
        raise ValueError(f"--warmup must be a fraction of the steps (< 1) or a number of steps, got {args.warmup}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise ValueError(f"--weight-decay must be 0 or more, got {args.weight_decay}")
    if not 0.0 < args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must be between 0 and 1 (exclusive), got {args.validation_fraction}")
    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if not os.path.isdir(args.teacher):
        raise FileNotFoundError(f"--teacher {args.teacher}: no such folder")
    for name in ("config.json", "vocab.txt"):
        if not os.path.isfile(os.path.join(args.teacher, name)):
            raise FileNotFoundError(f"--teacher {args.teacher}: no {name} there (a checkpoint folder with its "
                                    "vocabulary is needed)")
    if args.corpus is not None and not os.path.exists(args.corpus):
        raise FileNotFoundError(f"--corpus {args.corpus}: no such file or folder")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise FileExistsError(f"--output {args.output} is a file, not a folder")
    if os.path.isdir(args.output) and os.listdir(args.output):
        raise FileExistsError(f"--output {args.output} is not empty: give a new folder")


def run_distill(args) -> int:
    from . import distill
    from . import pretrain as job
    from .checkpoint import save_pretrained
    from .data.corpus import split_documents
    from .tokenization import BertTokenizer
    from .training import Trainer, TrainingArguments

    check_options(args)
    started = time.perf_counter()
    teacher, has_head = distill.load_teacher(args.teacher, device=args.device)
    teacher_layers = teacher.config.num_hidden_layers
    num_layers = args.layers if args.layers is not None else max(1, (teacher_layers + 1) // 2)
    layers = distill.evenly_spaced_layers(teacher_layers, num_layers)
    alpha_ce, alpha_mlm = args.alpha_ce, args.alpha_mlm
    if alpha_ce is None:
        alpha_ce = distill.DEFAULT_ALPHAS["ce"] if has_head else 0.0
    if alpha_mlm is None:
        alpha_mlm = distill.DEFAULT_ALPHAS["mlm"] if has_head else 0.0
    if alpha_ce > 0 and not has_head:
        raise ValueError(f"--teacher {args.teacher} has no masked-LM head, so it gives no soft targets: "
                         "leave out --alpha-ce (or give 0)")
    if alpha_ce == 0 and alpha_mlm == 0 and args.alpha_cos == 0:
        raise ValueError("the teacher has no masked-LM head (no soft targets, no trained head for the student) "
                         "and --alpha-cos is 0: nothing to learn from")
    alphas = {"ce": alpha_ce, "mlm": alpha_mlm, "cos": args.alpha_cos}
    tokenizer = BertTokenizer.from_pretrained(args.teacher)
    student = distill.student_from_teacher(teacher, layers, seed=args.seed)
    if args.device != "cpu":
        student.to(args.device)
    print(f"teacher: {args.teacher} ({type(teacher).__name__}, {teacher_layers} layers, "
          f"{teacher.base_model.num_parameters():,} encoder parameters)")
    print(f"student: DistilBERT with {num_layers} layers, copied from teacher layers "
          f"{', '.join(map(str, layers))} (embeddings copied, no token types, no pooler), "
          f"{student.base_model.num_parameters():,} encoder parameters")
    if not has_head:
        print("note: the teacher has no masked-LM head (no cls.predictions.* weights), so it gives no soft "
              "targets: L_ce is off (alpha_ce = 0). The student's masked-LM head is new (transform at random, "
              "decoder tied to the copied word embeddings), and its loss would first pull the copied layers "
              "towards a random head, so L_mlm is off too unless --alpha-mlm is given"
              + (f" (given: {alpha_mlm:g})" if alpha_mlm else "")
              + ". The student learns to point its hidden states where the teacher's point (L_cos).")
    else:
        print("the student's masked-LM head is the teacher's, copied")
    print(f"loss = {alphas['ce']:g} L_ce (T = {args.temperature:g}) + {alphas['mlm']:g} L_mlm "
          f"+ {alphas['cos']:g} L_cos")

    documents = job.load_documents(args.corpus, args.corpus_format)
    train_docs, val_docs = split_documents(documents, args.validation_fraction, args.seed)
    data = job.build_datasets(train_docs, val_docs, tokenizer, args.max_seq_length, args.batch_size,
                              args.dupe_factor, seed=args.seed)
    print(f"corpus: {len(documents)} documents ({len(train_docs)} train, {len(val_docs)} validation), "
          f"{sum(data.token_counts.values()):,} training tokens; sequences: {data.train.num_examples:,} train, "
          f"{data.validation.num_examples:,} validation ({data.seconds:.1f} s)")
    task = distill.DistillationTask(teacher, data.train, data.validation, data.masking, alphas=alphas,
                                    temperature=args.temperature, accumulation=args.accumulation,
                                    eval_batches=args.eval_batches, teacher_has_mlm_head=has_head)
    warmup = int(args.warmup * args.steps) if args.warmup < 1 else int(args.warmup)
    training_args = TrainingArguments(
        output_dir=args.output, gradient_accumulation_steps=args.accumulation, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=warmup, weight_decay=args.weight_decay, eval_every=args.eval_every,
        eval_batches=args.eval_batches, seed=args.seed, progress=not args.no_progress, checkpoints=False,
        restore_best=True)
    before = task.validate(student)
    print("validation before training: " + _describe(before))
    trainer = Trainer(student, training_args, task=task, tokenizer=tokenizer)
    summary = trainer.train()
    save_pretrained(student, args.output, tokenizer)          # the best validation's weights
    shutil.rmtree(os.path.join(args.output, "best_model"), ignore_errors=True)   # the same weights
    final = task.validate(student)
    wall = time.perf_counter() - started
    results = {"teacher": os.path.abspath(args.teacher), "teacher_layers": teacher_layers,
               "student_layers": layers, "alphas": alphas, "temperature": args.temperature,
               "teacher_has_mlm_head": has_head, "steps": summary["steps"], "best_step": summary["best_step"],
               "validation_before": before, "validation": final, "train_seconds": summary["train_seconds"],
               "wall_seconds": wall}
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"validation of the saved student (step {summary['best_step']}): " + _describe(final))
    print(f"wall time {wall:.0f} s (training {summary['train_seconds']:.0f} s); student saved in {args.output}")
    return 0


def _describe(metrics: dict) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if isinstance(value, float))
