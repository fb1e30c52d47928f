"""Pretrain a tiny BERT on the Python standard library's docstrings, top to bottom.

    python examples/pretrain.py                       # ~10 minutes on two CPU cores
    python examples/pretrain.py runs/quick --steps 100  # a one-minute look at every stage

The same job as `minibert pretrain` with its defaults, written out step by step so you can
read (and change) every stage: text -> WordPiece vocabulary -> sentence pairs with masks ->
model -> training loop -> evaluation -> fill-in-the-mask.
"""

import argparse
import os

from minibert import pretrain as job
from minibert.data.corpus import split_documents
from minibert.modeling import BertConfig, BertForPreTraining
from minibert.training import Trainer, TrainingArguments

SEED = 0
D = job.DEFAULTS
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("run_dir", nargs="?", default="runs/example-pretrain", help="where the run is written")
parser.add_argument("--steps", type=int, default=D["max_steps"], help=f"training steps (default {D['max_steps']})")
cli = parser.parse_args()
if cli.steps < 1:
    parser.error(f"--steps must be at least 1, got {cli.steps}")
RUN_DIR, STEPS = cli.run_dir, cli.steps

# 1. Text: every Python installation carries ~1.8 MB of English prose in its docstrings.
#    One document per module; a document is a list of sentences.
documents = job.load_documents(None)
train_docs, val_docs = split_documents(documents, D["validation_fraction"], SEED)   # split by document
print(f"{len(train_docs)} training documents, {len(val_docs)} held out")

# 2. Vocabulary: learn 8,000 WordPiece tokens from the training text (minibert/vocab_trainer.py).
os.makedirs(RUN_DIR, exist_ok=True)
tokenizer = job.build_tokenizer(train_docs, RUN_DIR, vocab_size=D["vocab_size"])
print(tokenizer.tokenize("Return the absolute value of the argument."))

# 3. Examples (minibert/data/pretraining.py): [CLS] A [SEP] B [SEP] pairs of up to 128 tokens,
#    B the real next text half of the time (NSP label 0) and a random document's otherwise (1).
#    Training pairs stay unmasked: `data.masking` picks new masked positions for every batch
#    (15% of tokens: 80% -> [MASK], 10% -> random token, 10% unchanged).
data = job.build_datasets(train_docs, val_docs, tokenizer, max_seq_length=D["max_seq_length"],
                          batch_size=D["batch_size"], dupe_factor=D["dupe_factor"], seed=SEED)
print(f"{data.train.num_examples} training pairs, {data.validation.num_examples} validation pairs "
      f"({data.seconds:.1f} s)")

# 4. Model: the "tiny" preset, L2 H128 A2, sized to our vocabulary.
config = BertConfig.preset(D["preset"], vocab_size=len(tokenizer), max_position_embeddings=D["max_seq_length"])
model = BertForPreTraining(config, seed=SEED)
print(f"{model.num_parameters():,} parameters")

# 5. Training (minibert/training.py): AdamW, linear warm-up then decay, gradient clipping,
#    evaluation every 250 steps, checkpoints in RUN_DIR.
args = TrainingArguments(output_dir=RUN_DIR, max_steps=STEPS, learning_rate=D["learning_rate"],
                         warmup_steps=int(D["warmup_fraction"] * STEPS), weight_decay=D["weight_decay"],
                         eval_every=min(D["eval_every"], STEPS), eval_batches=D["eval_batches"], seed=SEED)
trainer = Trainer(model, args, data.train, data.validation, tokenizer, masking=data.masking)
trainer.train()

# 6. How good is it? Compare with always guessing the most frequent token.
metrics = trainer.evaluate()
print(f"MLM accuracy {metrics['mlm_accuracy']:.3f} vs unigram baseline {job.unigram_baseline(data, 20):.3f}; "
      f"NSP accuracy {metrics['nsp_accuracy']:.3f}")

# 7. Fill in the mask on sentences the model never saw.
for text, answer in job.held_out_fill_mask_examples(val_docs, tokenizer):
    (predictions,) = job.fill_mask(model, tokenizer, text)
    print(f"{text}\n   answer {answer!r}, predicted " + ", ".join(f"{t} ({p:.2f})" for t, p in predictions))
