"""Bad input gets a clear error naming the argument, the expected and the actual value."""

import numpy as np
import pytest

from minibert.backend import cuda_available
from minibert.modeling import BertConfig, BertForPreTraining, BertModel

from conftest import tiny_config


@pytest.fixture(scope="module")
def model():
    return BertForPreTraining(tiny_config(), seed=0)


def test_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match=r"hidden_size \(10\) must be divisible by num_attention_heads \(3\)"):
        BertConfig(hidden_size=10, num_attention_heads=3)


@pytest.mark.parametrize("field, value", [("vocab_size", 0), ("num_hidden_layers", -1),
                                          ("hidden_dropout_prob", 1.0), ("hidden_act", "relu6"),
                                          ("attn_implementation", "sparse"), ("layer_norm_eps", -1.0),
                                          ("layer_norm_eps", 0.0), ("layer_norm_eps", "1e-12"),
                                          ("initializer_range", float("nan")), ("initializer_range", -0.02),
                                          ("initializer_range", "0.02"), ("hidden_dropout_prob", "0.1"),
                                          ("pad_token_id", 1.5), ("hidden_act", ["gelu"])])
def test_invalid_config_fields(field, value):
    with pytest.raises(ValueError, match=field):
        BertConfig(**{field: value})


def test_config_json_round_trip_keeps_unknown_fields(tmp_path):
    config = BertConfig.preset("mini", vocab_size=1000)
    config.extra["architectures"] = ["BertForPreTraining"]
    config.to_json_file(tmp_path / "config.json")
    again = BertConfig.from_json_file(tmp_path / "config.json")
    assert again == config
    assert (again.num_hidden_layers, again.hidden_size, again.num_attention_heads) == (4, 256, 4)


@pytest.mark.parametrize("values, message", [([1, 2], "JSON object"), ({"extra": [1]}, "'extra'")])
def test_config_that_is_not_an_object(values, message):
    with pytest.raises(ValueError, match=message):
        BertConfig.from_dict(values)


def test_config_for_another_architecture():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        BertConfig.from_dict({"model_type": "gpt2"})


def test_presets():
    sizes = {name: (c.num_hidden_layers, c.hidden_size, c.num_attention_heads)
             for name in ("tiny", "mini", "small", "base", "large") for c in [BertConfig.preset(name)]}
    assert sizes == {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8),
                     "base": (12, 768, 12), "large": (24, 1024, 16)}


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, sequence\), got shape \(5,\)"):
        model.forward(np.arange(5))


def test_ids_outside_vocabulary(model):
    with pytest.raises(ValueError, match=r"input_ids contains 31, outside \[0, 31\)"):
        model.forward(np.array([[1, 31]]))
    with pytest.raises(ValueError, match="input_ids contains -1"):
        model.forward(np.array([[1, -1]]))


def test_ragged_ids(model):
    with pytest.raises(ValueError, match="input_ids must be a rectangular array; .* need padding"):
        model.forward([[1, 2, 3], [1, 2]])


def test_float_ids(model):
    with pytest.raises(TypeError, match="input_ids must hold integers"):
        model.forward(np.array([[1.0, 2.0]]))


def test_sequence_too_long(model):
    with pytest.raises(ValueError, match=r"sequence length 17 exceeds max_position_embeddings \(16\)"):
        model.forward(np.zeros((1, 17), dtype=np.int64))
    out = model.forward(np.zeros((1, 16), dtype=np.int64))          # exactly max_position_embeddings: fine
    assert out.prediction_logits.shape == (1, 16, model.config.vocab_size)
    model.clear_caches()


def test_mask_of_wrong_shape(model):
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 4\) like input_ids, got \(2, 3\)"):
        model.forward(np.zeros((2, 4), dtype=np.int64), attention_mask=np.ones((2, 3)))


@pytest.mark.parametrize("mask", [[[1, 1, 2, 0]], [[1, 1, -1, 0]], [[1, np.nan, 1, 0]], [[1, 0.5, 1, 1]]])
def test_mask_values_other_than_zero_and_one(model, mask):
    with pytest.raises(ValueError, match=r"attention_mask must hold only 1 \(a real token\) and 0"):
        model.forward(np.zeros((1, 4), dtype=np.int64), attention_mask=np.array(mask))
    with pytest.raises(TypeError, match="attention_mask must hold numbers"):
        model.forward(np.zeros((1, 4), dtype=np.int64), attention_mask=np.array([["1", "1", "1", "0"]]))


def test_a_forward_that_fails_half_way_leaves_nothing_for_backward():
    """The NSP labels are checked after the encoder ran: backward must not then mix the
    failed batch's encoder caches with the previous batch's losses."""
    model = BertForPreTraining(tiny_config(), seed=0)
    ids = np.array([[2, 5, 6, 3], [2, 7, 8, 3]])
    model.forward(ids, labels=np.array([[-100, 5, -100, -100]] * 2), next_sentence_label=np.array([0, 1]))
    with pytest.raises(ValueError, match="next_sentence_label"):
        model.forward(ids[:, :3], next_sentence_label=np.array([0, 1, 1]))
    with pytest.raises(RuntimeError, match="without a forward pass"):
        model.backward()


