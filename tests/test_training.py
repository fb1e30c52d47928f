"""The training loop: accumulation, resume, atomic checkpoints, divergence, early stopping."""

import json
import os

import numpy as np
import pytest

from minibert.data.pretraining import ArrayDataset, DynamicMasking, Masker, VocabularyInfo
from minibert.modeling import BertForPreTraining
from minibert.training import (
    Task,
    Trainer,
    TrainingArguments,
    TrainingDiverged,
    evaluate_pretraining,
    latest_checkpoint,
)

from conftest import tiny_config


VOCAB = VocabularyInfo(vocab_size=31, pad_id=0, cls_id=2, sep_id=3, mask_id=4,
                       never_selected=np.array([0, 2, 3, 4]), replacement_ids=np.arange(5, 31),
                       is_continuation=np.zeros(31, bool))


def counting_examples(n, length=10, seed=0, masked=False):
    """Synthetic examples: each sequence counts upwards from a random start, so a masked token
    is predictable from its neighbours (there is something to learn)."""
    rng = np.random.default_rng(seed)
    ids = 5 + (rng.integers(0, 26, (n, 1)) + np.arange(length)) % 26
    ids[:, 0], ids[:, length // 2] = VOCAB.cls_id, VOCAB.sep_id
    mask = np.ones_like(ids)
    mask[::3, -3:] = 0
    ids[mask == 0] = VOCAB.pad_id
    types = np.zeros_like(ids)
    types[:, length // 2 + 1:] = 1
    arrays = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
              "next_sentence_label": rng.integers(0, 2, n)}
    if masked:                                           # static masks, fixed per example
        arrays["input_ids"], arrays["labels"] = Masker(VOCAB, masked_lm_prob=0.3)(ids, rng)
    return arrays


def dataset(n, batch_size=4, seed=0, masked=False, shuffle=True):
    return ArrayDataset(counting_examples(n, seed=seed, masked=masked), batch_size, shuffle=shuffle, seed=seed,
                        drop_last=True)


def masking(seed=0):
    return DynamicMasking(Masker(VOCAB, masked_lm_prob=0.3), seed=seed)


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), max_steps=6, learning_rate=1e-3,
                  warmup_steps=2, eval_every=3, log_every=1, progress=False, seed=3)
    values.update(overrides)
    return TrainingArguments(**values)


def _model(dtype=np.float32, **config):
    return BertForPreTraining(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **config),
                              seed=0, dtype=dtype)


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    batch = next(iter(dataset(8, batch_size=8, masked=True, shuffle=False)))
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    big = Trainer(_model(np.float64).eval(), _args(tmp_path), dataset(8, batch_size=8, masked=True))
    small = Trainer(_model(np.float64).eval(), _args(tmp_path, gradient_accumulation_steps=2),
                    dataset(8, masked=True))
    big.task._next_batch = lambda: batch                   # the same examples: one batch of 8 ...
    iterator = iter(halves)
    small.task._next_batch = lambda: next(iterator)        # ... or two micro-batches of 4
    grads = {}
    for name, trainer in (("big", big), ("small", small)):
        trainer.optimizer.step = lambda: None               # keep the gradients to compare
        trainer.optimizer.zero_grad = lambda: None
        record = trainer._train_step()
        grads[name] = ({n: p.grad.copy() for n, p in trainer.model.named_parameters()}, record["loss"])
    # the halves hold different numbers of masked tokens: plain averaging of the two would differ
    assert (halves[0]["labels"] != -100).sum() != (halves[1]["labels"] != -100).sum()
    assert grads["big"][1] == pytest.approx(grads["small"][1], rel=1e-12)
    for name, g in grads["big"][0].items():
        np.testing.assert_allclose(grads["small"][0][name], g, rtol=1e-9, atol=1e-13, err_msg=name)


