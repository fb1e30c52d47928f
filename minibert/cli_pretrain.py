"""``minibert pretrain``: the main job (``minibert fill-mask`` queries its result).

``--recipe bert`` (the default) is BERT's: masked LM + next-sentence prediction on sentence
pairs. ``--recipe roberta`` is RoBERTa's training recipe on the same model, vocabulary and
corpus: no NSP (a ``BertForMaskedLM``), full sentences packed across document boundaries,
dynamic masking, Adam beta2 = 0.98, larger batches (``pretrain.RECIPES``).

``mpiexec -n N minibert pretrain --batch-size b ...`` trains on N processes with a global batch
of N*b (docs/distributed.md): every rank prepares the same data, rank 0 alone writes the run
folder and prints, and the ranks check at the start that they were started alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time

from . import pretrain as job
from .cli import HelpFormatter
from .data.corpus import split_documents

D = job.DEFAULTS


def add_pretrain_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain a BERT with masked LM + next-sentence prediction (or RoBERTa's recipe)",
        description="Pretrain a small BERT. With no arguments: trains a WordPiece vocabulary on the "
                    "Python standard library's docstrings (no download), pretrains a tiny BERT, "
                    "evaluates it, saves it to runs/<name>/ and prints fill-in-the-mask predictions.",
        formatter_class=HelpFormatter)
    add_pretrain_options(p)
    bert, roberta = job.RECIPES["bert"], job.RECIPES["roberta"]
    p.add_argument("--recipe", default="bert", choices=sorted(job.RECIPES),
                   help="bert: masked LM + next-sentence prediction on sentence pairs; roberta: masked LM "
                        "alone on full sentences packed across documents, Adam beta2 0.98, larger batches. "
                        "The recipe sets the defaults of --batch-size, --lr, --steps and --eval-every "
                        f"(bert: {bert['batch_size']}, {bert['learning_rate']:g}, {bert['max_steps']}, "
                        f"{bert['eval_every']}; roberta: {roberta['batch_size']}, {roberta['learning_rate']:g}, "
                        f"{roberta['max_steps']}, {roberta['eval_every']}); --dupe-factor is bert's alone "
                        "(default: bert)")
    # None: the recipe's value (apply_recipe)
    p.set_defaults(func=run_pretrain, **dict.fromkeys(RECIPE_OPTIONS))
    for action in p._actions:
        if action.dest in RECIPE_OPTIONS:
            action.help += " (default: set by --recipe)"


def add_pretrain_options(p) -> None:
    """The options of the pretraining job (``minibert sweep`` and ``lr-find`` take them too)."""
    data = p.add_argument_group("data")
    data.add_argument("--corpus", default=None,
                      help="a .txt file or folder of them (default: the built-in standard-library corpus)")
    data.add_argument("--corpus-format", default="auto", choices=["auto", "lines", "paragraphs"],
                      help="'lines': one sentence per line, blank lines between documents")
    data.add_argument("--vocab", default=None, help="a vocab.txt (or tokenizer folder) instead of training one")
    data.add_argument("--vocab-size", type=int, default=D["vocab_size"], help="tokens in the trained vocabulary")
    data.add_argument("--max-seq-length", type=int, default=D["max_seq_length"],
                      help="tokens per sentence pair, [CLS] and [SEP]s included")
    data.add_argument("--dupe-factor", type=int, default=D["dupe_factor"],
                      help="passes over the corpus when making sentence pairs")
    data.add_argument("--whole-word-masking", action="store_true",
                      help="mask all the WordPieces of a chosen word together")
    data.add_argument("--validation-fraction", type=float, default=D["validation_fraction"],
                      help="share of the documents held out for validation")
    model = p.add_argument_group("model")
    model.add_argument("--preset", default=D["preset"], choices=["tiny", "mini", "small", "medium", "base", "large"],
                       help="model size: tiny L2 H128, mini L4 H256, small L4 H512, ... base L12 H768")
    model.add_argument("--config", default=None, help="a config.json to use instead of a preset")
    model.add_argument("--attn-implementation", default="naive", choices=["naive", "flash"],
                       help="attention: the plain softmax, or the tiled flash version")
    model.add_argument("--device", default="cpu", help="cpu or cuda")
    model.add_argument("--fp16", action="store_true",
                       help="mixed precision: float16 matrix products, float32 weights, dynamic loss "
                            "scaling (for a GPU; NumPy's float16 products on the CPU are slow)")
    train = p.add_argument_group("training")
    train.add_argument("--batch-size", type=int, default=D["batch_size"],
                       help="sequences per micro-batch (sentence pairs, or packed sentences)")
    train.add_argument("--accumulation", type=int, default=D["accumulation"],
                       help="micro-batches per optimizer step (effective batch = batch size x this)")
    train.add_argument("--lr", type=float, default=D["learning_rate"], help="peak learning rate (AdamW)")
    train.add_argument("--warmup", type=float, default=D["warmup_fraction"],
                       help="warm-up: a fraction of the steps (< 1) or a number of steps")
    train.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"],
                       help="learning rate after the warm-up")
    train.add_argument("--weight-decay", type=float, default=D["weight_decay"],
                       help="AdamW weight decay (not on biases and LayerNorm)")
    train.add_argument("--steps", type=int, default=D["max_steps"], help="optimizer steps")
    train.add_argument("--eval-every", type=int, default=D["eval_every"],
                       help="steps between validations (each one also writes a checkpoint)")
    train.add_argument("--eval-batches", type=int, default=D["eval_batches"],
                       help="validation batches per evaluation")
    train.add_argument("--patience", type=int, default=D["patience"],
                       help="stop after this many evaluations without improvement (default: never)")
    train.add_argument("--seed", type=int, default=D["seed"], help="seed of the data, masks, weights and dropout")
    train.add_argument("--name", default="pretrain", help="the run folder: runs/<name>/")
    train.add_argument("--output-root", default="runs", help="folder that holds the run folders")
    train.add_argument("--resume", action="store_true", help="continue runs/<name>/ from its last checkpoint")
    train.add_argument("--noise-scale", action="store_true",
                       help="estimate the gradient noise scale (how large a batch still helps) from the "
                            "micro-batches, logged and plotted; needs --accumulation 2 or more")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    parallel = p.add_argument_group("data parallel (under mpiexec -n N; --batch-size is per process)")
    parallel.add_argument("--zero", type=int, default=0, choices=[0, 1],
                          help="1: shard AdamW's moments over the processes (ZeRO stage 1)")
    parallel.add_argument("--check-weights-every", type=int, default=None,
                          help="steps between checks that every process holds the same weights")


# the options whose default the recipe sets: option -> its key in pretrain.RECIPES
RECIPE_OPTIONS = {"batch_size": "batch_size", "lr": "learning_rate", "steps": "max_steps",
                  "eval_every": "eval_every", "dupe_factor": "dupe_factor"}
# the options that decide the examples and the model: a resumed run must keep them
RUN_SHAPE = ("recipe", "corpus", "corpus_format", "vocab", "vocab_size", "max_seq_length", "dupe_factor",
             "whole_word_masking", "validation_fraction", "preset", "config", "attn_implementation",
             "batch_size", "accumulation", "seed")
RUN_SHAPE_FILE = "run_shape.json"
# what a run writes before its first checkpoint: a start that failed before then leaves only these
STARTED_FILES = (RUN_SHAPE_FILE, "tokenizer", "metrics.jsonl", "loss_curve.png")


def apply_recipe(args) -> None:
    """Fill the options left unset (None) with the recipe's values, and refuse the options that
    have no meaning in it. Commands without ``--recipe`` train BERT's."""
    recipe = getattr(args, "recipe", "bert")
    if recipe not in job.RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(sorted(job.RECIPES))}, got {recipe!r}")
    if recipe == "roberta" and getattr(args, "dupe_factor", None) is not None:
        raise ValueError("--dupe-factor sets the passes that make next-sentence pairs, which --recipe roberta "
                         "does not make (it packs full sentences, and draws new masks every epoch): leave it out")
    for option, key in RECIPE_OPTIONS.items():
        if getattr(args, option, None) is None:
            setattr(args, option, job.RECIPES[recipe][key])


