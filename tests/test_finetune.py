"""The fine-tuning loop: a short run lowers the loss, accumulation is exact, early stopping
restores the best weights, the metrics on known cases, the plot and the command."""

import json
import os

import numpy as np
import pytest

from minibert.cli import main as cli_main
from minibert.data.finetuning import encode_classification, read_classification_file
from minibert.finetune import (
    FineTuner,
    FineTuningArguments,
    accuracy,
    confusion_matrix,
    evaluate,
    finetune,
    format_confusion_matrix,
    macro_f1,
    squad_compute_metrics,
)
from minibert.data.finetuning import prepare_squad_features, read_squad
from minibert.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from minibert.modeling import BertConfig, BertForPreTraining
from minibert.training import TrainingDiverged

from test_finetuning_data import SENTIMENT, SQUAD, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer([open(SENTIMENT, encoding="utf-8").read()])


@pytest.fixture(scope="module")
def sentiment(tokenizer):
    data = read_classification_file(SENTIMENT, "text", "sentiment")
    return data, encode_classification(data, tokenizer, max_length=24)


def _config(tokenizer, **overrides):
    values = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return BertConfig(**values)


# ---------------------------------------------------------------------------- metrics
def test_accuracy_macro_f1_and_confusion_matrix_on_known_cases():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    matrix = confusion_matrix(predictions, labels, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]          # rows true, columns predicted
    # F1 per class: 0: 2*2/(4+0+1) = 0.8; 1: 2/(2+1+1) = 0.5; 2: 2/(2+1+0) = 2/3
    assert macro_f1(predictions, labels, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # a class absent from labels and predictions is left out; -100 is not counted
    assert macro_f1(np.array([0, 1, 5]), np.array([0, 1, -100]), 4) == 1.0
    assert accuracy(np.array([1, 2]), np.array([1, -100])) == 1.0
    text = format_confusion_matrix(matrix, ["neg", "neu", "pos"])
    assert "predicted" in text and text.splitlines()[2].split() == ["neg", "2", "1", "0"]


def test_evaluation_loss_does_not_depend_on_the_batch_size(tokenizer, sentiment):
    data, encoded = sentiment
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=2)
    val = encoded.subset(np.arange(8))
    # batches of 3, 3 and 2: a mean of the batch means would weight the last two examples more
    assert evaluate(model, val, batch_size=3)["loss"] == pytest.approx(evaluate(model, val, batch_size=8)["loss"],
                                                                       rel=1e-6)


# ---------------------------------------------------------------------------- the loop
def test_tens_of_steps_lower_the_loss(tokenizer, sentiment):
    data, encoded = sentiment
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=0)
    before = evaluate(model, encoded)["loss"]
    result = finetune(model, encoded, epochs=10, batch_size=8, learning_rate=1e-2, warmup_ratio=0.1,
                      progress=False)
    after = evaluate(model, encoded)["loss"]
    assert result.steps == 30                        # 24 examples / 8 = 3 steps per epoch
    assert after < 0.6 * before, (before, after)     # about 1.10 -> 0.49
    train_losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert np.mean(train_losses[-3:]) < np.mean(train_losses[:3])


def test_fp16_fine_tuning_lowers_the_loss_with_float32_weights(tokenizer, sentiment):
    _, encoded = sentiment
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=0)
    before = evaluate(model, encoded)["loss"]
    result = finetune(model, encoded, epochs=10, batch_size=8, learning_rate=1e-2, progress=False, fp16=True)
    assert evaluate(model, encoded)["loss"] < 0.8 * before
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for _, p in model.named_parameters())
    assert model.classifier.compute_dtype == np.float16
    train = [r for r in result.history if r["split"] == "train"]
    assert train[-1]["loss_scale"] == 2.0 ** 16 and sum(r["skipped_steps"] for r in train) == 0


