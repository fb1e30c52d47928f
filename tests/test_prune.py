"""Pruning: magnitude masks that hold, head importance against finite differences, head selection,
and a pruned model that saves and loads back."""

import numpy as np
import pytest

from minibert.data.finetuning import EncodedDataset
from minibert.finetune import FineTuner, FineTuningArguments
from minibert.heads import BertForSequenceClassification
from minibert.optim import AdamW
from minibert.prune import (
    MagnitudePruner,
    encoder_sparsity,
    encoder_weight_names,
    head_counts,
    head_gate_gradients,
    head_importance,
    heads_for_fraction,
    measure,
    prune_heads_by_importance,
    select_heads_to_prune,
)

from conftest import tiny_config

F64 = np.float64


def _classifier(dtype=F64, seed=0, **overrides):
    model = BertForSequenceClassification(tiny_config(**overrides), num_labels=3, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 10)
    for _, p in model.named_parameters():          # move LayerNorms and biases off their initial values
        p.data += (rng.standard_normal(p.data.shape) * 0.05).astype(p.data.dtype)
    return model


def _dataset(config, rng, n=12, length=7):
    ids = rng.integers(1, config.vocab_size, (n, length)).astype(np.int32)
    mask = np.ones((n, length), dtype=np.int32)
    mask[1::3, 5:] = 0                             # some padded rows
    ids[mask == 0] = 0
    return EncodedDataset({"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
                           "labels": rng.integers(0, 3, n).astype(np.int64)})


# ============================================================================ magnitude pruning
def test_encoder_weight_names_are_the_six_matrices_of_every_layer():
    model = _classifier()
    names = encoder_weight_names(model)
    assert len(names) == 6 * model.config.num_hidden_layers
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert "bert.encoder.layer.1.output.dense.weight" in names
    assert not any("embeddings" in n or "LayerNorm" in n or n.endswith("bias") or "pooler" in n for n in names)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.37, 0.5, 0.9])
def test_magnitude_pruning_hits_the_target_exactly_with_a_global_threshold(sparsity):
    model = _classifier(dtype=np.float32)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    pruner = MagnitudePruner(model, sparsity)
    total = sum(before[n].size for n in encoder_weight_names(model))
    assert pruner.total == total
    assert pruner.pruned == int(round(sparsity * total))
    assert pruner.measured_sparsity() == pytest.approx(pruner.pruned / total)
    assert encoder_sparsity(model) == pytest.approx(pruner.pruned / total)
    # global: every pruned weight is at most as large as every kept one, across matrices
    pruned = np.concatenate([np.abs(before[n])[pruner.masks[n] == 0] for n in pruner.masks])
    kept = np.concatenate([np.abs(before[n])[pruner.masks[n] == 1] for n in pruner.masks])
    if pruned.size:
        assert pruned.max() <= kept.min()
    # everything else is untouched
    for name, p in model.named_parameters():
        if name not in pruner.masks:
            np.testing.assert_array_equal(p.data, before[name])


def test_masks_stay_fixed_during_fine_tuning(rng):
    model = _classifier(dtype=np.float32, hidden_dropout_prob=0.1)
    data = _dataset(model.config, rng)
    pruner = MagnitudePruner(model, 0.5)
    zeros = {n: pruner.masks[n] == 0 for n in pruner.masks}
    start = {n: p.data.copy() for n, p in model.named_parameters()}
    optimizer = pruner.wrap(AdamW(model.named_parameters(), lr=1e-2, weight_decay=0.01))
    args = FineTuningArguments(epochs=3, batch_size=4, learning_rate=1e-2, progress=False, seed=1)
    FineTuner(model, args, data, optimizer=optimizer).train()
    params = dict(model.named_parameters())
    for name, where in zeros.items():
        assert np.all(params[name].data[where] == 0), name                       # still exactly zero
        assert not np.allclose(params[name].data[~where], start[name][~where])   # the others trained
    state = optimizer.state_dict()
    for name, where in zeros.items():                    # masked gradients: no moments build up for pruned weights
        assert not state[f"m.{name}"][where].any() and not state[f"v.{name}"][where].any(), name
    assert pruner.measured_sparsity() == pytest.approx(0.5, abs=1 / pruner.total)
    assert 0 < optimizer.lr < 1e-2 and optimizer.step_count == 9   # schedule and steps reached the wrapped one