def check_options(args) -> None:
    """Refuse a bad option before anything is read or written."""
    apply_recipe(args)
    for name in ("vocab_size", "max_seq_length", "dupe_factor", "batch_size", "accumulation", "steps",
                 "eval_every", "eval_batches", "check_weights_every"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.max_seq_length < 8:
        raise ValueError(f"--max-seq-length must leave room for [CLS] A [SEP] B [SEP]: at least 8, "
                         f"got {args.max_seq_length}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise ValueError(f"--weight-decay must be 0 or more, got {args.weight_decay}")
    if args.patience is not None and args.patience < 1:
        raise ValueError(f"--patience must be a positive integer, got {args.patience}")
    if not (args.warmup >= 0 and math.isfinite(args.warmup)):
        raise ValueError(f"--warmup must be a fraction of the steps (< 1) or a number of steps, got {args.warmup}")
    if not 0.0 < args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must be between 0 and 1 (exclusive): the run is "
                         f"evaluated on held-out documents; got {args.validation_fraction}")
    if args.corpus is not None and not os.path.exists(args.corpus):
        raise FileNotFoundError(f"--corpus {args.corpus}: no such file or folder")
    if args.vocab is not None and not os.path.exists(args.vocab):
        raise FileNotFoundError(f"--vocab {args.vocab}: no such file or folder")
    if args.config and not os.path.isfile(args.config):
        raise FileNotFoundError(f"--config {args.config}: no such file")
    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")


def _claim_run_dir(run_dir: str, resume: bool) -> str | None:
    """Decide what ``run_dir`` holds before anything is written; returns the checkpoint to resume
    from, or None for a fresh start.

    A folder holding a run (a checkpoint, a saved model or results) is refused without
    ``--resume``. A start that failed before its first checkpoint left only ``STARTED_FILES``:
    those are removed and the run starts afresh, so a corrected command just works.
    """
    from .training import latest_checkpoint

    if not os.path.isdir(run_dir):
        if os.path.exists(run_dir):
            raise FileExistsError(f"{run_dir} is a file, not a run folder: choose another --name or --output-root")
        return None
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is not None:
        return checkpoint
    names = os.listdir(run_dir)
    if checkpoint is not None or any(name in ("best_model", "results.json") for name in names):
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, "
                              "or --name to start another (nothing was overwritten)")
    others = [name for name in names if name not in STARTED_FILES and not name.startswith(".tmp-checkpoint-")]
    if others:
        raise FileExistsError(f"{run_dir} holds files that are not a run's ({', '.join(sorted(others)[:3])}): "
                              "choose another --name (nothing was touched)")
    if names:
        print(f"{run_dir} holds a start that never reached a checkpoint: starting afresh")
        for name in names:
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    elif resume:
        print(f"--resume: {run_dir} has no checkpoint yet, so this run starts from step 0")
    return None


