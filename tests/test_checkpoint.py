"""Checkpoint folders: save/load round trips, real-world key variants, bad input, transformers."""

import json
import os
import warnings

import numpy as np
import pytest

from minibert import checkpoint
from minibert import safetensors as st
from minibert.modeling import BertConfig, BertForPreTraining, BertModel
from minibert.nn import no_grad

ENCODER_KEYS_IN_BASE = ("embeddings.", "encoder.", "pooler.")


def small_config(**overrides):
    values = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=32)
    values.update(overrides)
    return BertConfig(**values)


def _load_quietly(cls, directory, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(directory, output_loading_info=True, **kwargs)


def _assert_same_parameters(a, b, prefix_a="", prefix_b=""):
    pa = {k[len(prefix_a):]: v for k, v in a.state_dict().items() if k.startswith(prefix_a)}
    pb = {k[len(prefix_b):]: v for k, v in b.state_dict().items() if k.startswith(prefix_b)}
    assert set(pa) == set(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def _rewrite(directory, transform):
    """Rewrite model.safetensors through ``transform(dict) -> dict``."""
    path = os.path.join(directory, "model.safetensors")
    st.save_file(transform(st.load_file(path)), path, metadata={"format": "pt"})


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("cls", [BertForPreTraining, BertModel])
def test_save_load_round_trip(tmp_path, cls):
    model = cls(small_config(), seed=3)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == [cls.__name__]
    assert "attn_implementation" not in config          # transformers would reject "naive"
    assert "extra" not in config

    loaded, info = _load_quietly(cls, tmp_path, seed=99)  # another seed: values must come from the file
    _assert_same_parameters(model, loaded)
    assert info.missing_keys == [] and info.unexpected_keys == []
    reloaded = loaded.config.to_dict()
    assert reloaded.pop("architectures") == [cls.__name__]
    assert reloaded == model.config.to_dict()
    assert not loaded.training                            # loaded for inference, as transformers
    if cls is BertForPreTraining:                         # the tie survives loading
        assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    assert loaded.loading_info is info


def test_round_trip_float64_and_no_warning(tmp_path):
    model = BertForPreTraining(small_config(), seed=1, dtype=np.float64)
    model.save_pretrained(tmp_path)
    assert {i.dtype for i in st.read_header(tmp_path / "model.safetensors")[0].values()} == {"F64"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # a clean load warns about nothing
        loaded = BertForPreTraining.from_pretrained(tmp_path, dtype=np.float64)
    _assert_same_parameters(model, loaded)
    as32 = BertForPreTraining.from_pretrained(tmp_path)   # float64 file into a float32 model
    assert as32.dtype == np.float32


def test_outputs_identical_after_round_trip(tmp_path):
    model = BertForPreTraining(small_config(), seed=5).eval()
    ids = np.random.default_rng(0).integers(0, 40, size=(2, 7))
    with no_grad():
        before = model.forward(ids)
    model.save_pretrained(tmp_path)
    loaded = BertForPreTraining.from_pretrained(tmp_path)
    with no_grad():
        after = loaded.forward(ids)
    np.testing.assert_array_equal(before.prediction_logits, after.prediction_logits)
    np.testing.assert_array_equal(before.seq_relationship_logits, after.seq_relationship_logits)


def test_config_overrides_and_extra_fields(tmp_path):
    model = BertModel(small_config(extra={"_name_or_path": "x", "custom_field": 7}), seed=0)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_field"] == 7 and "_name_or_path" not in config
    loaded, _ = _load_quietly(BertModel, tmp_path, hidden_dropout_prob=0.0, attn_implementation="flash")
    assert loaded.config.hidden_dropout_prob == 0.0
    assert loaded.config.attn_implementation == "flash"
    with pytest.raises(ValueError, match="hidden_size"):
        BertModel.from_pretrained(tmp_path, hidden_size=15)


def test_save_overwrites_existing_folder(tmp_path):
    BertModel(small_config(), seed=0).save_pretrained(tmp_path)
    second = BertModel(small_config(), seed=1)
    second.save_pretrained(tmp_path)
    loaded, _ = _load_quietly(BertModel, tmp_path)
    _assert_same_parameters(second, loaded)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_interrupted_config_write_keeps_the_previous_config(tmp_path, monkeypatch):
    """config.json (and the index, tokenizer_config.json) go through a temporary file and a rename."""
    path = tmp_path / "config.json"
    path.write_text('{"old": true}')

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint._atomic_write_text(str(path), '{"new": true}')
    monkeypatch.undo()
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["config.json"]                 # no temporary file left


def test_shards_fill_up_to_the_limit_exactly():
    tensors = {name: np.zeros(2, np.float32) for name in "abcde"}   # 8 bytes each
    assert checkpoint._shards(tensors, 16) == [["a", "b"], ["c", "d"], ["e"]]
    assert checkpoint._shards(tensors, 15) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert checkpoint._shards({"big": np.zeros(10, np.float32), "a": np.zeros(2, np.float32)}, 16) == \
        [["big"], ["a"]]                                              # too big: a shard of its own
    assert checkpoint._shards(tensors, None) == [list("abcde")]


def test_save_with_tokenizer(tmp_path):
    from minibert.tokenization import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]
    tokenizer = BertTokenizer(tokens)
    model = BertModel(small_config(), seed=0)
    checkpoint.save_pretrained(model, tmp_path, tokenizer=tokenizer)
    assert (tmp_path / "vocab.txt").read_text().split("\n")[:6] == tokens[:5] + ["w0"]
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert settings["do_lower_case"] is True
    again = BertTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_save_with_vocabulary_only_tokenizer(tmp_path):
    class VocabOnly:
        do_lower_case = False
        mask_token = "[MASK]"

        def save_vocabulary(self, directory):
            path = os.path.join(directory, "vocab.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("[PAD]\n[UNK]\n")
            return (path,)

    checkpoint.save_pretrained(BertModel(small_config()), tmp_path, tokenizer=VocabOnly())
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert settings["do_lower_case"] is False and settings["tokenizer_class"] == "BertTokenizer"
    assert settings["unk_token"] == "[UNK]" and settings["model_max_length"] == 32


def test_save_into_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError):
        BertModel(small_config()).save_pretrained(target)


def test_save_with_something_that_is_not_a_tokenizer_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="tokenizer must be a BertTokenizer"):
        BertModel(small_config()).save_pretrained(tmp_path / "out", tokenizer="vocab.txt")
    assert not os.path.exists(tmp_path / "out")


def test_misspelt_keyword_of_from_pretrained_is_reported(tmp_path):
    BertModel(small_config()).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="'hiden_dropout_prob' is not a config field \\(did you mean "
                                         "'hidden_dropout_prob'\\?\\)"):
        model = BertModel.from_pretrained(tmp_path, hiden_dropout_prob=0.0)
    assert model.config.extra["hiden_dropout_prob"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # a known extra field: no warning
        BertModel.from_pretrained(tmp_path, num_labels=3)


# --------------------------------------------------------------------------- key variants
def test_base_checkpoint_into_pretraining_model(tmp_path):
    base = BertModel(small_config(), seed=2)
    base.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="fresh random initialisation"):
        model, info = BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    _assert_same_parameters(base, model.bert)
    assert sorted(info.missing_keys) == sorted(n for n, _ in model.named_parameters() if n.startswith("cls."))
    assert info.unexpected_keys == []
    assert info.renamed_keys["embeddings.word_embeddings.weight"] == "bert.embeddings.word_embeddings.weight"