def test_gradient_accumulation_equals_one_big_batch(tokenizer, sentiment):
    _, encoded = sentiment
    model = BertForTokenClassification(_config(tokenizer), num_labels=3, seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    batch = encoded.get_batch(np.arange(8))
    labels = rng.integers(0, 3, batch["input_ids"].shape)
    labels[batch["attention_mask"] == 0] = -100
    labels[:3, 2:] = -100                                   # uneven numbers of labelled tokens
    batch["labels"] = labels
    tuner = FineTuner(model, FineTuningArguments(progress=False), encoded)
    whole = tuner.accumulate([batch])
    full = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    parts = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    split = tuner.accumulate(parts)
    assert split == pytest.approx(whole, rel=1e-12)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, full[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_distillation_step_gradients_match_finite_differences(tokenizer, sentiment):
    """(1 - w) CE + w T^2 KL(teacher || student): the accumulated gradients are those of that loss."""
    from minibert import ops
    from minibert.gradcheck import gradcheck

    _, encoded = sentiment
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=4, dtype=np.float64)
    teacher = np.random.default_rng(5).standard_normal((len(encoded), 3)) * 2
    args = FineTuningArguments(progress=False, distillation_weight=0.7, distillation_temperature=2.0)
    tuner = FineTuner(model, args, encoded, teacher_logits=teacher)
    groups = [np.arange(0, 5), np.arange(5, 8)]
    batches = [encoded.get_batch(g) for g in groups]
    model.train()
    step_loss = tuner.accumulate(batches, [teacher[g] for g in groups])

    def loss():
        total = 0.0
        for g, batch in zip(groups, batches):
            logits = model.forward(**{k: v for k, v in batch.items() if k != "labels"}).logits
            model._pop_cache()                                  # forward only: drop the cache
            hard = ops.cross_entropy_forward(logits, batch["labels"])[0]
            soft = ops.distillation_forward(logits, teacher[g], 2.0)[0]
            total += len(g) / 8 * (0.3 * hard + 0.7 * soft)
        return total

    assert loss() == pytest.approx(step_loss, rel=1e-12)
    params = dict(model.named_parameters())
    names = ["classifier.weight", "bert.pooler.dense.weight", "bert.encoder.layer.1.attention.self.query.weight",
             "bert.embeddings.word_embeddings.weight"]
    gradcheck(loss, {n: params[n].data for n in names}, {n: params[n].grad for n in names},
              samples=20).raise_if_failed()


def test_distillation_recovery_moves_the_student_towards_the_teacher(tokenizer, sentiment):
    from minibert.finetune import predict

    _, encoded = sentiment
    teacher_model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=6)
    teacher = predict(teacher_model, encoded)
    student = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=7)

    def disagreement():
        return float(np.abs(predict(student, encoded) - teacher).mean())

    before = disagreement()
    args = FineTuningArguments(epochs=10, batch_size=8, learning_rate=1e-2, progress=False,
                               distillation_weight=1.0, distillation_temperature=1.0)
    FineTuner(student, args, encoded, teacher_logits=teacher).train()
    assert disagreement() < 0.5 * before
    with pytest.raises(ValueError, match="teacher_logits must have shape"):
        FineTuner(student, args, encoded, teacher_logits=teacher[:5])
    with pytest.raises(TypeError, match="sequence classifiers"):
        FineTuner(BertForTokenClassification(_config(tokenizer), num_labels=3), args, encoded, teacher_logits=teacher)
    with pytest.raises(ValueError, match="distillation_weight"):
        FineTuningArguments(distillation_weight=1.5)


def test_early_stopping_restores_the_best_weights(tokenizer, sentiment, tmp_path):
    data, encoded = sentiment
    train, val = encoded.subset(np.arange(16)), encoded.subset(np.arange(16, 24))
    model = BertForSequenceClassification(_config(tokenizer, hidden_dropout_prob=0.1), num_labels=3, seed=2)
    args = FineTuningArguments(epochs=30, batch_size=8, learning_rate=5e-3, eval_every=2, patience=2,
                               metric="loss", progress=False, output_dir=str(tmp_path))
    result = FineTuner(model, args, train, val).train()
    evals = [r for r in result.history if r["split"] == "eval"]
    assert result.stopped_early and result.steps < 60
    assert result.best_value == min(r["loss"] for r in evals)
    assert len(evals) - 1 - [r["loss"] for r in evals].index(result.best_value) == 2    # exactly `patience` bad ones
    assert evaluate(model, val)["loss"] == pytest.approx(result.best_value, rel=1e-5)   # best weights back
    assert os.path.isfile(tmp_path / "best_model" / "model.safetensors")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(result.history) and json.loads(lines[0])["split"] == "train"
    assert result.plot == str(tmp_path / "loss_curve.png") and os.path.getsize(result.plot) > 0