def _check_same_data_and_model(args, run_dir, resuming: bool, processes: int = 1) -> None:
    """Write the run's shape on its first start; on resume, refuse options that change it
    (the checkpoint's data position and weights would no longer fit). --lr, --steps and the
    evaluation options may change, and so may the number of processes if the global batch
    (``batch_size`` in the shape: --batch-size x processes) stays."""
    path = os.path.join(run_dir, RUN_SHAPE_FILE)
    shape = {name: getattr(args, name) for name in RUN_SHAPE}
    shape["batch_size"] = args.batch_size * processes
    if resuming and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        option = {"batch_size": "batch-size" if processes == 1 else "batch-size x processes"}
        changed = [f"--{option.get(name, name.replace('_', '-'))} {before[name]!r} -> {shape[name]!r}"
                   for name in RUN_SHAPE if name in before and before[name] != shape[name]]
        if changed:
            raise ValueError(f"--resume: {run_dir} was started with other data or model options "
                             f"({'; '.join(changed)}); resume with the same ones, or start a new --name")
    else:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(shape, f, indent=2)


def model_config(args, tokenizer):
    """The model's configuration: ``--config``, or ``--preset`` sized to the vocabulary;
    refused when it does not fit the vocabulary or the sequence length."""
    from .config import BertConfig

    if args.config:
        config = BertConfig.from_json_file(args.config)
    else:
        config = BertConfig.preset(args.preset, vocab_size=len(tokenizer),
                                   max_position_embeddings=max(args.max_seq_length, 128),
                                   attn_implementation=args.attn_implementation)
    if config.vocab_size != len(tokenizer):
        raise ValueError(f"the vocabulary has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{config.vocab_size}: they must agree")
    if config.max_position_embeddings < args.max_seq_length:
        raise ValueError(f"--max-seq-length {args.max_seq_length} exceeds the model's "
                         f"max_position_embeddings ({config.max_position_embeddings})")
    return config