def test_a_second_pruner_extends_the_first_mask():
    model = _classifier(dtype=np.float32)
    first = MagnitudePruner(model, 0.3)
    second = MagnitudePruner(model, 0.6)
    for name in first.masks:
        assert np.all(second.masks[name][first.masks[name] == 0] == 0)


def test_gradual_pruning_follows_the_cubic_ramp_and_keeps_its_zeros(rng):
    model = _classifier(dtype=np.float32, hidden_dropout_prob=0.1)
    data = _dataset(model.config, rng)
    pruner = MagnitudePruner(model, 0.6, ramp_steps=4)
    assert pruner.current_sparsity == 0.0 and pruner.pruned == 0               # nothing pruned yet
    assert [round(pruner.sparsity_after(t), 6) for t in range(6)] == [0.0, 0.346875, 0.525, 0.590625, 0.6, 0.6]
    levels, zero_sets = [], []
    optimizer = pruner.wrap(AdamW(model.named_parameters(), lr=1e-2))
    args = FineTuningArguments(epochs=3, batch_size=4, learning_rate=1e-2, progress=False, seed=1)
    tuner = FineTuner(model, args, data, optimizer=optimizer)
    original_step = optimizer.step

    def recording_step():
        original_step()
        levels.append(pruner.measured_sparsity())
        zero_sets.append({n: p.data == 0 for n, p in pruner.params.items()})

    optimizer.step = recording_step
    tuner.train()
    expected = [pruner.sparsity_after(t) for t in range(1, 10)]
    np.testing.assert_allclose(levels, expected, atol=1.5 / pruner.total)      # the ramp, then the plateau
    for before, after in zip(zero_sets, zero_sets[1:]):                        # a pruned weight stays pruned
        for name in before:
            assert np.all(after[name][before[name]]), name
    with pytest.raises(ValueError, match="ramp_steps"):
        MagnitudePruner(model, 0.5, ramp_steps=-1)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
def test_sparsity_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        MagnitudePruner(_classifier(), bad)


def test_sparsity_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError):
        MagnitudePruner(_classifier(), "0.5")


# ============================================================================ head importance
def _loss_with_gate(model, batch, layer, current_head, gate):
    """The loss with one head's context multiplied by ``gate``: scaling its value rows (and bias)
    scales V_h and so its context P_h V_h linearly."""
    value = model.bert.encoder.layer[layer].attention.self.value
    d = model.config.head_size
    rows = slice(current_head * d, (current_head + 1) * d)
    w, b = value.weight.data[rows].copy(), value.bias.data[rows].copy()
    value.weight.data[rows] *= gate
    value.bias.data[rows] *= gate
    loss = model.forward(**batch).loss
    model.clear_caches()
    value.weight.data[rows], value.bias.data[rows] = w, b
    return loss


def test_head_gate_gradient_matches_finite_differences(rng):
    model = _classifier().eval()
    batch = _dataset(model.config, rng, n=5).get_batch(np.arange(5))
    gates = head_gate_gradients(model, batch)                     # (B, L, N)
    model.zero_grad()
    assert gates.shape == (5, 2, 3) and np.isfinite(gates).all()
    eps = 1e-5
    for layer in range(2):
        for head in range(3):
            numeric = (_loss_with_gate(model, batch, layer, head, 1 + eps)
                       - _loss_with_gate(model, batch, layer, head, 1 - eps)) / (2 * eps)
            assert gates[:, layer, head].sum() == pytest.approx(numeric, rel=1e-6, abs=1e-10)