def test_accuracy_is_early_stopped_on_its_highest_value(tokenizer, sentiment):
    data, encoded = sentiment
    train, val = encoded.subset(np.arange(16)), encoded.subset(np.arange(16, 24))
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=2)
    args = FineTuningArguments(epochs=10, batch_size=8, learning_rate=5e-3, eval_every=1, progress=False)
    result = FineTuner(model, args, train, val).train()
    accuracies = [r["accuracy"] for r in result.history if r["split"] == "eval"]
    assert result.metric == "accuracy" and len(set(accuracies)) > 1
    assert result.best_value == max(accuracies)
    assert evaluate(model, val)["accuracy"] == max(accuracies)                 # the best weights are back


def test_without_restore_best_the_last_weights_stay(tokenizer, sentiment, tmp_path):
    data, encoded = sentiment
    train, val = encoded.subset(np.arange(16)), encoded.subset(np.arange(16, 24))
    model = BertForSequenceClassification(_config(tokenizer, hidden_dropout_prob=0.1), num_labels=3, seed=2)
    args = FineTuningArguments(epochs=30, batch_size=8, learning_rate=5e-3, eval_every=2, patience=2,
                               metric="loss", restore_best=False, progress=False, output_dir=str(tmp_path))
    result = FineTuner(model, args, train, val).train()
    last = [r for r in result.history if r["split"] == "eval"][-1]
    assert result.stopped_early and last["loss"] != result.best_value
    assert evaluate(model, val)["loss"] == pytest.approx(last["loss"], rel=1e-5)
    assert os.path.isfile(tmp_path / "final_model" / "model.safetensors")


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("eval_every, seen_at", [(1, "validation loss is nan"), (2, "step 4: loss nan")])
def test_divergence_keeps_and_saves_the_best_weights(tokenizer, sentiment, tmp_path, eval_every, seen_at):
    """Ruined weights after step 3's update show in step 3's validation (a NaN loss, whatever
    the accuracy of the NaN logits' argmax) or in step 4's training loss."""
    data, encoded = sentiment
    train, val = encoded.subset(np.arange(16)), encoded.subset(np.arange(16, 24))
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=2)
    args = FineTuningArguments(epochs=10, batch_size=4, learning_rate=1e-3, eval_every=eval_every,
                               metric="loss", progress=False, output_dir=str(tmp_path))
    tuner = FineTuner(model, args, train, val)
    update = tuner.optimizer.step

    def ruinous_update():
        update()
        if tuner.step == 2:                                   # the update of step 3
            model.bert.encoder.layer[0].output.dense.weight.data[0, 0] = np.inf

    tuner.optimizer.step = ruinous_update
    with pytest.raises(TrainingDiverged, match=seen_at) as error:
        tuner.train()
    assert "best validation (step 2) were kept" in str(error.value)
    best = [r for r in tuner.history if r["split"] == "eval" and r["step"] == 2][0]
    assert evaluate(model, val)["loss"] == pytest.approx(best["loss"], rel=1e-6)     # the model holds them
    saved = BertForSequenceClassification.from_pretrained(tmp_path / "best_model")
    assert evaluate(saved, val)["loss"] == pytest.approx(best["loss"], rel=1e-6)     # and they are on disk


def test_question_answering_steps_with_exact_match_and_f1_validation():
    examples = read_squad(SQUAD)[:6]                          # includes the long context's questions
    tokenizer = make_tokenizer([e.question + " " + e.context for e in examples])
    features = prepare_squad_features(examples, tokenizer, max_length=48, doc_stride=24, max_query_length=10)
    model = BertForQuestionAnswering(_config(tokenizer, max_position_embeddings=48), seed=0)
    args = FineTuningArguments(epochs=2, batch_size=8, learning_rate=1e-3, metric="f1", progress=False)
    result = FineTuner(model, args, features, features, compute_metrics=squad_compute_metrics(examples)).train()
    evals = [r for r in result.history if r["split"] == "eval"]
    assert len(evals) == 2 and all(0 <= r["f1"] <= 100 and 0 <= r["exact_match"] <= r["f1"] + 1e-9 for r in evals)
    assert result.metric == "f1" and result.best_value == max(r["f1"] for r in evals)