def test_the_loop_weights_each_loss_of_a_task_by_its_own_items(tmp_path):
    """Two losses averaging over different items: micro-batch i's weight for each is its
    share n_i / n of that loss's items, and the step's losses are the shares' sums."""
    seen = []

    class TwoLosses(Task):
        def loss_items(self, batch):
            return {"a": batch["a_items"], "b": batch["b_items"]}

        def forward_backward(self, model, batch, weights):
            seen.append(weights)
            return {"a": batch["a_loss"], "b": batch["b_loss"]}

    trainer = Trainer(_model(), _args(tmp_path, checkpoints=False), task=TwoLosses())
    batches = [{"a_items": 1, "b_items": 2, "a_loss": 4.0, "b_loss": 1.0},
               {"a_items": 3, "b_items": 1, "a_loss": 8.0, "b_loss": 4.0}]
    losses = trainer.accumulate(batches, scale=8.0)
    assert seen == [{"a": 8.0 * 1 / 4, "b": 8.0 * 2 / 3}, {"a": 8.0 * 3 / 4, "b": 8.0 * 1 / 3}]
    assert losses == pytest.approx({"a": (1 * 4.0 + 3 * 8.0) / 4, "b": (2 * 1.0 + 1 * 4.0) / 3})
    seen.clear()                                         # nothing labelled in the whole step: no pass at all
    nothing = [dict(b, a_items=0, b_items=0) for b in batches]
    assert trainer.accumulate(nothing) == {"a": 0.0, "b": 0.0} and seen == []
    with pytest.raises(TypeError, match="train_dataset .* or a task"):
        Trainer(_model(), _args(tmp_path))


def test_each_step_uses_the_learning_rate_of_its_own_step(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=6, warmup_steps=2, eval_every=6), dataset(20),
                      masking=masking())
    summary = trainer.train()
    rates = [r["lr"] for r in summary["history"] if r["split"] == "train"]
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])   # up from 0 in 2 steps, then down


def test_loss_falls_and_files_are_written(tmp_path):
    model = BertForPreTraining(tiny_config(hidden_size=32, num_attention_heads=2, intermediate_size=64), seed=0)
    trainer = Trainer(model, _args(tmp_path, max_steps=40, eval_every=20, learning_rate=1e-2),
                      dataset(16, batch_size=8, masked=True), eval_dataset=dataset(12, seed=1, masked=True))
    summary = trainer.train()
    train_losses = [r["loss"] for r in summary["history"] if r["split"] == "train"]
    assert np.mean(train_losses[-5:]) < np.mean(train_losses[:5]) - 1.0
    run = tmp_path / "run"
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert {r["split"] for r in records} == {"train", "eval"}
    assert {"mlm_accuracy", "nsp_accuracy"} <= set(records[-1])
    checkpoint = latest_checkpoint(str(run))
    assert sorted(os.listdir(checkpoint)) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                              "trainer_state.json"]
    assert (run / "best_model" / "model.safetensors").exists()


def test_evaluation_averages_over_all_masked_tokens_and_sequences():
    model = _model()
    examples = counting_examples(12, seed=1, masked=True)
    metrics = evaluate_pretraining(model, ArrayDataset(examples, 4, shuffle=False))
    whole = model.forward(examples["input_ids"], examples["token_type_ids"], examples["attention_mask"],
                          labels=examples["labels"], next_sentence_label=examples["next_sentence_label"])
    assert metrics["masked_tokens"] == int((examples["labels"] != -100).sum()) and metrics["sequences"] == 12
    assert metrics["mlm_loss"] == pytest.approx(whole.mlm_loss, rel=1e-4)      # the loss of one batch of all 12
    assert metrics["nsp_loss"] == pytest.approx(whole.nsp_loss, rel=1e-4)


def test_resumed_run_continues_bit_for_bit(tmp_path):
    def run(folder):
        return Trainer(_model(), _args(tmp_path / folder, max_steps=8, eval_every=4), dataset(20),
                       dataset(8, seed=1, masked=True, shuffle=False), masking=masking())

    straight = run("a")
    straight.train()

    first = run("b")
    step_once = first._train_step

    def interrupted_after_step_4():
        if first.step == 4:                                # the checkpoint of step 4 is written
            raise KeyboardInterrupt("interrupted")
        return step_once()

    first._train_step = interrupted_after_step_4
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = run("b")
    resumed.train(resume_from=str(tmp_path / "b" / "run"))
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), dataset(20), masking=masking())
    trainer.train()
    good = latest_checkpoint(trainer.args.output_dir)
    before = open(os.path.join(good, "model.safetensors"), "rb").read()

    import minibert.training as training

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(training.st, "save_file", crash)    # dies while writing the optimizer state
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert latest_checkpoint(trainer.args.output_dir) == good
    assert open(os.path.join(good, "model.safetensors"), "rb").read() == before
    monkeypatch.undo()
    fresh = Trainer(_model(), _args(tmp_path, max_steps=3), dataset(20), masking=masking())
    fresh.load_checkpoint(trainer.args.output_dir)
    assert fresh.step == 3