def test_pretraining_checkpoint_into_base_model(tmp_path):
    full = BertForPreTraining(small_config(), seed=2)
    full.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="without its heads"):
        model, info = BertModel.from_pretrained(tmp_path, output_loading_info=True)
    _assert_same_parameters(full.bert, model)
    assert info.missing_keys == []
    assert sorted(info.unexpected_keys) == sorted(k for k in full.state_dict() if k.startswith("cls."))


def test_gamma_beta_buffers_and_tied_decoder(tmp_path):
    model = BertForPreTraining(small_config(), seed=4)
    model.save_pretrained(tmp_path)

    def old_style(tensors):
        out = {}
        for k, v in tensors.items():
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            out[k] = v
        out["bert.embeddings.position_ids"] = np.arange(32, dtype=np.int64)[None]
        out["bert.embeddings.token_type_ids"] = np.zeros((1, 32), np.int64)
        out["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
        return out

    _rewrite(tmp_path, old_style)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # all of these are silent
        loaded, info = BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    _assert_same_parameters(model, loaded)
    assert info.missing_keys == [] and info.unexpected_keys == []
    assert "bert.embeddings.position_ids" in info.ignored_keys
    assert "cls.predictions.decoder.weight" in info.ignored_keys
    assert info.renamed_keys["bert.embeddings.LayerNorm.gamma"] == "bert.embeddings.LayerNorm.weight"


def test_decoder_only_names_are_accepted(tmp_path):
    """A file naming the MLM bias only as decoder.bias still fills cls.predictions.bias."""
    model = BertForPreTraining(small_config(), seed=4)
    model.save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: {("cls.predictions.decoder.bias" if k == "cls.predictions.bias" else k): v
                                  for k, v in t.items()})
    loaded, info = _load_quietly(BertForPreTraining, tmp_path)
    _assert_same_parameters(model, loaded)
    assert info.missing_keys == []