def test_a_metric_that_is_not_measured_is_refused_before_training(tokenizer, sentiment):
    _, encoded = sentiment
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=0)
    with pytest.raises(ValueError, match=r"metric 'acc' is not measured .* \['loss', 'accuracy', 'macro_f1'\]"):
        FineTuner(model, FineTuningArguments(metric="acc", progress=False), encoded, encoded)


def test_an_empty_validation_set_is_refused(tokenizer, sentiment):
    _, encoded = sentiment
    model = BertForSequenceClassification(_config(tokenizer), num_labels=3, seed=0)
    empty = encoded.subset([])
    with pytest.raises(ValueError, match="the validation set is empty"):
        FineTuner(model, FineTuningArguments(metric="loss", progress=False), encoded, empty)
    with pytest.raises(ValueError, match="the evaluation data set is empty"):
        evaluate(model, empty)                               # would report a perfect loss of 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        FineTuningArguments(batch_size=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        FineTuningArguments(warmup_ratio=1.5)


# ---------------------------------------------------------------------------- the command
def test_finetune_command_on_a_tiny_checkpoint(tokenizer, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    BertForPreTraining(_config(tokenizer), seed=3).save_pretrained(checkpoint, tokenizer=tokenizer)
    output = tmp_path / "run"
    code = cli_main(["finetune", "--model", str(checkpoint), "--train", SENTIMENT, "--text-column", "text",
                     "--label-column", "sentiment", "--validation", SENTIMENT, "--epochs", "2",
                     "--batch-size", "8", "--lr", "1e-3", "--accumulation", "2", "--max-length", "24",
                     "--no-progress", "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "validation accuracy" in printed and "macro-F1" in printed and "predicted" in printed
    results = json.loads((output / "results.json").read_text())
    assert results["labels"] == ["negative", "neutral", "positive"] and results["examples"] == 24
    saved = BertForSequenceClassification.from_pretrained(output / "best_model")
    assert saved.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert os.path.isfile(output / "best_model" / "vocab.txt")
    assert cli_main(["finetune", "--model", str(checkpoint), "--train", str(tmp_path / "none.csv")]) == 2
    capsys.readouterr()
    one_label = tmp_path / "one_label.csv"
    one_label.write_text("text,sentiment\ngood film,positive\nfine day,positive\nnice,positive\n")
    assert cli_main(["finetune", "--model", str(checkpoint), "--train", str(one_label), "--label-column",
                     "sentiment", "--no-progress", "--output", str(tmp_path / "run1")]) == 2
    assert "holds 1 distinct label(s) (positive); a classifier needs at least 2" in capsys.readouterr().err
    assert cli_main(["finetune", "--model", str(checkpoint), "--train", SENTIMENT, "--max-length", "2"]) == 2
    assert "--max-length must leave room for [CLS], a token and [SEP]" in capsys.readouterr().err


def test_finetune_keeps_the_model_without_output_and_never_overwrites_one(tokenizer, tmp_path, capsys,
                                                                          monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    BertForPreTraining(_config(tokenizer), seed=3).save_pretrained(checkpoint, tokenizer=tokenizer)
    monkeypatch.chdir(tmp_path)
    command = ["finetune", "--model", str(checkpoint), "--train", SENTIMENT, "--label-column", "sentiment",
               "--epochs", "1", "--batch-size", "8", "--max-length", "24", "--no-progress"]
    stem = os.path.splitext(os.path.basename(SENTIMENT))[0]
    for expected in (f"runs/finetune-{stem}", f"runs/finetune-{stem}-2"):     # numbered when taken
        assert cli_main(command) == 0
        printed = capsys.readouterr().out
        assert f"output: {expected}" in printed and f"saved: {expected}/best_model" in printed
        assert os.path.isfile(os.path.join(expected, "best_model", "model.safetensors"))
    assert cli_main([*command, "--output", f"runs/finetune-{stem}"]) == 2
    assert "already holds a fine-tuned model" in capsys.readouterr().err
