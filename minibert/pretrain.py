"""minibert's main job, in steps: text -> vocabulary -> examples -> model -> training -> results.

``minibert pretrain`` and ``examples/pretrain.py`` both run these steps; each is a small
function so the example can call them one by one, top to bottom::

    documents = load_documents(None)                      # the built-in corpus
    train_docs, val_docs = split_documents(documents, 0.05, seed)
    tokenizer = build_tokenizer(train_docs, run_dir, vocab_size=8000)
    data = build_datasets(train_docs, val_docs, tokenizer, max_seq_length=128, batch_size=32)
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tokenizer), ...))
    Trainer(model, args, data.train, data.validation, tokenizer, masking=data.masking).train()
    fill_mask(model, tokenizer, "the [MASK] of a function")

The defaults pretrain a tiny BERT (L2 H128 A2) in about ten minutes on two CPU cores.
RoBERTa's recipe (``RECIPES["roberta"]``) builds its data with ``build_datasets(...,
packed=True)``, and swaps the model for ``BertForMaskedLM`` and the task for
``training.MaskedLMTask`` (docs/roberta_recipe.md).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .data.corpus import load_corpus, split_documents
from .data.pretraining import (
    ArrayDataset,
    DynamicMasking,
    Masker,
    VocabularyInfo,
    create_examples,
    create_packed_examples,
    examples_to_arrays,
    tokenize_documents,
)
from .fill_mask import fill_mask  # noqa: F401  (a step of the job: query the trained model)
from .tokenization import BertTokenizer
from .vocab_trainer import save_vocab, train_wordpiece

# The defaults of `minibert pretrain` (and examples/pretrain.py). The learning rate, batch
# size, warm-up and sequence length were checked by sweeps at this budget (README, "How the
# defaults were chosen"): settings with a better held-out masked LM (lr 2e-3, 64-token
# sequences) fine-tuned worse, so these stayed.
DEFAULTS = dict(
    preset="tiny", vocab_size=8000, max_seq_length=128, batch_size=32, accumulation=1,
    learning_rate=1e-3, warmup_fraction=0.06, max_steps=2000, eval_every=250, eval_batches=20,
    patience=None, weight_decay=0.01, dupe_factor=3, validation_fraction=0.05, seed=0,
)

# The two recipes: what each sets. A value here is the default of its option, which the user
# may still override (``--recipe roberta --batch-size 64``); the Adam constants have no option.
#   bert:    masked LM + NSP on sentence pairs, Adam beta2 = 0.999.
#   roberta: masked LM alone on packed full sentences, beta2 = 0.98 (steadier with large
#            batches), 4x the batch (128 sequences) for 1/4 of the steps, so the same number
#            of 128-token sequences (the same compute) as bert's defaults, at 2x the learning
#            rate (the square-root rule for Adam: the gradient noise falls as 1/sqrt(batch)).
RECIPES = {
    "bert": dict(batch_size=DEFAULTS["batch_size"], learning_rate=DEFAULTS["learning_rate"],
                 max_steps=DEFAULTS["max_steps"], eval_every=DEFAULTS["eval_every"],
                 dupe_factor=DEFAULTS["dupe_factor"], adam_betas=(0.9, 0.999), adam_eps=1e-6),
    "roberta": dict(batch_size=128, learning_rate=2e-3, max_steps=500, eval_every=125,
                    dupe_factor=None, adam_betas=(0.9, 0.98), adam_eps=1e-6),
}


def load_documents(corpus=None, format="auto"):
    """Documents (lists of sentences): the built-in standard-library corpus, or a text file/folder."""
    return load_corpus(corpus, format)


def build_tokenizer(train_documents, run_dir, vocab=None, vocab_size=8000, save=True) -> BertTokenizer:
    """Load ``vocab`` (a vocab.txt or a folder), or train a WordPiece vocabulary on the training
    text and save it in ``run_dir/tokenizer`` (``save=False``, the other ranks of a data-parallel
    run: train the same one and leave the writing to rank 0)."""
    if vocab is not None:
        return BertTokenizer.from_pretrained(vocab)
    texts = (sentence for document in train_documents for sentence in document)
    tokens = train_wordpiece(texts, vocab_size=vocab_size)
    if not save:
        with tempfile.TemporaryDirectory() as folder:
            save_vocab(tokens, folder)
            return BertTokenizer.from_pretrained(folder)
    save_vocab(tokens, os.path.join(run_dir, "tokenizer"))
    return BertTokenizer.from_pretrained(os.path.join(run_dir, "tokenizer"))


@dataclass
class PretrainingData:
    train: ArrayDataset              # unmasked pairs: masks are drawn per batch (dynamic masking)
    validation: ArrayDataset         # pairs masked once, with a fixed seed (the same every evaluation)
    masking: DynamicMasking
    vocab: VocabularyInfo
    token_counts: Counter            # training-token frequencies (for the unigram baseline)
    seconds: float                   # time spent preparing the data


def build_datasets(train_documents, validation_documents, tokenizer, max_seq_length=128, batch_size=32,
                   dupe_factor=3, whole_word_masking=False, seed=0, packed=False) -> PretrainingData:
    """Tokenize once, make the examples, and the masking that training uses.

    BERT's recipe: NSP sentence pairs (``dupe_factor`` passes). ``packed``: RoBERTa's, full
    sentences packed across document boundaries, no NSP (``dupe_factor`` unused). Training
    masks are drawn afresh for every batch; the validation examples are masked once, from
    ``seed + 1``.
    """
    start = time.perf_counter()
    vocab = VocabularyInfo.from_tokenizer(tokenizer)
    masker = Masker(vocab, whole_word_masking=whole_word_masking)
    train_ids = tokenize_documents(train_documents, tokenizer)
    validation_ids = tokenize_documents(validation_documents, tokenizer)
    if packed:
        train = examples_to_arrays(create_packed_examples(train_ids, vocab, max_seq_length))
    else:
        train = examples_to_arrays(create_examples(train_ids, vocab, max_seq_length, dupe_factor=dupe_factor,
                                                   seed=seed))
    validation = validation_arrays(validation_ids, vocab, masker, max_seq_length, seed, packed)
    counts = Counter()
    for document in train_ids:
        for sentence in document:
            counts.update(sentence)
    return PretrainingData(
        train=ArrayDataset(train, batch_size, shuffle=True, seed=seed, drop_last=True),
        validation=ArrayDataset(validation, batch_size, shuffle=False),
        masking=DynamicMasking(masker, seed=seed),
        vocab=vocab, token_counts=counts, seconds=time.perf_counter() - start)


def validation_arrays(validation_ids, vocab, masker, max_seq_length, seed, packed=False) -> dict:
    """The held-out examples of a run with ``seed``: sentence pairs (or, ``packed``, packed
    sentences) masked once, from ``seed + 1``, so every evaluation scores the same masks."""
    make = create_packed_examples if packed else create_examples
    return examples_to_arrays(make(validation_ids, vocab, max_seq_length, masker=masker, seed=seed + 1))


def unigram_baseline(data: PretrainingData, max_batches=None) -> float:
    """MLM accuracy of always predicting the most frequent training token (the bar to clear)."""
    most_frequent, _ = data.token_counts.most_common(1)[0]
    data.validation.position = {"epoch": 0, "example": 0}
    hits = total = 0
    for i, batch in enumerate(data.validation):
        if max_batches is not None and i >= max_batches:
            break
        labels = batch["labels"][batch["labels"] != -100]
        hits += int((labels == most_frequent).sum())
        total += labels.size
    return hits / max(total, 1)


def held_out_fill_mask_examples(validation_documents, tokenizer, count=5, seed=0):
    """A few validation sentences with one whole word replaced by [MASK], and the word."""
    rng = np.random.default_rng(seed)
    sentences = [s for doc in validation_documents for s in doc if 6 <= len(s.split()) <= 18]
    examples = []
    for index in rng.permutation(len(sentences)):
        words = sentences[index].split()
        candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 2
                      and len(tokenizer.tokenize(w)) == 1]
        if not candidates:
            continue
        i = int(rng.choice(candidates))
        answer = words[i]
        words[i] = tokenizer.mask_token
        examples.append((" ".join(words), answer.lower()))
        if len(examples) == count:
            break
    return examples