def test_untied_decoder_that_differs_warns(tmp_path):
    model = BertForPreTraining(small_config(), seed=4)
    model.save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: {**t, "cls.predictions.decoder.weight":
                                  t["bert.embeddings.word_embeddings.weight"] + 1.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, info = BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "hold different values" in messages and "were not used" in messages
    _assert_same_parameters(model, loaded)                # the word embeddings win
    assert "cls.predictions.decoder.weight" in info.unexpected_keys


def test_half_precision_file(tmp_path):
    model = BertModel(small_config(), seed=0)
    model.save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: {k: v.astype(np.float16) for k, v in t.items()})
    loaded, _ = _load_quietly(BertModel, tmp_path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v.astype(np.float16).astype(np.float32))


def test_save_pretrained_shards_and_replaces_earlier_weight_files(tmp_path):
    model = BertForPreTraining(small_config(), seed=6)
    total = sum(p.data.nbytes for _, p in model.named_parameters())
    model.save_pretrained(tmp_path)                                   # first: one file
    model.save_pretrained(tmp_path, max_shard_size=total // 3)         # then: shards + index
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors")) == shards  # the single file is gone
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in st.load_file(
        tmp_path / shards[0]).values()) + sum(sum(t.nbytes for t in st.load_file(tmp_path / f).values())
                                              for f in shards[1:])
    for shard in shards:                                              # each within the limit (or one tensor)
        held = st.load_file(tmp_path / shard)
        assert len(held) == 1 or sum(t.nbytes for t in held.values()) <= total // 3
    loaded, info = _load_quietly(BertForPreTraining, tmp_path)
    _assert_same_parameters(model, loaded)
    assert len(info.weight_files) == len(shards)

    model.save_pretrained(tmp_path, max_shard_size="1GB")              # back to one file
    assert sorted(f for f in os.listdir(tmp_path) if "safetensors" in f) == ["model.safetensors"]
    _assert_same_parameters(model, _load_quietly(BertForPreTraining, tmp_path)[0])


@pytest.mark.parametrize("size, expected", [(1000, 1000), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30),
                                            ("1.5 gb", 1_500_000_000), ("10KB", 10_000)])
def test_parse_size(size, expected):
    from minibert.checkpoint import parse_size

    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["GB", "-5MB", "5XB", 0, "", "1TB"])
def test_parse_size_refuses_nonsense(size):
    from minibert.checkpoint import parse_size

    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(size)


def test_sharded_checkpoint(tmp_path):
    model = BertForPreTraining(small_config(), seed=6)
    model.save_pretrained(tmp_path)
    tensors = st.load_file(tmp_path / "model.safetensors")
    os.remove(tmp_path / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        st.save_file({k: tensors[k] for k in keys}, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    loaded, info = _load_quietly(BertForPreTraining, tmp_path)
    _assert_same_parameters(model, loaded)
    assert len(info.weight_files) == 2

    bad = dict(weight_map, **{names[0]: "../elsewhere.safetensors"})
    index.write_text(json.dumps({"weight_map": bad}))
    with pytest.raises(ValueError, match="plain .safetensors file names"):
        BertForPreTraining.from_pretrained(tmp_path)
    bad = dict(weight_map, **{names[0]: "model-00003-of-00002.safetensors"})
    index.write_text(json.dumps({"weight_map": bad}))
    with pytest.raises(FileNotFoundError, match="missing"):
        BertForPreTraining.from_pretrained(tmp_path)
    bad = dict(weight_map, **{names[0]: "model-00002-of-00002.safetensors"})
    index.write_text(json.dumps({"weight_map": bad}))
    with pytest.raises(ValueError, match="does not place in this shard"):
        BertForPreTraining.from_pretrained(tmp_path)
    index.write_text(json.dumps({"weight_map": dict(weight_map, **{"cls.extra.bias": shard})}))
    with pytest.raises(ValueError, match="lists tensors that no shard holds: cls.extra.bias"):
        BertForPreTraining.from_pretrained(tmp_path)
    index.write_text(json.dumps({"weight_map": weight_map}))
    second = tmp_path / "model-00002-of-00002.safetensors"      # also holds a tensor of shard 1
    st.save_file({**st.load_file(second), names[0]: tensors[names[0]]}, second)
    with pytest.raises(ValueError, match=f"tensor '{names[0]}' is also in .*model-00001-of-00002"):
        BertForPreTraining.from_pretrained(tmp_path)
    index.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertForPreTraining.from_pretrained(tmp_path)


# --------------------------------------------------------------------------- bad input
def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError):
        BertModel.from_pretrained(tmp_path / "afile")
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertModel.from_pretrained(tmp_path)
    small_config().to_json_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        BertModel.from_pretrained(tmp_path)


def test_bad_configs(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        BertModel.from_pretrained(tmp_path)
    values = small_config().to_dict()
    path.write_text(json.dumps(dict(values, model_type="roberta")))
    with pytest.raises(ValueError, match="model_type is 'roberta'"):
        BertModel.from_pretrained(tmp_path)
    path.write_text(json.dumps(dict(values, architectures=["GPT2LMHeadModel"])))
    with pytest.raises(ValueError, match="not BERT architectures"):
        BertModel.from_pretrained(tmp_path)
    path.write_text(json.dumps(dict(values, hidden_size=15)))
    with pytest.raises(ValueError, match="config.json.*divisible"):
        BertModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "tf_model.h5"])