def test_a_checkpoint_folder_that_fails_to_move_in_is_never_pointed_at(tmp_path, monkeypatch):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), dataset(20), masking=masking())
    trainer.train()
    good = latest_checkpoint(trainer.args.output_dir)
    replace = os.replace

    def crash_on_folders(source, destination):
        if os.path.isdir(source):
            raise KeyboardInterrupt("power cut")         # dies renaming the finished folder into place
        replace(source, destination)

    monkeypatch.setattr(os, "replace", crash_on_folders)
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert latest_checkpoint(trainer.args.output_dir) == good


def test_only_the_newest_checkpoint_is_kept(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=6, eval_every=2), dataset(20), masking=masking())
    trainer.train()
    run = trainer.args.output_dir
    assert [name for name in os.listdir(run) if name.startswith("checkpoint-")] == ["checkpoint-6"]


def test_nan_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), dataset(20, masked=True))
    trainer.train()
    good = latest_checkpoint(trainer.args.output_dir)
    trainer.model.bert.encoder.layer[0].output.dense.weight.data[0, 0] = np.nan
    trainer.args.max_steps = 10
    with pytest.raises(TrainingDiverged, match="not finite"):
        trainer.train()
    assert latest_checkpoint(trainer.args.output_dir) == good


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_an_infinite_gradient_with_a_finite_loss_stops_before_the_update(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), dataset(20, masked=True))
    backward = trainer.model.backward

    def overflowing_backward(*args, **kwargs):           # the loss stays finite, one gradient does not
        backward(*args, **kwargs)
        trainer.model.bert.encoder.layer[0].output.dense.weight.grad[0, 0] = np.inf

    trainer.model.backward = overflowing_backward
    with pytest.raises(TrainingDiverged, match="step 1: loss .* gradient norm inf"):
        trainer.train()
    assert all(np.isfinite(p.data).all() for p in trainer.model.parameters())


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("with_eval", [True, False])
def test_an_update_that_breaks_the_weights_is_never_checkpointed(tmp_path, with_eval):
    """The training loss of a step is computed before its update: an update that ruins the
    weights shows first in the validation loss (or in the weights themselves)."""
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), dataset(20, masked=True),
                      eval_dataset=dataset(8, seed=1, masked=True) if with_eval else None)
    trainer.train()
    good = latest_checkpoint(trainer.args.output_dir)
    before = open(os.path.join(good, "model.safetensors"), "rb").read()
    update = trainer.optimizer.step

    def ruinous_update():
        update()
        if trainer.step == 5:                            # the update of step 6, just before its evaluation
            trainer.model.bert.encoder.layer[0].output.dense.weight.data[0, 0] = np.inf

    trainer.optimizer.step = ruinous_update
    trainer.args.max_steps = 6
    expected = "validation loss is nan" if with_eval else "bert.encoder.layer.0.output.dense.weight"
    with pytest.raises(TrainingDiverged, match=expected):
        trainer.train()
    assert latest_checkpoint(trainer.args.output_dir) == good
    assert open(os.path.join(good, "model.safetensors"), "rb").read() == before