def _checkpoint_state(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)


def _resume_command(args) -> str:
    words = ["minibert", *getattr(args, "command_line", ["pretrain"])]
    return shlex.join(words if "--resume" in words else [*words, "--resume"])


def _describe(metrics: dict) -> str:
    if "nsp_loss" not in metrics:                     # the roberta recipe: masked LM alone
        return f"MLM loss {metrics['mlm_loss']:.3f}, MLM accuracy {metrics['mlm_accuracy']:.3f}"
    return (f"loss {metrics['loss']:.3f} (MLM {metrics['mlm_loss']:.3f} + NSP {metrics['nsp_loss']:.3f}), "
            f"MLM accuracy {metrics['mlm_accuracy']:.3f}, NSP accuracy {metrics['nsp_accuracy']:.3f}")


def _on_rank_0(comm, work):
    """``work()`` on rank 0 alone (it owns the run folder), its result there (None elsewhere).
    If it fails, every rank stops: rank 0 with its error, the others with a line pointing to it."""
    import numpy as np

    error, result = None, None
    if comm.is_main:
        try:
            result = work()
        except (OSError, ValueError) as exc:
            error = exc
    failed = comm.broadcast(np.array([error is not None], dtype=np.uint8))[0]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("rank 0 refused to start the run (its error says why)")
    return result