def test_gate_gradients_after_pruning_use_the_original_numbering(rng):
    model = _classifier().eval()
    model.bert.prune_heads({0: [1]})
    batch = _dataset(model.config, rng, n=4).get_batch(np.arange(4))
    gates = head_gate_gradients(model, batch)
    model.zero_grad()
    assert np.isnan(gates[:, 0, 1]).all() and not np.isnan(gates[:, 0, [0, 2]]).any()
    eps = 1e-5
    # original head 2 of layer 0 is now the layer's second head (index 1)
    numeric = (_loss_with_gate(model, batch, 0, 1, 1 + eps) - _loss_with_gate(model, batch, 0, 1, 1 - eps)) / (2 * eps)
    assert gates[:, 0, 2].sum() == pytest.approx(numeric, rel=1e-6, abs=1e-10)


def test_head_importance_is_a_normalised_mean_of_absolute_gradients(rng):
    model = _classifier()
    data = _dataset(model.config, rng, n=10)
    raw = head_importance(model, data, batch_size=4, normalize_layers=False)
    expected = np.zeros((2, 3))
    for start in range(0, 10, 4):
        rows = np.arange(start, min(start + 4, 10))
        expected += np.abs(head_gate_gradients(model, data.get_batch(rows)) * len(rows)).sum(axis=0)
    model.zero_grad()
    np.testing.assert_allclose(raw, expected / 10, rtol=1e-10)
    normalised = head_importance(model, data, batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0)
    assert model.training                                           # mode restored
    assert all(not p.grad.any() for p in model.parameters())        # gradients left at zero


# ============================================================================ pruning by importance
def test_selection_takes_the_lowest_scores_but_keeps_one_head_per_layer():
    importance = np.array([[0.1, 0.2, 0.3],
                           [0.9, 0.8, 0.7]])
    assert select_heads_to_prune(importance, 2) == {0: [0, 1]}
    # the third lowest is layer 0's last head: passed over for the next one
    assert select_heads_to_prune(importance, 3) == {0: [0, 1], 1: [2]}
    assert select_heads_to_prune(importance, 4) == {0: [0, 1], 1: [1, 2]}
    assert select_heads_to_prune(importance, 0) == {}
    with pytest.raises(ValueError, match="at most 4"):
        select_heads_to_prune(importance, 5)
    already = np.array([[np.nan, 0.5, 0.1], [0.2, np.nan, np.nan]])   # layer 1 has one head left
    assert select_heads_to_prune(already, 1) == {0: [2]}
    with pytest.raises(ValueError, match="at most 1"):
        select_heads_to_prune(already, 2)


def test_prune_by_importance_removes_the_lowest_heads_and_never_a_whole_layer(rng):
    model = _classifier()
    data = _dataset(model.config, rng)
    importance = head_importance(model, data, batch_size=6)
    assert heads_for_fraction(model, 0.5) == 3
    removed = prune_heads_by_importance(model, importance, 3)
    assert sum(len(h) for h in removed.values()) == 3
    assert all(count >= 1 for count in head_counts(model))
    kept = [importance[l, h] for l in range(2) for h in range(3) if h not in removed.get(l, [])]
    lost = [importance[l, h] for l, heads in removed.items() for h in heads]
    counts = head_counts(model)
    # every removed head scores below every kept head, except a layer's protected last head
    protected = [importance[l, h] for l in range(2) for h in range(3)
                 if counts[l] == 1 and h not in removed.get(l, [])]
    assert max(lost) <= min(v for v in kept if v not in protected)
    assert model.config.extra["pruned_heads"] == {str(l): h for l, h in removed.items()}
    again = head_importance(model, data, batch_size=6)
    assert np.isnan(again).sum() == 3
    prune_heads_by_importance(model, again, 1)                      # 3 heads left: one more goes
    assert head_counts(model) == [1, 1]
    with pytest.raises(ValueError, match="at most 0"):
        prune_heads_by_importance(model, head_importance(model, data, batch_size=6), 1)