def test_pickles_are_refused_with_conversion_advice(tmp_path, name):
    small_config().to_json_file(tmp_path / "config.json")
    (tmp_path / name).write_bytes(b"\x80\x04 this would be unpickled by a careless loader")
    with pytest.raises(ValueError) as info:
        BertModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert name in message and "safetensors" in message and "never unpickles" in message
    assert "save_pretrained" in message                  # says how to convert


def test_mis_shaped_tensor_names_key_and_shapes(tmp_path):
    model = BertModel(small_config(), seed=0)
    model.save_pretrained(tmp_path)
    key = "encoder.layer.1.intermediate.dense.weight"
    _rewrite(tmp_path, lambda t: {**t, key: np.zeros((24, 17), np.float32)})
    with pytest.raises(ValueError) as info:
        BertModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert key in message and "(24, 17)" in message and "(24, 16)" in message
    assert "model.safetensors" in message


def test_vocabulary_size_disagreement(tmp_path):
    BertModel(small_config(), seed=0).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] = 50
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocabulary size disagrees.*vocab_size = 50.*40 rows"):
        BertModel.from_pretrained(tmp_path)
    config["vocab_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(45)) + "\n")
    with pytest.raises(ValueError, match="vocab.txt holds 45 tokens.*vocab_size = 40"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(41)) + "\n")
    with pytest.raises(ValueError, match="vocab.txt holds 41 tokens.*vocab_size = 40"):
        BertModel.from_pretrained(tmp_path)                  # one token too many is one too many
    (tmp_path / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(40)) + "\n")
    BertModel.from_pretrained(tmp_path)                      # exactly vocab_size: fine


def test_integer_tensor_for_float_parameter(tmp_path):
    BertModel(small_config(), seed=0).save_pretrained(tmp_path)
    key = "pooler.dense.bias"
    _rewrite(tmp_path, lambda t: {**t, key: np.zeros(16, np.int32)})
    with pytest.raises(ValueError, match="pooler.dense.bias.*integers"):
        BertModel.from_pretrained(tmp_path)


def test_corrupt_weights_name_the_file(tmp_path):
    BertModel(small_config(), seed=0).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="model.safetensors: not a valid safetensors file"):
        BertModel.from_pretrained(tmp_path)


def test_strict_mode(tmp_path):
    BertModel(small_config(), seed=0).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="strict"):                 # missing keys: the heads
        BertForPreTraining.from_pretrained(tmp_path, strict=True)
    BertModel.from_pretrained(tmp_path, strict=True)
    _rewrite(tmp_path, lambda t: {**t, "encoder.layer.9.output.dense.bias": np.zeros(16, np.float32)})
    with pytest.raises(ValueError, match=r"(?s)does not match BertModel \(strict\).*encoder\.layer\.9\."):
        BertModel.from_pretrained(tmp_path, strict=True)           # an unexpected key alone


# --------------------------------------------------------------------------- transformers
def _hf_config(**overrides):
    transformers = pytest.importorskip("transformers")
    values = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=32)
    values.update(overrides)
    return transformers.BertConfig(**values)