def test_labels_of_wrong_shape_or_range(model):
    ids = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="labels must have shape"):
        model.forward(ids, labels=np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="labels contains 99"):
        model.forward(ids, labels=np.full((2, 4), 99))
    with pytest.raises(ValueError, match="next_sentence_label contains 2"):
        model.forward(ids, next_sentence_label=np.array([0, 2]))


def test_backward_without_forward_or_without_labels(model):
    fresh = BertForPreTraining(tiny_config(), seed=1)
    with pytest.raises(RuntimeError, match="without a forward pass"):
        fresh.backward()
    fresh.forward(np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(RuntimeError, match="needs a forward pass with labels"):
        fresh.backward()


def test_backward_twice_after_one_forward(model):
    ids = np.zeros((1, 3), dtype=np.int64)
    model.forward(ids, labels=np.array([[1, -100, 2]]))
    model.backward()
    with pytest.raises(RuntimeError, match="call backward once per forward"):
        model.backward()


def test_state_dict_errors(model):
    state = {k: v.copy() for k, v in model.state_dict().items()}
    other = BertForPreTraining(tiny_config(), seed=9)
    bad = dict(state)
    bad["cls.seq_relationship.weight"] = np.zeros((3, 12), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'cls.seq_relationship.weight' has shape \(3, 12\).*\(2, 12\)"):
        other.load_state_dict(bad)
    missing = dict(state)
    del missing["cls.predictions.bias"]
    with pytest.raises(KeyError, match="missing keys.*cls.predictions.bias"):
        other.load_state_dict(missing)
    extra = dict(state, **{"bert.something.else": np.zeros(1)})
    with pytest.raises(KeyError, match="unexpected keys.*bert.something.else"):
        other.load_state_dict(extra)
    missing_keys, unexpected = other.load_state_dict(extra, strict=False)
    assert unexpected == ["bert.something.else"] and missing_keys == []


def test_state_dict_round_trip_and_aliases():
    source = BertForPreTraining(tiny_config(), seed=1)
    target = BertForPreTraining(tiny_config(), seed=2)
    state = dict(source.state_dict())
    # old LayerNorm names and the explicit tied decoder weight are accepted
    state["bert.embeddings.LayerNorm.gamma"] = state.pop("bert.embeddings.LayerNorm.weight")
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    target.load_state_dict(state)
    for name, array in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[name], array)
    # the tie survives loading: decoder and embedding are one array
    assert target.cls.predictions.decoder.weight is target.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("bad", ["shape", "unexpected"])
def test_a_refused_state_dict_changes_nothing(bad):
    """Every entry is checked before any is copied: a refused load leaves the model as it was."""
    source = BertModel(tiny_config(), seed=1)
    target = BertModel(tiny_config(), seed=2)
    before = {name: array.copy() for name, array in target.state_dict().items()}
    state = dict(source.state_dict())                  # every good entry comes first
    if bad == "shape":
        state["pooler.dense.bias"] = np.zeros(3, np.float32)
        with pytest.raises(ValueError, match="'pooler.dense.bias' has shape \\(3,\\)"):
            target.load_state_dict(state)
    else:
        state["pooler.extra.weight"] = np.zeros(3, np.float32)
        with pytest.raises(KeyError, match="unexpected keys \\['pooler.extra.weight'\\]"):
            target.load_state_dict(state, strict=True)
    for name, array in target.state_dict().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)


def test_no_grad_nests_and_restores_the_mode_it_found():
    from minibert.nn import grad_enabled, no_grad

    model = BertModel(tiny_config(), seed=0)
    ids = np.ones((1, 3), np.int64)
    with no_grad():
        with no_grad():
            pass
        assert not grad_enabled()                      # the inner block ends, the outer still holds
        model.forward(ids)
        with pytest.raises(RuntimeError, match="without a forward pass that kept its cache"):
            h = model.config.hidden_size
            model.backward(np.ones((1, 3, h)), np.zeros((1, h)))
    assert grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert grad_enabled()                              # restored after an exception too


def test_float64_and_dtype_errors():
    model = BertModel(tiny_config(), dtype=np.float64)
    assert model.dtype == np.float64
    assert model.forward(np.zeros((1, 2), dtype=np.int64))[0].dtype == np.float64
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        BertModel(tiny_config(), dtype=np.int32)
    model.to(dtype=np.float32)
    assert model.forward(np.zeros((1, 2), dtype=np.int64))[0].dtype == np.float32
    assert all(p.grad.dtype == np.float32 and p.grad.shape == p.data.shape for p in model.parameters())


@pytest.mark.parametrize("seed", [None, "a", -5, 1.5])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        BertModel(tiny_config(), seed=seed)


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        BertModel(tiny_config(), device="tpu")


@pytest.mark.skipif(cuda_available(), reason="a GPU is present: the error path cannot be shown")
def test_cuda_without_gpu_fails_clearly():
    with pytest.raises(RuntimeError, match="device='cuda'"):
        BertModel(tiny_config(), device="cuda")