def test_a_pruned_model_saves_and_loads_back_with_identical_outputs(rng, tmp_path):
    model = _classifier(dtype=np.float32)
    data = _dataset(model.config, rng)
    prune_heads_by_importance(model, head_importance(model, data, batch_size=6), 2)
    pruner = MagnitudePruner(model, 0.4)
    model.save_pretrained(tmp_path / "pruned")
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "pruned")
    assert loaded.config.extra["pruned_heads"] == model.config.extra["pruned_heads"]
    assert head_counts(loaded) == head_counts(model)
    assert loaded.num_parameters() == model.num_parameters()
    assert encoder_sparsity(loaded) == pytest.approx(pruner.pruned / pruner.total)
    batch = data.get_batch(np.arange(len(data)))
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    np.testing.assert_array_equal(loaded.eval().forward(**inputs).logits, model.eval().forward(**inputs).logits)


def test_measure_reports_a_smaller_model_after_head_pruning(rng):
    model = _classifier(dtype=np.float32)
    data = _dataset(model.config, rng)
    batches = [data.get_batch(np.arange(6))]
    before = measure(model, "dense", batches, data, repeats=1)
    prune_heads_by_importance(model, head_importance(model, data), 3)
    after = measure(model, "pruned", batches, data, repeats=1)
    assert after.heads == before.heads - 3 == 3
    assert after.parameters == before.parameters - 3 * 4 * model.config.head_size * model.config.hidden_size \
        - 3 * 3 * model.config.head_size                       # Q/K/V rows + biases and output columns
    assert after.file_bytes < before.file_bytes
    assert 0.0 <= after.accuracy <= 1.0 and after.seconds_per_batch > 0


def test_pruning_one_model_leaves_others_built_from_the_same_config_alone(tmp_path):
    from minibert.modeling import BertModel

    config = tiny_config()
    teacher, student = BertModel(config, seed=0), BertModel(config, seed=0)
    student.prune_heads({0: [0]})
    assert teacher.config.extra == {} and config.extra == {}
    assert [layer.attention.self.num_heads for layer in teacher.encoder.layer] == [3, 3]
    teacher.save_pretrained(tmp_path)
    BertModel.from_pretrained(tmp_path)                           # loads: its config says nothing pruned
    assert BertModel(config).encoder.layer[0].attention.self.num_heads == 3
    classifier = BertForSequenceClassification(config, num_labels=2)
    classifier.bert.prune_heads({1: [2]})                         # the head model saves what its encoder did
    assert classifier.config.extra["pruned_heads"] == {"1": [2]}


def test_a_prune_that_fails_changes_nothing():
    from minibert.modeling import BertModel

    model = BertModel(tiny_config(), seed=0)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"head\(s\) \[9\] do not exist"):
        model.prune_heads({0: [0], 1: [9]})
    with pytest.raises(ValueError, match="cannot prune every head of layer 0"):
        model.prune_heads({0: [0, 1], "0": [2]})                  # the same layer twice, all three heads
    assert model.config.extra == {}
    assert all(np.array_equal(p.data, before[name]) for name, p in model.named_parameters())


def test_an_optimizer_made_before_pruning_says_so():
    from minibert.modeling import BertModel

    model = BertModel(tiny_config(), seed=0)
    optimizer = AdamW(model.named_parameters(), lr=1e-3)
    model.prune_heads({0: [1]})
    for _, p in model.named_parameters():
        p.grad = np.zeros_like(p.data)
    with pytest.raises(ValueError, match="changed \\(pruned\\?\\) after the optimizer was made"):
        optimizer.step()


def test_a_sparsity_just_below_one_still_keeps_a_weight():
    model = _classifier(dtype=np.float32)
    pruner = MagnitudePruner(model, 0.9999999)              # rounds to every weight: one is kept
    assert pruner.pruned == pruner.total - 1 and pruner.measured_sparsity() < 1.0


def test_importance_of_another_shape_is_named():
    from minibert.modeling import BertModel

    with pytest.raises(ValueError, match=r"importance must have shape \(layers, heads\) = \(2, 3\)"):
        prune_heads_by_importance(BertModel(tiny_config()), np.ones((2, 5)), 3)
