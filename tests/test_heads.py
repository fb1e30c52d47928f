"""The fine-tuning heads: finite-difference checks of every head and loss, names, loading, bad input.

With PyTorch and transformers installed, the ``reference`` tests load the same weights into
transformers' class of the same name and compare loss, logits and every gradient by name.
"""

import numpy as np
import pytest

from minibert.gradcheck import gradcheck
from minibert.heads import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from minibert.modeling import BertConfig, BertForPreTraining
from minibert.ops.mse import mse_backward, mse_forward
from minibert.gradcheck import check_op

from conftest import tiny_config

F64 = np.float64


def _batch(config, rng, batch=3, length=8):
    """ids (never the padding id 0: its embedding row gets no gradient by design), types, a padded mask."""
    ids = rng.integers(1, config.vocab_size, (batch, length))
    types = np.zeros_like(ids)
    types[:, length // 2:] = 1
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, types, mask


def _labels_for(kind, config, rng, batch=3, length=8):
    if kind == "classification":
        return {"labels": np.array([2, 0, 1])}
    if kind == "regression":
        return {"labels": rng.standard_normal(batch)}
    if kind == "token":
        labels = rng.integers(0, 4, (batch, length))
        labels[:, 0] = -100                               # [CLS]
        labels[0, 3:5] = -100                             # continuation pieces
        labels[1, 6:] = -100                              # padding
        labels[2, 3:] = -100
        return {"labels": labels}
    if kind == "qa":
        return {"start_positions": np.array([3, 0, 1]), "end_positions": np.array([5, 0, 2])}
    labels = np.full((batch, length), -100)
    labels[0, [1, 5]] = [3, 7]
    labels[1, 2] = 11
    labels[2, 1] = 4
    return {"labels": labels}


def _model(kind, config, seed=0, dtype=F64):
    if kind == "classification":
        return BertForSequenceClassification(config, num_labels=3, seed=seed, dtype=dtype)
    if kind == "regression":
        return BertForSequenceClassification(config, num_labels=1, seed=seed, dtype=dtype)
    if kind == "token":
        return BertForTokenClassification(config, num_labels=4, seed=seed, dtype=dtype)
    if kind == "qa":
        return BertForQuestionAnswering(config, seed=seed, dtype=dtype)
    return BertForMaskedLM(config, seed=seed, dtype=dtype)


KINDS = ["classification", "regression", "token", "qa", "mlm"]


def _perturbed(model, rng):
    for _, p in model.named_parameters():              # move biases/LayerNorms off their init values
        p.data += rng.standard_normal(p.data.shape) * 0.05
    return model


def _check_all_parameters(model, loss, samples=5):
    params = dict(model.named_parameters())
    gradcheck(loss, {n: p.data for n, p in params.items()}, {n: p.grad.copy() for n, p in params.items()},
              samples=samples).raise_if_failed()


# ---------------------------------------------------------------------------- gradient checks
def test_mse_op():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((4, 3))

    def forward(pred):
        loss, cache = mse_forward(pred, target)
        return np.array(loss), cache

    check_op(forward, lambda g, cache: mse_backward(float(g), cache), [rng.standard_normal((4, 3))],
             samples=None).raise_if_failed()
    loss, _ = mse_forward(np.array([1.0, 3.0]), np.array([0.0, 1.0]))
    assert loss == pytest.approx(2.5)
    with pytest.raises(ValueError, match="shape"):
        mse_forward(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("kind", KINDS)
def test_loss_gradients_of_every_parameter(kind, rng):
    config = tiny_config()
    model = _perturbed(_model(kind, config, seed=3), rng)
    ids, types, mask = _batch(config, rng)
    labels = _labels_for(kind, config, rng)
    out = model.forward(ids, types, mask, **labels)
    assert np.isfinite(out.loss)
    model.zero_grad()
    model.backward()
    _check_all_parameters(model, lambda: model.forward(ids, types, mask, **labels).loss)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_of_your_own_logits_gradient(kind, rng):
    config = tiny_config()
    model = _perturbed(_model(kind, config, seed=5), rng)
    ids, types, mask = _batch(config, rng)
    labels = _labels_for(kind, config, rng) if kind == "mlm" else {}   # MLM: gathered (M, V) logits
    logits = model.forward(ids, types, mask, **labels).logits
    g = rng.standard_normal(logits.shape)
    model.zero_grad()
    model.backward(g)
    _check_all_parameters(model, lambda: float((model.forward(ids, types, mask, **labels).logits * g).sum()),
                          samples=4)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_weight_scales_the_gradient(kind, rng):
    config = tiny_config()
    model = _model(kind, config, seed=1)
    ids, types, mask = _batch(config, rng)
    labels = _labels_for(kind, config, rng)
    model.forward(ids, types, mask, **labels)
    model.zero_grad()
    model.backward()
    full = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.forward(ids, types, mask, **labels)
    model.zero_grad()
    model.backward(loss_weight=0.25)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 0.25 * full[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_gathered_mlm_equals_scoring_every_position(rng):
    config = tiny_config()
    model = BertForMaskedLM(config, seed=2, dtype=F64)
    ids, types, mask = _batch(config, rng)
    labels = _labels_for("mlm", config, rng)["labels"]
    out = model.forward(ids, types, mask, labels=labels)
    full = model.forward(ids, types, mask).logits.reshape(-1, config.vocab_size)   # (B*T, V)
    np.testing.assert_allclose(out.logits, full[out.masked_positions], rtol=1e-12)
    flat = labels.reshape(-1)
    rows = np.flatnonzero(flat != -100)
    logp = full - full.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    assert out.loss == pytest.approx(-logp[rows, flat[rows]].mean(), rel=1e-12)


def test_question_answering_loss_is_the_mean_of_start_and_end(rng):
    config = tiny_config()
    model = BertForQuestionAnswering(config, dtype=F64)
    ids, types, mask = _batch(config, rng)
    start, end = np.array([3, 0, 1]), np.array([5, 0, 2])
    out = model.forward(ids, types, mask, start_positions=start, end_positions=end)

    def ce(logits, targets):
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return -logp[np.arange(len(targets)), targets].mean()

    expected = (ce(out.start_logits, start) + ce(out.end_logits, end)) / 2
    assert out.loss == pytest.approx(expected, rel=1e-12)
    assert out.start_logits.shape == out.end_logits.shape == ids.shape


# ---------------------------------------------------------------------------- names and shapes
def test_parameter_names_are_the_hugging_face_keys():
    config = tiny_config()
    names = {kind: {n for n, _ in _model(kind, config).named_parameters()} for kind in KINDS}
    encoder = {n for n in names["classification"] if n.startswith("bert.") and "pooler" not in n}
    assert names["classification"] - encoder == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                 "classifier.weight", "classifier.bias"}
    assert names["token"] - encoder == {"classifier.weight", "classifier.bias"}
    assert names["qa"] - encoder == {"qa_outputs.weight", "qa_outputs.bias"}
    assert names["mlm"] - encoder == {
        "cls.predictions.bias", "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias"}
    mlm = BertForMaskedLM(config)
    aliases = mlm.state_dict_aliases()
    assert aliases["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"
    assert aliases["cls.predictions.decoder.bias"] == "cls.predictions.bias"
    shapes = {n: p.shape for n, p in _model("token", config).named_parameters()}
    assert shapes["classifier.weight"] == (4, config.hidden_size)
    assert dict(_model("qa", config).named_parameters())["qa_outputs.weight"].shape == (2, config.hidden_size)


def test_labels_are_kept_in_the_config_as_transformers_writes_them():
    config = tiny_config()
    model = BertForSequenceClassification(config, id2label=["negative", "neutral", "positive"])
    assert model.num_labels == 3
    assert model.config.extra["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert model.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    assert model.id2label[2] == "positive"
    assert model.config.extra["problem_type"] == "single_label_classification"
    assert "id2label" not in config.extra                  # the caller's config is not changed
    assert BertForSequenceClassification(config).num_labels == 2
    assert BertForSequenceClassification(config, num_labels=1).problem_type == "regression"
    with pytest.raises(ValueError, match="id2label names 2 labels but num_labels is 3"):
        BertForSequenceClassification(config, num_labels=3, id2label=["a", "b"])
    with pytest.raises(ValueError, match="problem_type"):
        BertForSequenceClassification(config, problem_type="multi_label_classification")
    with pytest.raises(ValueError, match="num_labels"):
        BertForTokenClassification(config, num_labels=0)


def test_dropout_is_active_in_training_mode_only(rng):
    config = tiny_config(hidden_dropout_prob=0.3)
    model = BertForSequenceClassification(config, num_labels=3, dtype=F64)
    ids, types, mask = _batch(config, rng)
    model.train()
    a, b = model.forward(ids).logits, model.forward(ids).logits
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(model.forward(ids).logits, model.forward(ids).logits)


# ---------------------------------------------------------------------------- bad input
def test_labels_outside_the_label_set_are_errors(rng):
    config = tiny_config()
    ids, types, mask = _batch(config, rng)
    with pytest.raises(ValueError, match=r"labels contains 3, but there are 3 labels"):
        _model("classification", config).forward(ids, labels=np.array([0, 3, 1]))
    with pytest.raises(ValueError, match=r"labels contains -2, but there are 4 token labels"):
        _model("token", config).forward(ids, labels=np.full(ids.shape, -2))
    with pytest.raises(ValueError, match=r"start_positions contains 8, .* length 8"):
        _model("qa", config).forward(ids, start_positions=np.array([8, 0, 0]), end_positions=np.zeros(3, int))
    with pytest.raises(ValueError, match=r"labels contains 31"):
        _model("mlm", config).forward(ids, labels=np.full(ids.shape, 31))
    with pytest.raises(ValueError, match=r"must have shape \(3,\)"):
        _model("classification", config).forward(ids, labels=np.array([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        _model("classification", config).forward(ids, labels=np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"regression labels must have shape \(3,\)"):
        _model("regression", config).forward(ids, labels=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="both start_positions and end_positions"):
        _model("qa", config).forward(ids, start_positions=np.zeros(3, int))


def test_backward_needs_labels_or_a_gradient_of_the_right_shape(rng):
    config = tiny_config()
    ids, _, _ = _batch(config, rng)
    model = _model("classification", config)
    model.forward(ids)
    with pytest.raises(RuntimeError, match="no loss"):
        model.backward()
    model.forward(ids)
    with pytest.raises(ValueError, match=r"dlogits must have shape \(3, 3\)"):
        model.backward(np.zeros((3, 2)))
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.zeros((3, 3)))                   # the cache was consumed


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_loads_the_encoder_and_reports_the_new_head(kind, tmp_path, rng):
    config = tiny_config()
    pretrained = BertForPreTraining(config, seed=9)
    pretrained.save_pretrained(tmp_path)
    cls = type(_model(kind, config))
    extra = {"num_labels": 1} if kind == "regression" else {"num_labels": 4} if kind == "token" else {}
    with pytest.warns(UserWarning):
        model = cls.from_pretrained(tmp_path, **extra)
    source = pretrained.state_dict()
    for name, array in model.state_dict().items():
        if name in source:
            np.testing.assert_array_equal(array, source[name], err_msg=name)
    info = model.loading_info
    expected_missing = {"classification": ["classifier.weight", "classifier.bias"],
                        "regression": ["classifier.weight", "classifier.bias"],
                        "token": ["classifier.weight", "classifier.bias"],
                        "qa": ["qa_outputs.weight", "qa_outputs.bias"], "mlm": []}[kind]
    assert sorted(info.missing_keys) == sorted(expected_missing)
    unexpected = set(info.unexpected_keys)
    assert {k for k in unexpected if not k.startswith("cls.")} <= {"bert.pooler.dense.weight",
                                                                  "bert.pooler.dense.bias"}
    if kind == "mlm":
        assert unexpected == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                              "cls.seq_relationship.weight", "cls.seq_relationship.bias"}


def test_a_saved_classifier_loads_back_with_its_labels(tmp_path, rng):
    config = tiny_config()
    model = BertForSequenceClassification(config, id2label={0: "neg", 1: "pos"}, seed=4, dtype=F64)
    model.save_pretrained(tmp_path)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path, dtype=F64)
    assert loaded.num_labels == 2 and loaded.id2label == {0: "neg", 1: "pos"}
    assert loaded.loading_info.missing_keys == [] and loaded.loading_info.unexpected_keys == []
    ids, _, mask = _batch(config, rng)
    np.testing.assert_array_equal(loaded.forward(ids, None, mask).logits, model.eval().forward(ids, None, mask).logits)
    regression = BertForSequenceClassification(config, num_labels=1)
    regression.save_pretrained(tmp_path / "regression")
    assert BertForSequenceClassification.from_pretrained(tmp_path / "regression").problem_type == "regression"
    with pytest.raises(ValueError, match="id2label names 2 labels but num_labels is 3"):
        BertForSequenceClassification.from_pretrained(tmp_path, id2label=["a", "b"], num_labels=3)
    with pytest.raises(ValueError, match="the checkpoint's head has 2 outputs, this model 3 .* num_labels=2"):
        BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3)


# ---------------------------------------------------------------------------- transformers parity
def _transformers():
    torch = pytest.importorskip("torch", reason="the reference tests need PyTorch")
    transformers = pytest.importorskip("transformers", reason="the reference tests need transformers")
    return torch, transformers


REFERENCE_CLASSES = {"classification": "BertForSequenceClassification",
                     "regression": "BertForSequenceClassification",
                     "token": "BertForTokenClassification", "qa": "BertForQuestionAnswering",
                     "mlm": "BertForMaskedLM"}


def _reference_config():
    return BertConfig(vocab_size=67, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                      intermediate_size=40, max_position_embeddings=24, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


@pytest.mark.reference
@pytest.mark.parametrize("kind", KINDS)
def test_loss_logits_and_every_gradient_match_transformers(kind):
    torch, transformers = _transformers()
    config = _reference_config()
    rng = np.random.default_rng(7)
    ours = _perturbed(_model(kind, config, seed=11), rng)
    values = {k: v for k, v in ours.config.to_dict().items() if k not in ("model_type", "attn_implementation")}
    hf_config = transformers.BertConfig(**values, attn_implementation="eager")
    theirs = getattr(transformers, REFERENCE_CLASSES[kind])(hf_config).double().eval()
    state = {name: torch.from_numpy(np.array(array)) for name, array in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}, missing
    assert not unexpected, unexpected

    ids, types, mask = _batch(config, rng, batch=4, length=11)
    labels = _labels_for(kind, config, rng, batch=4, length=11)
    if kind in ("classification", "qa"):                  # one more row for the batch of 4
        labels = {k: np.append(v, 1) for k, v in labels.items()}
    out = ours.forward(ids, types, mask, **labels)
    ours.zero_grad()
    ours.backward()
    ref = theirs(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                 attention_mask=torch.from_numpy(mask), **{k: torch.from_numpy(v) for k, v in labels.items()})
    ref.loss.backward()

    np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-10)
    if kind == "qa":
        np.testing.assert_allclose(out.start_logits, ref.start_logits.detach().numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.end_logits, ref.end_logits.detach().numpy(), rtol=1e-9, atol=1e-12)
    else:
        ref_logits = ref.logits.detach().numpy()
        if kind == "mlm":
            ref_logits = ref_logits.reshape(-1, config.vocab_size)[out.masked_positions]
        np.testing.assert_allclose(out.logits, ref_logits, rtol=1e-9, atol=1e-12)
    ref_grads = {name: p.grad.numpy() for name, p in theirs.named_parameters() if p.grad is not None}
    names = {name for name, _ in ours.named_parameters()}
    assert names == set(ref_grads), names ^ set(ref_grads)
    for name, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad, ref_grads[name], rtol=1e-7, atol=1e-11, err_msg=name)


@pytest.mark.reference
def test_transformers_reads_a_saved_classifier_with_its_labels(tmp_path):
    torch, transformers = _transformers()
    config = _reference_config()
    ours = BertForSequenceClassification(config, id2label=["neg", "neu", "pos"], seed=2, dtype=F64)
    ours.save_pretrained(tmp_path)
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path).double().eval()
    assert theirs.config.num_labels == 3 and theirs.config.id2label[2] == "pos"
    ids, types, mask = _batch(config, np.random.default_rng(0))
    with torch.no_grad():
        ref = theirs(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                     attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(ours.eval().forward(ids, types, mask).logits, ref, rtol=1e-6, atol=1e-7)


def test_classifier_dropout_gradient_in_training_mode():
    # the heads' other gradient checks run in eval mode; here the classifier's dropout is live
    rng = np.random.default_rng(0)
    config = tiny_config()
    config.extra["classifier_dropout"] = 0.5
    model = BertForSequenceClassification(config, num_labels=3, seed=2, dtype=F64).train()
    for _, p in model.named_parameters():
        p.data += 0.05 * rng.standard_normal(p.data.shape)
    ids, types, mask = _batch(config, rng)
    labels = np.array([2, 0, 1])
    state = model.random.get_state()

    def loss():
        model.random.set_state(state)                          # the same dropout masks every call
        return model.forward(ids, types, mask, labels=labels).loss

    loss()
    model.zero_grad()
    model.backward()
    params = dict(model.named_parameters())
    names = ["classifier.weight", "bert.pooler.dense.weight"]
    gradcheck(loss, {n: params[n].data for n in names}, {n: params[n].grad.copy() for n in names},
              samples=10).raise_if_failed()


def test_loss_weight_scales_a_given_logits_gradient():
    rng = np.random.default_rng(0)
    config = tiny_config()
    model = BertForSequenceClassification(config, num_labels=3, seed=1, dtype=F64)
    ids, types, mask = _batch(config, rng)
    dlogits = rng.standard_normal((3, 3))
    model.forward(ids, types, mask)
    model.zero_grad()
    model.backward(dlogits)
    full = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.forward(ids, types, mask)
    model.zero_grad()
    model.backward(dlogits, loss_weight=0.25)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 0.25 * full[n], rtol=1e-12, atol=1e-15, err_msg=n)


def test_masked_lm_label_zero_is_a_label_and_other_negatives_are_refused():
    rng = np.random.default_rng(0)
    config = tiny_config()
    model = BertForMaskedLM(config, seed=1, dtype=F64)
    ids, types, mask = _batch(config, rng)
    labels = np.full(ids.shape, -100)
    labels[0, 2] = 0                                           # token id 0 is a real target
    labels[1, 1] = 5
    out = model.forward(ids, types, mask, labels=labels)
    np.testing.assert_array_equal(out.masked_positions, [2, 9])
    labels[2, 1] = -5
    with pytest.raises(ValueError, match="-5"):
        model.forward(ids, types, mask, labels=labels)