@pytest.mark.reference
@pytest.mark.parametrize("max_shard_size", [None, 20_000])
def test_minibert_folder_loads_in_transformers(tmp_path, max_shard_size):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = BertForPreTraining(small_config(), seed=8).eval()
    model.save_pretrained(tmp_path, max_shard_size=max_shard_size)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json") == (max_shard_size is not None)
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = np.random.default_rng(1).integers(0, 40, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    with no_grad():
        ours = model.forward(ids, attention_mask=mask)         # inference: padding is not computed
    everywhere = model.forward(ids, attention_mask=mask)      # caches kept: every position computed
    model.clear_caches()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(everywhere.prediction_logits, theirs.prediction_logits.numpy(), atol=2e-5)
    np.testing.assert_allclose(ours.prediction_logits[real], theirs.prediction_logits.numpy()[real], atol=2e-5)
    for out in (ours, everywhere):
        np.testing.assert_allclose(out.seq_relationship_logits, theirs.seq_relationship_logits.numpy(), atol=2e-5)


@pytest.mark.reference
@pytest.mark.parametrize("which", ["BertForPreTraining", "BertModel"])
def test_transformers_folder_loads_in_minibert(tmp_path, which):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = getattr(transformers, which)(_hf_config()).eval()
    with torch.no_grad():                                  # non-trivial LayerNorms and biases
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    cls = {"BertForPreTraining": BertForPreTraining, "BertModel": BertModel}[which]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # every tensor is used, nothing missing
        model = cls.from_pretrained(tmp_path)
    ids = np.random.default_rng(2).integers(0, 40, size=(2, 11))
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    mask = np.ones_like(ids)
    mask[0, 8:] = 0
    tensors = dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                   attention_mask=torch.tensor(mask))
    with torch.no_grad():
        theirs = hf(**tensors)
    with no_grad():
        inference = model.forward(ids, types, mask)          # padding is not computed: compare real positions
    everywhere = model.forward(ids, types, mask)             # caches kept: every position computed
    model.clear_caches()
    real = mask.astype(bool)
    for ours, where in ((everywhere, slice(None)), (inference, real)):
        if which == "BertModel":
            np.testing.assert_allclose(ours[0][where], theirs.last_hidden_state.numpy()[where], atol=2e-5)
            np.testing.assert_allclose(ours[1], theirs.pooler_output.numpy(), atol=2e-5)
        else:
            np.testing.assert_allclose(ours.prediction_logits[where], theirs.prediction_logits.numpy()[where],
                                       atol=2e-5)
            np.testing.assert_allclose(ours.seq_relationship_logits, theirs.seq_relationship_logits.numpy(),
                                       atol=2e-5)


@pytest.mark.reference
def test_fill_mask_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from minibert.fill_mask import fill_mask
    from minibert.tokenization import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]
    torch.manual_seed(1)
    hf = transformers.BertForPreTraining(_hf_config()).eval()
    hf.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    model = BertForPreTraining.from_pretrained(tmp_path)
    tokenizer = BertTokenizer.from_pretrained(tmp_path)
    result = fill_mask(model, tokenizer, "w1 w2 [MASK] w3 [MASK]", top_k=3)
    ids = tokenizer.encode("w1 w2 [MASK] w3 [MASK]")
    with torch.no_grad():
        probs = hf(input_ids=torch.tensor([ids])).prediction_logits[0].softmax(-1).numpy()
    for row, position in zip(result, [i for i, t in enumerate(ids) if t == 4]):
        best = np.argsort(-probs[position])[:3]
        assert [tokens[i] for i in best] == [t for t, _ in row]
        np.testing.assert_allclose([p for _, p in row], probs[position][best], atol=1e-5)


def test_own_name_wins_over_a_differing_tied_decoder_without_prefix(tmp_path):
    # keys without "bert.": the decoder copy no longer sorts after the word embeddings by chance
    model = BertForPreTraining(small_config(), seed=4)
    model.save_pretrained(tmp_path)

    def base_names_and_a_different_decoder(tensors):
        tensors = {(k[5:] if k.startswith("bert.") else k): v for k, v in tensors.items()}
        tensors["cls.predictions.decoder.weight"] = tensors["embeddings.word_embeddings.weight"] + 1.0
        return tensors

    _rewrite(tmp_path, base_names_and_a_different_decoder)
    loaded, _ = _load_quietly(BertForPreTraining, tmp_path)
    np.testing.assert_array_equal(loaded.bert.embeddings.word_embeddings.weight.data,
                                  model.bert.embeddings.word_embeddings.weight.data)
