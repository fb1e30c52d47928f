"""The training loop: accumulation, resume, atomic checkpoints, divergence, early stopping."""

import json
import os

import numpy as np
import pytest

from minibert.modeling import BertForPreTraining
from minibert.training import Trainer, TrainingArguments, TrainingDiverged, latest_checkpoint

from conftest import tiny_config


class RandomPairs:
    """A random-access data set of synthetic pretraining examples (masks drawn from ``rng``).

    Each sequence counts upwards from a random start, so a masked token is predictable from
    its neighbours: there is something to learn.
    """

    def __init__(self, n, length=10, vocab=31, seed=0, static=False):
        self.static = static                               # masks fixed per example, not per batch
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, vocab - 5, (n, 1))
        self.ids = 5 + (starts + np.arange(length)) % (vocab - 5)
        self.ids[:, 0] = 2
        self.mask = np.ones_like(self.ids)
        self.mask[::3, -3:] = 0
        self.types = np.zeros_like(self.ids)
        self.types[:, length // 2:] = 1
        self.nsp = rng.integers(0, 2, n)

    def __len__(self):
        return len(self.ids)

    def get_batch(self, indices, rng):
        if self.static:
            return self._merge([self._masked([i], np.random.default_rng(int(i))) for i in indices])
        return self._masked(indices, rng)

    @staticmethod
    def _merge(parts):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _masked(self, indices, rng):
        ids = self.ids[indices].copy()
        labels = np.full_like(ids, -100)
        chosen = (rng.random(ids.shape) < 0.3) & (self.mask[indices] == 1)
        chosen[:, 0] = False
        labels[chosen] = ids[chosen]
        ids[chosen] = 4                                    # [MASK]
        return {"input_ids": ids, "token_type_ids": self.types[indices], "attention_mask": self.mask[indices],
                "labels": labels, "next_sentence_label": self.nsp[indices]}


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), batch_size=4, max_steps=6, learning_rate=1e-3,
                  warmup_steps=2, eval_every=3, log_every=1, progress=False, seed=3)
    values.update(overrides)
    return TrainingArguments(**values)


def _model(dtype=np.float32, **config):
    return BertForPreTraining(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **config),
                              seed=0, dtype=dtype)


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    data = RandomPairs(16)
    big = _model(np.float64).eval()
    small = _model(np.float64).eval()
    trainer_big = Trainer(big, _args(tmp_path, batch_size=8), data)
    trainer_small = Trainer(small, _args(tmp_path, batch_size=4, gradient_accumulation_steps=2), data)
    # same examples in the same order: one batch of 8 vs two of 4 (masks drawn per example row)
    batch = data.get_batch(np.arange(8), np.random.default_rng(0))
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    trainer_big._next_batch = lambda: batch
    iterator = iter(halves)
    trainer_small._next_batch = lambda: next(iterator)
    grads = {}
    for name, trainer in (("big", trainer_big), ("small", trainer_small)):
        trainer.optimizer.step = lambda: None               # keep the gradients to compare
        trainer.optimizer.zero_grad = lambda: None
        record = trainer._train_step()
        grads[name] = ({n: p.grad.copy() for n, p in trainer.model.named_parameters()}, record["loss"])
    assert grads["big"][1] == pytest.approx(grads["small"][1], rel=1e-12)
    for name, g in grads["big"][0].items():
        np.testing.assert_allclose(grads["small"][0][name], g, rtol=1e-9, atol=1e-13, err_msg=name)


def test_loss_falls_and_files_are_written(tmp_path):
    data = RandomPairs(16, static=True)
    model = BertForPreTraining(tiny_config(hidden_size=32, num_attention_heads=2, intermediate_size=64), seed=0)
    trainer = Trainer(model, _args(tmp_path, batch_size=8, max_steps=40, eval_every=20, learning_rate=1e-2),
                      data, eval_dataset=RandomPairs(12, seed=1))
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


def test_resumed_run_continues_bit_for_bit(tmp_path):
    data, evaluation = RandomPairs(20), RandomPairs(8, seed=1)
    straight = Trainer(_model(), _args(tmp_path / "a", max_steps=8, eval_every=4), data, evaluation)
    straight.train()

    first = Trainer(_model(), _args(tmp_path / "b", max_steps=8, eval_every=4), data, evaluation)
    step_once = first._train_step

    def interrupted_after_step_4():
        if first.step == 4:                                # the checkpoint of step 4 is written
            raise KeyboardInterrupt("interrupted")
        return step_once()

    first._train_step = interrupted_after_step_4
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = Trainer(_model(), _args(tmp_path / "b", max_steps=8, eval_every=4), data, evaluation)
    resumed.train(resume_from=str(tmp_path / "b" / "run"))
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    data = RandomPairs(20)
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), data)
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
    fresh = Trainer(_model(), _args(tmp_path, max_steps=3), data)
    fresh.load_checkpoint(trainer.args.output_dir)
    assert fresh.step == 3


def test_nan_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    data = RandomPairs(20)
    trainer = Trainer(_model(), _args(tmp_path, max_steps=3, eval_every=3), data)
    trainer.train()
    good = latest_checkpoint(trainer.args.output_dir)
    trainer.model.bert.encoder.layer[0].output.dense.weight.data[0, 0] = np.nan
    trainer.args.max_steps = 10
    with pytest.raises(TrainingDiverged, match="not finite"):
        trainer.train()
    assert latest_checkpoint(trainer.args.output_dir) == good


def test_early_stopping_with_patience(tmp_path):
    data = RandomPairs(20)
    trainer = Trainer(_model(), _args(tmp_path, max_steps=50, eval_every=1, learning_rate=1e-9, warmup_steps=0,
                                      patience=2), data, eval_dataset=RandomPairs(8, seed=1))
    summary = trainer.train()
    assert summary["stopped_early"] and summary["steps"] < 50


@pytest.mark.parametrize("field, value", [("learning_rate", -1.0), ("batch_size", 0),
                                          ("gradient_accumulation_steps", 0), ("patience", 0)])
def test_invalid_hyperparameters(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingArguments(**{field: value})


def test_corrupt_or_mismatched_checkpoint(tmp_path):
    data = RandomPairs(20)
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
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(_model(), _args(tmp_path, batch_size=32), RandomPairs(5))