def test_a_damaged_checkpoint_leaves_the_trainer_untouched(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), dataset(20, masked=True))
    trainer.train()
    good = latest_checkpoint(trainer.args.output_dir)
    fresh = Trainer(BertForPreTraining(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
                                       seed=7), _args(tmp_path), dataset(20, masked=True))
    before = {name: p.data.copy() for name, p in fresh.model.named_parameters()}
    optimizer_file = os.path.join(good, "optimizer.safetensors")
    data = open(optimizer_file, "rb").read()
    with open(optimizer_file, "wb") as f:
        f.write(data[: len(data) // 2])                     # truncated
    with pytest.raises(ValueError, match="optimizer.safetensors"):
        fresh.load_checkpoint(good)
    assert fresh.step == 0
    assert all(np.array_equal(p.data, before[name]) for name, p in fresh.model.named_parameters())
    state_file = os.path.join(good, "trainer_state.json")
    state = json.loads(open(state_file).read())
    del state["step"]
    open(state_file, "w").write(json.dumps(state))
    with pytest.raises(ValueError, match="trainer_state.json is incomplete: no step"):
        fresh.load_checkpoint(good)


def test_a_damaged_checkpoint_pointer_is_named(tmp_path):
    (tmp_path / "latest_checkpoint.txt").write_text("checkpoint-")
    with pytest.raises(ValueError, match="latest_checkpoint.txt is damaged"):
        latest_checkpoint(str(tmp_path))


def test_early_stopping_with_patience(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=50, eval_every=1, learning_rate=1e-9, warmup_steps=0,
                                      patience=2), dataset(20, masked=True),
                      eval_dataset=dataset(8, seed=1, masked=True))
    summary = trainer.train()
    assert summary["stopped_early"] and summary["steps"] < 50
    losses = [r["loss"] for r in summary["history"] if r["split"] == "eval"]
    assert len(losses) - 1 - int(np.argmin(losses)) == 2          # stopped after exactly `patience` bad ones


@pytest.mark.parametrize("field, value", [("learning_rate", -1.0), ("max_steps", 0),
                                          ("gradient_accumulation_steps", 0), ("patience", 0),
                                          ("output_dir", None), ("restore_best", True)])
def test_invalid_hyperparameters(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingArguments(**{field: value})


def test_corrupt_or_mismatched_checkpoint(tmp_path):
    data = dataset(20, masked=True)
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), data)
    trainer.train()
    other = Trainer(_model(hidden_size=24, num_attention_heads=3), _args(tmp_path, max_steps=3), data)
    with pytest.raises(ValueError, match="hidden_size"):
        other.load_checkpoint(trainer.args.output_dir)
    checkpoint = latest_checkpoint(trainer.args.output_dir)
    with open(os.path.join(checkpoint, "trainer_state.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        Trainer(_model(), _args(tmp_path, max_steps=3), data).load_checkpoint(checkpoint)
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        Trainer(_model(), _args(tmp_path, max_steps=3), data).load_checkpoint(str(tmp_path))


def test_too_small_data_set(tmp_path):
    with pytest.raises(ValueError, match="holds no batch"):
        Trainer(_model(), _args(tmp_path), dataset(5, batch_size=32))


# ---------------------------------------------------------------------------- mixed precision
def test_fp16_training_lowers_the_loss_with_float32_weights(tmp_path):
    model = BertForPreTraining(tiny_config(hidden_size=32, num_attention_heads=2, intermediate_size=64), seed=0)
    trainer = Trainer(model, _args(tmp_path, max_steps=40, eval_every=20, learning_rate=1e-2, fp16=True),
                      dataset(16, batch_size=8, masked=True), eval_dataset=dataset(12, seed=1, masked=True))
    summary = trainer.train()
    train = [r for r in summary["history"] if r["split"] == "train"]
    assert np.mean([r["loss"] for r in train[-5:]]) < np.mean([r["loss"] for r in train[:5]]) - 1.0
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for _, p in model.named_parameters())
    assert model.bert.encoder.layer[0].intermediate.dense.compute_dtype == np.float16
    assert model.cls.predictions.decoder.compute_dtype == np.float16        # the tied decoder too
    assert train[-1]["loss_scale"] == 2.0 ** 16 and sum(r["skipped_steps"] for r in train) == 0


def test_fp16_overflow_skips_the_step_and_shrinks_the_scale(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, fp16=True), dataset(12, masked=True))
    trainer.scaler.scale = 2.0 ** 40          # float16 gradients overflow (max 65504) at this scale
    before = {n: p.data.copy() for n, p in trainer.model.named_parameters()}
    record = trainer._train_step()
    assert record["skipped"] and trainer.step == 1 and trainer.scaler.scale == 2.0 ** 39
    for name, p in trainer.model.named_parameters():                      # no update was made
        np.testing.assert_array_equal(p.data, before[name], err_msg=name)
        assert not p.grad.any(), name
    trainer.scaler.scale = 2.0 ** 8
    record = trainer._train_step()
    assert not record["skipped"] and np.isfinite(record["grad_norm"])
    assert any(not np.array_equal(p.data, before[n]) for n, p in trainer.model.named_parameters())


def test_fp16_gives_up_when_even_the_smallest_scale_overflows(tmp_path):
    trainer = Trainer(_model(), _args(tmp_path, fp16=True), dataset(12, masked=True))
    trainer.scaler.scale = trainer.scaler.min_scale
    trainer.model.bert.embeddings.word_embeddings.weight.data[:] = 3e4     # activations beyond float16
    trainer.model.bert.embeddings.LayerNorm.weight.data[:] = 3e4
    with pytest.raises(TrainingDiverged, match="overflow|not finite"):
        trainer._train_step()


def test_fp16_resume_restores_the_loss_scale(tmp_path):
    first = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3, fp16=True), dataset(12))
    first.task.masking = masking()
    first.scaler.scale, first.scaler.good_steps = 512.0, 7
    first.save_checkpoint()
    resumed = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3, fp16=True), dataset(12),
                      masking=masking())
    resumed.load_checkpoint(str(tmp_path / "run"))
    assert (resumed.scaler.scale, resumed.scaler.good_steps) == (512.0, 7)
