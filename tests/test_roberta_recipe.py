"""RoBERTa's pretraining recipe (``minibert pretrain --recipe roberta``): packed full sentences,
no NSP, dynamic masking, Adam beta2 = 0.98, larger batches; end to end on a tiny corpus."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibert import safetensors
from minibert.cli import main
from minibert.config import BertConfig
from minibert.data.corpus import CorpusError
from minibert.data.pretraining import (
    ArrayDataset,
    DynamicMasking,
    Masker,
    VocabularyInfo,
    create_packed_examples,
    encode_packed,
    examples_to_arrays,
    pack_sentences,
)
from minibert.heads import BertForMaskedLM
from minibert.modeling import BertForPreTraining
from minibert.training import MaskedLMTask, Trainer, TrainingArguments, evaluate_pretraining

from conftest import load_script
from test_pretrain_command import _pretrain, corpus  # noqa: F401  (the tiny corpus fixture)

PAD, UNK, CLS, SEP, MASK = range(5)
VOCAB_SIZE = 40


def tiny_vocab() -> VocabularyInfo:
    """Ids 0-4 the special tokens, 5-39 ordinary tokens."""
    return VocabularyInfo(vocab_size=VOCAB_SIZE, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK,
                          never_selected=np.array([PAD, CLS, SEP, MASK], dtype=np.int32),
                          replacement_ids=np.arange(5, VOCAB_SIZE, dtype=np.int32),
                          is_continuation=np.zeros(VOCAB_SIZE, dtype=bool))


def numbered_documents(lengths) -> list:
    """Documents of sentences whose tokens count up (5, 6, 7, ...): every token is unique."""
    counter, documents = 5, []
    for document in lengths:
        sentences = []
        for n in document:
            sentences.append(list(range(counter, counter + n)))
            counter += n
        documents.append(sentences)
    return documents


# --------------------------------------------------------------------------- packing
def test_packing_by_hand():
    docs = numbered_documents([[3, 2], [4], [5, 1]])       # 5-7 8-9 | 10-13 | 14-18 19
    assert pack_sentences(docs, max_seq_length=12, separator_id=SEP) == [
        [5, 6, 7, 8, 9, SEP, 10, 11, 12, 13],              # document 2 follows a separator
        [14, 15, 16, 17, 18, 19],                           # document 3 starts a sequence: none needed
    ]
    # a sentence longer than a sequence is cut into full pieces; the rest starts the next one
    assert pack_sentences(numbered_documents([[2], [9, 1]]), max_seq_length=6, separator_id=SEP) == [
        [5, 6], [7, 8, 9, 10], [11, 12, 13, 14], [15, 16]]


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.lists(st.integers(1, 15), min_size=1, max_size=6), min_size=1, max_size=8),
       max_seq_length=st.integers(4, 24))
def test_packing_loses_nothing_and_fills_every_sequence(lengths, max_seq_length):
    docs = numbered_documents(lengths)
    capacity = max_seq_length - 2
    sequences = pack_sentences(docs, max_seq_length, SEP)
    # every token once, in corpus order; the separators are the only extra tokens
    assert [t for s in sequences for t in s if t != SEP] == [t for d in docs for s in d for t in s]
    assert all(1 <= len(s) <= capacity and s[0] != SEP and s[-1] != SEP for s in sequences)
    # a separator stands exactly where a new document starts inside a sequence
    first_of_document = {d[0][0] for d in docs}
    for s in sequences:
        for i, token in enumerate(s):
            if token == SEP:
                assert s[i + 1] in first_of_document and s[i - 1] + 1 == s[i + 1]
            elif i > 0 and token in first_of_document:
                assert s[i - 1] == SEP
    # full: a sequence ends only where the next sentence (with its separator) would not fit
    sentence_of = {t: (d, i) for d, doc in enumerate(docs) for i, sent in enumerate(doc) for t in sent}
    for s, following in zip(sequences, sequences[1:]):
        d, i = sentence_of[following[0]]
        whole = docs[d][i]
        if following[0] != whole[0]:                     # the next sequence continues a long sentence
            continue
        separator = 1 if i == 0 else 0
        assert len(s) + separator + len(whole) > capacity


def test_packed_examples_cross_document_boundaries():
    vocab = tiny_vocab()
    docs = numbered_documents([[3], [2, 2], [3]])
    arrays = examples_to_arrays(create_packed_examples(docs, vocab, max_seq_length=12))
    assert arrays["input_ids"].tolist() == [
        [CLS, 5, 6, 7, SEP, 8, 9, 10, 11, SEP, PAD, PAD],  # two documents in one sequence
        [CLS, 12, 13, 14, SEP, PAD, PAD, PAD, PAD, PAD, PAD, PAD]]
    assert arrays["attention_mask"].tolist() == [[1] * 10 + [0] * 2, [1] * 5 + [0] * 7]
    assert not arrays["token_type_ids"].any()            # one segment
    assert "next_sentence_label" not in arrays and "labels" not in arrays
    masked = create_packed_examples(docs, vocab, max_seq_length=12, masker=Masker(vocab), seed=3)
    again = create_packed_examples(docs, vocab, max_seq_length=12, masker=Masker(vocab), seed=3)
    assert all((a["labels"] == b["labels"]).all() for a, b in zip(masked, again))   # a fixed validation set
    for example in masked:
        chosen = example["labels"] != -100
        assert chosen.sum() >= 1 and not np.isin(example["labels"][chosen], [PAD, CLS, SEP, MASK]).any()


def test_packing_refuses_what_it_cannot_pack():
    vocab = tiny_vocab()
    with pytest.raises(ValueError, match="max_seq_length must be at least 4"):
        pack_sentences(numbered_documents([[3]]), 3, SEP)
    with pytest.raises(CorpusError, match="no tokens to pack"):
        create_packed_examples([], vocab, 8)
    with pytest.raises(TypeError, match="tokenize_documents first"):
        create_packed_examples([["a sentence"]], vocab, 8)
    with pytest.raises(ValueError, match="more than max_seq_length=4"):
        encode_packed([5, 6, 7], 4, vocab)


# --------------------------------------------------------------------------- the task
def tiny_model(cls=BertForMaskedLM, seed=0):
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return cls(config, seed=seed)


def packed_data(batch_size, shuffle=True):
    vocab = tiny_vocab()
    docs = [[list(np.random.default_rng(d * 10 + i).integers(5, VOCAB_SIZE, size=5)) for i in range(3)]
            for d in range(8)]
    train = examples_to_arrays(create_packed_examples(docs, vocab, max_seq_length=16))
    validation = examples_to_arrays(create_packed_examples(docs[:3], vocab, max_seq_length=16,
                                                           masker=Masker(vocab), seed=1))
    return (ArrayDataset(train, batch_size, shuffle=shuffle, seed=0, drop_last=True),
            ArrayDataset(validation, batch_size, shuffle=False), DynamicMasking(Masker(vocab), seed=0))


def test_dynamic_masking_draws_new_masks_each_epoch():
    train, _, masking = packed_data(batch_size=100, shuffle=False)
    train.batch_size = train.num_examples                # one batch: the whole epoch
    task = MaskedLMTask(train, None, masking)
    (first,), (second,) = task.next_batches(), task.next_batches()
    assert train.position == {"epoch": 1, "example": train.num_examples}     # the second batch: epoch 1
    assert (first["attention_mask"] == second["attention_mask"]).all()
    restored = np.where(first["labels"] != -100, first["labels"], first["input_ids"])
    restored_again = np.where(second["labels"] != -100, second["labels"], second["input_ids"])
    assert (restored == restored_again).all()            # the same sequences ...
    assert (first["labels"] != second["labels"]).any()   # ... masked differently the second time


def test_the_task_has_one_loss_and_accumulates_exactly():
    train, validation, masking = packed_data(batch_size=4)
    batch = masking(next(iter(train)))
    task = MaskedLMTask(train, validation, masking)
    assert task.loss_items(batch) == {"mlm_loss": int((batch["labels"] != -100).sum())}

    def gradients(batches):
        model = tiny_model()
        trainer = Trainer(model, TrainingArguments(output_dir=None, checkpoints=False, progress=False),
                          task=MaskedLMTask(train, validation, masking))
        losses = trainer.accumulate(batches)
        return losses, {name: p.grad.copy() for name, p in model.named_parameters()}

    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    (one, whole), (two, split) = gradients([batch]), gradients(halves)
    assert list(one) == ["mlm_loss"] and one["mlm_loss"] == pytest.approx(two["mlm_loss"], rel=1e-5)
    for name in whole:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-4, atol=1e-6, err_msg=name)
    metrics = task.validate(tiny_model())
    assert set(metrics) == {"loss", "mlm_loss", "mlm_accuracy", "masked_tokens", "sequences"}


def test_evaluate_pretraining_without_nsp_scores_a_bert_for_pretraining_on_its_mlm_head():
    _, validation, _ = packed_data(batch_size=4)
    masked_lm, pretraining = tiny_model(BertForMaskedLM, seed=3), tiny_model(BertForPreTraining, seed=3)
    pretraining.load_state_dict(dict(masked_lm.state_dict()), strict=False)
    a, b = evaluate_pretraining(masked_lm, validation, nsp=False), evaluate_pretraining(pretraining, validation, nsp=False)
    assert a["masked_tokens"] > 0 and a["mlm_loss"] == pytest.approx(b["mlm_loss"], rel=1e-6)
    assert a["mlm_accuracy"] == b["mlm_accuracy"]
    # the same figures by hand, from every position's logits
    arrays = validation.arrays
    labels = arrays["labels"]
    logits = masked_lm.forward(arrays["input_ids"], arrays["token_type_ids"], arrays["attention_mask"]).logits
    logits = logits.astype(np.float64)[labels != -100]                       # (M, V)
    targets = labels[labels != -100]
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    assert a["masked_tokens"] == len(targets) and a["sequences"] == len(labels)
    assert a["mlm_loss"] == pytest.approx(-log_probs[np.arange(len(targets)), targets].mean(), rel=1e-4)
    assert a["mlm_accuracy"] == pytest.approx((logits.argmax(1) == targets).mean())


# --------------------------------------------------------------------------- the command
def test_the_roberta_recipe_end_to_end(corpus, tmp_path, capsys):  # noqa: F811
    assert _pretrain(corpus, tmp_path, "--recipe", "roberta", "--steps", "2", "--eval-every", "2") == 0
    printed = capsys.readouterr().out
    assert "validation at step 2, the last and the best: MLM loss" in printed and "NSP" not in printed
    assert "answer" in printed                                                  # the fill-mask demo ran
    run = tmp_path / "pretrain"
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"data_seconds", "train_seconds", "steps", "validation", "best_step",
                            "best_validation", "saved_model", "unigram_baseline_accuracy"}
    assert set(results["validation"]) == {"loss", "mlm_loss", "mlm_accuracy", "masked_tokens", "sequences"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "eval"}
    assert not any(key.startswith("nsp") for r in records for key in r)
    # the model has no NSP head and no pooler; it loads and fills masks
    weights = safetensors.load_file(str(run / "best_model" / "model.safetensors"))
    assert any(name.startswith("cls.predictions.") for name in weights)
    assert not any("seq_relationship" in name or "pooler" in name for name in weights)
    model = BertForMaskedLM.from_pretrained(str(run / "best_model"))
    assert not model.loading_info.missing_keys
    assert main(["fill-mask", str(run / "best_model"), "the [MASK] of a function"]) == 0
    # the recipe's optimizer constants and defaults, the user's batch size
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["args"]["adam_betas"] == [0.9, 0.98] and state["args"]["adam_eps"] == 1e-6
    shape = json.loads((run / "run_shape.json").read_text())
    assert shape["recipe"] == "roberta" and shape["batch_size"] == 4 and shape["dupe_factor"] is None
    # resuming keeps the recipe
    assert _pretrain(corpus, tmp_path, "--steps", "4", "--eval-every", "2", "--resume") == 2
    assert "--recipe 'roberta' -> 'bert'" in capsys.readouterr().err
    assert _pretrain(corpus, tmp_path, "--recipe", "roberta", "--steps", "4", "--eval-every", "2",
                     "--resume") == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 4


def test_the_recipes_set_their_defaults(monkeypatch):
    import minibert.cli_pretrain as cli

    seen = {}

    def record(args):
        cli.check_options(args)
        seen.update(vars(args))
        return 0

    monkeypatch.setattr(cli, "run_pretrain", record)
    for words, expected in [
        ([], dict(recipe="bert", batch_size=32, lr=1e-3, steps=2000, eval_every=250, dupe_factor=3)),
        (["--recipe", "roberta"], dict(batch_size=128, lr=2e-3, steps=500, eval_every=125, dupe_factor=None)),
        (["--recipe", "roberta", "--batch-size", "64", "--lr", "5e-4"], dict(batch_size=64, lr=5e-4, steps=500)),
    ]:
        from minibert.cli import build_parser

        args = build_parser().parse_args(["pretrain", *words])
        record(args)
        assert {k: seen[k] for k in expected} == expected


def test_options_without_meaning_in_the_recipe_are_refused(corpus, tmp_path, capsys):  # noqa: F811
    assert _pretrain(corpus, tmp_path, "--recipe", "roberta", "--dupe-factor", "2") == 2
    err = capsys.readouterr().err
    assert "--dupe-factor" in err and "--recipe roberta" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pretrain").exists()                               # refused before anything
    with pytest.raises(SystemExit):
        _pretrain(corpus, tmp_path, "--recipe", "xlnet")
    assert "invalid choice: 'xlnet'" in capsys.readouterr().err


def test_the_comparison_scores_both_models_on_both_held_out_sets(corpus, tmp_path, capsys):  # noqa: F811
    compare = load_script("benchmarks", "compare_recipes.py")
    for recipe in ("bert", "roberta"):
        assert _pretrain(corpus, tmp_path, "--recipe", recipe, "--name", recipe, "--steps", "2",
                         "--eval-every", "2", "--eval-batches", "100") == 0
    capsys.readouterr()
    assert compare.main([str(tmp_path / "bert"), str(tmp_path / "roberta")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| bert") or
            line.startswith("| roberta")]
    assert len(rows) == 2
    # each model on its own kind of held-out sequence gives its run's own last validation
    for row, column in zip(rows, (5, 6)):
        name = row.split("|")[1].strip()
        own = json.loads((tmp_path / name / "results.json").read_text())["validation"]
        loss, accuracy = row.split("|")[column].split("(")[0].split("/")
        assert float(loss) == pytest.approx(own["mlm_loss"], abs=6e-4)
        assert float(accuracy) == pytest.approx(own["mlm_accuracy"], abs=6e-4)


def test_runs_of_other_lengths_are_scored_on_the_same_held_out_sequences(corpus, tmp_path, capsys):  # noqa: F811
    compare = load_script("benchmarks", "compare_recipes.py")
    runs = {}
    for length in (24, 48):
        runs[length] = tmp_path / f"length{length}"
        assert _pretrain(corpus, tmp_path, "--name", runs[length].name, "--max-seq-length", str(length),
                         "--steps", "2", "--eval-every", "2", "--eval-batches", "100") == 0
    for length in (24, 48):                      # both runs on one length: that run's own validation
        capsys.readouterr()
        assert compare.main(["--max-seq-length", str(length), str(runs[24]), str(runs[48])]) == 0
        out = capsys.readouterr().out
        assert f"Held-out sequences of {length} tokens." in out
        row = next(line for line in out.splitlines() if line.startswith(f"| length{length} "))
        own = json.loads((runs[length] / "results.json").read_text())["validation"]
        loss, accuracy = row.split("|")[5].split("(")[0].split("/")
        assert float(loss) == pytest.approx(own["mlm_loss"], abs=6e-4)
        assert float(accuracy) == pytest.approx(own["mlm_accuracy"], abs=6e-4)
        other = next(line for line in out.splitlines() if line.startswith("| length") and line != row)
        assert other.split("|")[5] != row.split("|")[5]
    with pytest.raises(SystemExit, match="fewer than --max-seq-length 4096"):
        compare.main(["--max-seq-length", "4096", str(runs[24])])