def _fingerprint(arrays: dict) -> str:
    """A SHA-256 of named arrays (a data set), to compare the ranks' data cheaply."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode() + str(arrays[name].dtype).encode() + str(arrays[name].shape).encode())
        digest.update(arrays[name].tobytes())
    return digest.hexdigest()


def run_pretrain(args) -> int:
    from .distributed import check_same_everywhere, select_local_gpu, world
    from .heads import BertForMaskedLM
    from .modeling import BertForPreTraining
    from .plots import plot_loss_curves
    from .training import MaskedLMTask, Trainer, TrainingArguments, latest_checkpoint

    check_options(args)
    recipe = job.RECIPES[args.recipe]
    # bert: MLM + NSP heads; roberta: the masked-LM head alone (no pooler, no NSP classifier)
    model_class = BertForMaskedLM if args.recipe == "roberta" else BertForPreTraining
    # the processes of this run: one, or the ranks of mpiexec (NCCL between GPUs, MPI otherwise)
    if args.device == "cuda" and world().size > 1:
        select_local_gpu()                          # one GPU per process, on each machine
    comm = world(args.device)
    main = comm.is_main
    say = print if main else (lambda *a, **k: None)  # rank 0 speaks for the run
    run_dir = os.path.join(args.output_root, args.name)
    warmup = int(args.warmup * args.steps) if args.warmup < 1 else int(args.warmup)
    training_args = TrainingArguments(
        output_dir=run_dir, gradient_accumulation_steps=args.accumulation, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=warmup, schedule=args.schedule, weight_decay=args.weight_decay,
        adam_betas=recipe["adam_betas"], adam_eps=recipe["adam_eps"],
        eval_every=args.eval_every, eval_batches=args.eval_batches, patience=args.patience, seed=args.seed,
        progress=not args.no_progress, fp16=args.fp16, zero=args.zero, check_weights_every=args.check_weights_every,
        noise_scale=args.noise_scale)
    # rank 0 decides what the run folder holds (and tidies it); the others then read the decision
    checkpoint = _on_rank_0(comm, lambda: _claim_run_dir(run_dir, args.resume))
    if not main:
        checkpoint = latest_checkpoint(run_dir) if args.resume and os.path.isdir(run_dir) else None
    if checkpoint is not None:
        state = _checkpoint_state(checkpoint)
        if state["step"] >= args.steps:            # a finished run: redraw its curve, change nothing
            if main:
                curve = plot_loss_curves(state.get("history", []), os.path.join(run_dir, "loss_curve.png"),
                                         best_step=state.get("best_step"))
                print(f"{run_dir} is finished: its checkpoint is at step {state['step']} and --steps is "
                      f"{args.steps}, so there is nothing to train (raise --steps to continue)"
                      + (f"; loss curve: {curve}" if curve else ""))
            return 0

    t0 = time.perf_counter()
    documents = job.load_documents(args.corpus, args.corpus_format)
    train_docs, val_docs = split_documents(documents, args.validation_fraction, args.seed)
    def write_run_shape():
        os.makedirs(run_dir, exist_ok=True)
        _check_same_data_and_model(args, run_dir, resuming=checkpoint is not None, processes=comm.size)

    _on_rank_0(comm, write_run_shape)
    vocab = args.vocab
    if checkpoint is not None and vocab is None and os.path.isfile(os.path.join(run_dir, "tokenizer", "vocab.txt")):
        vocab = os.path.join(run_dir, "tokenizer")                 # the vocabulary the run was trained with
    tokenizer = job.build_tokenizer(train_docs, run_dir, vocab, args.vocab_size, save=main)
    t_vocab = time.perf_counter() - t0
    # every rank holds the global batches (N x --batch-size) and keeps its rows of each
    data = job.build_datasets(train_docs, val_docs, tokenizer, args.max_seq_length, args.batch_size * comm.size,
                              args.dupe_factor, args.whole_word_masking, args.seed, packed=args.recipe == "roberta")
    options = {k: v for k, v in vars(args).items() if k not in ("func", "commands", "command_line", "no_progress")}
    check_same_everywhere(comm, {
        "options": json.dumps(options, sort_keys=True, default=str),
        "vocabulary": "\n".join(tokenizer.ids_to_tokens),
        "training data": _fingerprint(data.train.arrays),
        "validation data": _fingerprint(data.validation.arrays)})
    say(f"corpus: {len(documents)} documents ({len(train_docs)} train, {len(val_docs)} validation), "
          f"{sum(data.token_counts.values()):,} training tokens; vocabulary {len(tokenizer):,} tokens "
          f"({t_vocab:.1f} s incl. reading); examples: {data.train.num_examples:,} train, "
          f"{data.validation.num_examples:,} validation ({data.seconds:.1f} s)")
    unknown = data.token_counts[tokenizer.unk_token_id] / max(1, sum(data.token_counts.values()))
    if unknown > 0.2:
        say(f"warning: {unknown:.0%} of the training tokens are {tokenizer.unk_token}: the vocabulary "
              "does not fit this corpus (train one with minibert train-vocab, or leave out --vocab)")

    config = model_config(args, tokenizer)
    model = model_class(config, seed=args.seed, device=args.device)
    say(f"model: {args.preset if not args.config else args.config} "
        f"(L{config.num_hidden_layers} H{config.hidden_size} A{config.num_attention_heads}), "
        f"{model.num_parameters():,} parameters; {args.steps} steps of "
        f"{args.batch_size * args.accumulation * comm.size} sequences x {args.max_seq_length} tokens"
        + (f" ({comm.size} processes x {args.batch_size} sequences, {comm.backend.upper()})" if comm.size > 1 else ""))
    if args.recipe == "roberta":
        task = MaskedLMTask(data.train, data.validation, data.masking, args.accumulation, args.eval_batches)
        trainer = Trainer(model, training_args, tokenizer=tokenizer, task=task, communicator=comm)
    else:
        trainer = Trainer(model, training_args, data.train, data.validation, tokenizer, masking=data.masking,
                          communicator=comm)
    t1 = time.perf_counter()
    try:
        summary = trainer.train(resume_from=checkpoint)
    except KeyboardInterrupt:
        kept = trainer.latest_checkpoint()
        if not main:
            return 130
        if kept is None:
            print(f"\ninterrupted at step {trainer.step}, before the first checkpoint: nothing was kept, and "
                  "the same command starts afresh", file=sys.stderr)
        else:
            print(f"\ninterrupted at step {trainer.step}; the checkpoint {kept} (step "
                  f"{_checkpoint_state(kept)['step']}) is kept; continue with:\n  {_resume_command(args)}",
                  file=sys.stderr)
        return 130
    train_seconds = time.perf_counter() - t1

    final = trainer.evaluate()                        # every rank scores its share
    if not main:
        return 0
    best_step, best = summary["best_step"], summary["best_metrics"] or final
    baseline = job.unigram_baseline(data, args.eval_batches)
    results = {"data_seconds": round(t_vocab + data.seconds, 1), "train_seconds": round(train_seconds, 1),
               "steps": summary["steps"], "validation": final, "best_step": best_step, "best_validation": best,
               "saved_model": summary["model_dir"], "unigram_baseline_accuracy": baseline}
    with open(os.path.join(run_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"\ndata preparation {results['data_seconds']} s, training {train_seconds:.0f} s "
          f"({summary['steps']} steps)")
    print(f"unigram baseline (always the most frequent token): MLM accuracy {baseline:.3f}")
    if best_step == summary["steps"]:
        print(f"validation at step {best_step}, the last and the best: {_describe(final)}")
    else:
        print(f"validation at step {summary['steps']}, the last: {_describe(final)}")
        print(f"validation at step {best_step}, the best (lowest loss): {_describe(best)}")
    curve = os.path.join(run_dir, "loss_curve.png")
    print(f"saved: {summary['model_dir']} (the model of step {best_step})"
          + (f"; loss curve: {curve}" if os.path.isfile(curve) else ""))
    if trainer.noise_scale is not None:
        from .plots import plot_noise_scale

        plot = plot_noise_scale(summary["history"], os.path.join(run_dir, "noise_scale.png"))
        print(f"gradient noise scale: about {trainer.noise_scale.value:.0f} sequences (the critical batch size: "
              f"batches much larger than this barely speed training up; this run's batch is "
              f"{args.batch_size * args.accumulation}); plot: {plot}")

    saved = model_class.from_pretrained(summary["model_dir"], device=args.device)
    print(f"\nfill in the mask with the saved model (step {best_step}), on held-out sentences:")
    for text, answer in job.held_out_fill_mask_examples(val_docs, tokenizer, seed=args.seed):
        (predictions,) = job.fill_mask(saved, tokenizer, text)
        shown = ", ".join(f"{token!r} {p:.2f}" for token, p in predictions)
        print(f"  {text}\n    answer: {answer!r}   predicted: {shown}")
    return 0
