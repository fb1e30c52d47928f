"""``minibert pretrain``: the main job (``minibert fill-mask`` queries its result)."""

from __future__ import annotations

import argparse
import json
import math
import os
import time

from . import pretrain as job
from .data.corpus import split_documents

D = job.DEFAULTS


def add_pretrain_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain a BERT with masked LM + next-sentence prediction",
        description="Pretrain a small BERT. With no arguments: trains a WordPiece vocabulary on the "
                    "Python standard library's docstrings (no download), pretrains a tiny BERT, "
                    "evaluates it, saves it to runs/<name>/ and prints fill-in-the-mask predictions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    train.add_argument("--batch-size", type=int, default=D["batch_size"], help="sentence pairs per micro-batch")
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
                       help="stop after this many evaluations without improvement (default: %(default)s, never)")
    train.add_argument("--seed", type=int, default=D["seed"], help="seed of the data, masks, weights and dropout")
    train.add_argument("--name", default="pretrain", help="the run folder: runs/<name>/")
    train.add_argument("--output-root", default="runs", help="folder that holds the run folders")
    train.add_argument("--resume", action="store_true", help="continue runs/<name>/ from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)


# the options that decide the examples and the model: a resumed run must keep them
RUN_SHAPE = ("corpus", "corpus_format", "vocab", "vocab_size", "max_seq_length", "dupe_factor",
             "whole_word_masking", "validation_fraction", "preset", "config", "attn_implementation",
             "batch_size", "accumulation", "seed")
RUN_SHAPE_FILE = "run_shape.json"


def _check_same_data_and_model(args, run_dir) -> None:
    """Write the run's shape on its first start; on --resume, refuse options that change it
    (the checkpoint's data position and weights would no longer fit). --lr, --steps and the
    evaluation options may change."""
    path = os.path.join(run_dir, RUN_SHAPE_FILE)
    shape = {name: getattr(args, name) for name in RUN_SHAPE}
    if args.resume and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        changed = [f"--{name.replace('_', '-')} {before[name]!r} -> {shape[name]!r}"
                   for name in RUN_SHAPE if name in before and before[name] != shape[name]]
        if changed:
            raise ValueError(f"--resume: {run_dir} was started with other data or model options "
                             f"({'; '.join(changed)}); resume with the same ones, or start a new --name")
    else:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(shape, f, indent=2)


def run_pretrain(args) -> int:
    from .modeling import BertConfig, BertForPreTraining
    from .training import Trainer, TrainingArguments, latest_checkpoint

    run_dir = os.path.join(args.output_root, args.name)
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not args.resume:
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, "
                              "or --name to start another (nothing was overwritten)")
    if not (args.warmup >= 0 and math.isfinite(args.warmup)):
        raise ValueError(f"--warmup must be a fraction of the steps (< 1) or a number of steps, got {args.warmup}")
    if not 0.0 < args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must be between 0 and 1 (exclusive): the run is "
                         f"evaluated on held-out documents; got {args.validation_fraction}")
    if args.config and not os.path.isfile(args.config):        # before minutes of data preparation
        raise FileNotFoundError(f"--config {args.config}: no such file")
    if args.resume and latest_checkpoint(run_dir) is None:
        print(f"--resume: {run_dir} has no checkpoint yet, so this run starts from step 0")
    os.makedirs(run_dir, exist_ok=True)
    _check_same_data_and_model(args, run_dir)

    t0 = time.perf_counter()
    documents = job.load_documents(args.corpus, args.corpus_format)
    train_docs, val_docs = split_documents(documents, args.validation_fraction, args.seed)
    vocab = args.vocab
    if args.resume and vocab is None and os.path.isfile(os.path.join(run_dir, "tokenizer", "vocab.txt")):
        vocab = os.path.join(run_dir, "tokenizer")                 # the vocabulary the run was trained with
    tokenizer = job.build_tokenizer(train_docs, run_dir, vocab, args.vocab_size)
    t_vocab = time.perf_counter() - t0
    data = job.build_datasets(train_docs, val_docs, tokenizer, args.max_seq_length, args.batch_size,
                              args.dupe_factor, args.whole_word_masking, args.seed)
    print(f"corpus: {len(documents)} documents ({len(train_docs)} train, {len(val_docs)} validation), "
          f"{sum(data.token_counts.values()):,} training tokens; vocabulary {len(tokenizer):,} tokens "
          f"({t_vocab:.1f} s incl. reading); examples: {data.train.num_examples:,} train, "
          f"{data.validation.num_examples:,} validation ({data.seconds:.1f} s)")
    unknown = data.token_counts[tokenizer.unk_token_id] / max(1, sum(data.token_counts.values()))
    if unknown > 0.2:
        print(f"warning: {unknown:.0%} of the training tokens are {tokenizer.unk_token}: the vocabulary "
              "does not fit this corpus (train one with minibert train-vocab, or leave out --vocab)")

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
    model = BertForPreTraining(config, seed=args.seed, device=args.device)
    warmup = int(args.warmup * args.steps) if args.warmup < 1 else int(args.warmup)
    training_args = TrainingArguments(
        output_dir=run_dir, gradient_accumulation_steps=args.accumulation, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=warmup, schedule=args.schedule, weight_decay=args.weight_decay,
        eval_every=args.eval_every, eval_batches=args.eval_batches, patience=args.patience, seed=args.seed,
        progress=not args.no_progress, fp16=args.fp16)
    print(f"model: {args.preset if not args.config else args.config} "
          f"(L{config.num_hidden_layers} H{config.hidden_size} A{config.num_attention_heads}), "
          f"{model.num_parameters():,} parameters; {args.steps} steps of "
          f"{args.batch_size * args.accumulation} sequences x {args.max_seq_length} tokens")
    trainer = Trainer(model, training_args, data.train, data.validation, tokenizer, masking=data.masking)
    t1 = time.perf_counter()
    resume = args.resume and trainer.latest_checkpoint() is not None
    summary = trainer.train(resume_from=run_dir if resume else None)
    train_seconds = time.perf_counter() - t1

    final = trainer.evaluate()
    baseline = job.unigram_baseline(data, args.eval_batches)
    results = {"data_seconds": round(t_vocab + data.seconds, 1), "train_seconds": round(train_seconds, 1),
               "steps": summary["steps"], "validation": final, "unigram_baseline_accuracy": baseline}
    with open(os.path.join(run_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"\ndata preparation {results['data_seconds']} s, training {train_seconds:.0f} s "
          f"({summary['steps']} steps)")
    print(f"validation: MLM loss {final['mlm_loss']:.3f}, MLM accuracy {final['mlm_accuracy']:.3f} "
          f"(unigram baseline {baseline:.3f}), NSP accuracy {final['nsp_accuracy']:.3f}")
    curve = os.path.join(run_dir, "loss_curve.png")
    print(f"saved: {summary['model_dir']}  " + (f"(loss curve: {curve})" if os.path.isfile(curve) else
                                               "(pip install matplotlib for a loss-curve plot)"))
    print("\nfill in the mask, on held-out sentences:")
    for text, answer in job.held_out_fill_mask_examples(val_docs, tokenizer, seed=args.seed):
        (predictions,) = job.fill_mask(model, tokenizer, text)
        shown = ", ".join(f"{token} {p:.2f}" for token, p in predictions)
        print(f"  {text}\n    answer: {answer}   predicted: {shown}")
    return 0
