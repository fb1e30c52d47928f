"""Pretrained checkpoints: Hugging Face BERT folders in, Hugging Face BERT folders out.

A checkpoint folder, as written by ``transformers`` and read by it::

    config.json                    hyperparameters (BertConfig field names), model_type "bert"
    model.safetensors              the weights, keyed by state-dict name
      or model.safetensors.index.json + model-00001-of-0000N.safetensors ...   (sharded)
    vocab.txt, tokenizer_config.json   the WordPiece vocabulary and its settings (optional)

:func:`load_pretrained` (behind ``BertModel.from_pretrained`` and friends) reads such a
folder into any minibert model class; :func:`save_pretrained` writes one.

Weights are only ever read from safetensors files (see :mod:`minibert.safetensors`):
``pytorch_model.bin`` and other pickles are refused with the command that converts them,
because unpickling a file can run arbitrary code.

Real checkpoints name their tensors in several ways; the loader maps them all onto the
model's parameter names:

* with or without the ``bert.`` prefix: a base-model checkpoint (``embeddings...``,
  as all-MiniLM-L6-v2) loads into ``BertForPreTraining`` (``bert.embeddings...``), and a
  pretraining checkpoint loads into ``BertModel`` (its ``cls.*`` heads are then unused);
* ``LayerNorm.gamma`` / ``LayerNorm.beta`` (old TensorFlow-converted files) for
  ``LayerNorm.weight`` / ``LayerNorm.bias``;
* the MLM decoder: ``cls.predictions.decoder.weight`` is the word-embedding matrix (tied)
  and ``cls.predictions.decoder.bias`` is ``cls.predictions.bias``; either may be absent;
* buffers that are not parameters (``embeddings.position_ids``,
  ``embeddings.token_type_ids``) are ignored silently.

What could not be matched is reported the way transformers users expect: parameters
absent from the file keep their fresh initialisation (``missing_keys``, e.g. the heads of
a model fine-tuned from a base checkpoint), tensors the model has no place for are
skipped (``unexpected_keys``). Both lists are in a :class:`LoadingInfo` attached to the
model as ``model.loading_info`` (and returned with ``output_loading_info=True``), and
summarised in one ``UserWarning`` when either is not empty. A tensor whose shape differs
from the parameter's is always an error naming the key, the file and both shapes, raised
before any weight is copied, so a failed load never leaves a half-loaded model.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import safetensors as st
from .backend import check_device, to_numpy
from .config import BertConfig

CONFIG_NAME = "config.json"
# model_type -> (how its classes' names start, its name in messages)
ARCHITECTURES = {"bert": ("Bert", "BERT"), "roberta": ("Roberta", "RoBERTa"), "distilbert": ("DistilBert", "DistilBERT")}
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

# Weight files minibert will not open, with what they are.
_UNSAFE_WEIGHTS = {
    "pytorch_model.bin": "a PyTorch pickle",
    "pytorch_model.bin.index.json": "the index of sharded PyTorch pickles",
    "tf_model.h5": "a TensorFlow/Keras HDF5 file",
    "flax_model.msgpack": "a Flax msgpack file",
    "model.ckpt.index": "a TensorFlow checkpoint",
}
_UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack")

# Keys that are buffers in PyTorch models, not parameters: ignored without a word.
_BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")



@dataclass
class LoadingInfo:
    """What :func:`load_pretrained` did with the checkpoint's tensors.

    missing_keys:    model parameters not in the file: they keep their initialisation.
    unexpected_keys: file tensors the model has no parameter for: not used.
    ignored_keys:    file tensors skipped on purpose (buffers such as position_ids, and
                     tied duplicates such as the decoder weight).
    renamed_keys:    {file key: parameter name} for every key that was mapped (prefix,
                     gamma/beta, tied aliases).
    weight_files:    the safetensors files read.
    """

    missing_keys: list = field(default_factory=list)
    unexpected_keys: list = field(default_factory=list)
    ignored_keys: list = field(default_factory=list)
    renamed_keys: dict = field(default_factory=dict)
    weight_files: list = field(default_factory=list)

    def summary(self, model_name: str = "the model", source: str = "the checkpoint",
                model_has_heads: bool = True, checkpoint_name=None) -> str:
        """A few readable lines; empty when every parameter was loaded and every tensor used.

        ``checkpoint_name(parameter name)``: the name the file would use for a missing
        parameter, when the model renames (DistilBERT), so the message names what to look for.
        """
        lines = []
        if self.missing_keys:
            missing = self.missing_keys if checkpoint_name is None else map(checkpoint_name, self.missing_keys)
            lines.append(f"{len(self.missing_keys)} parameter(s) of {model_name} were not in {source} "
                         f"and keep their fresh random initialisation: {_short(missing)}. "
                         "Train them before use (expected for a task head on a pretrained encoder).")
        if self.unexpected_keys:
            heads = not model_has_heads and all(k.startswith("cls.") for k in self.unexpected_keys)
            lines.append(f"{len(self.unexpected_keys)} tensor(s) in {source} were not used by "
                         f"{model_name}: {_short(self.unexpected_keys)}."
                         + (" (Expected when a pretraining checkpoint is loaded into a model "
                            "without its heads.)" if heads else ""))
        return "\n".join(lines)

    def __str__(self):
        return self.summary() or "all parameters loaded, all tensors used"


def _short(keys, n=6):
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


# ============================================================================ reading
def read_config(directory, config_class=BertConfig):
    """Read ``directory/config.json`` into a ``config_class`` (:class:`~minibert.config.BertConfig`
    or :class:`~minibert.config.RobertaConfig`).

    Clear errors for a missing directory or file, invalid JSON, another ``model_type`` or
    architecture, and values the configuration refuses (each message names the file).
    """
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory} is not a directory: give the folder that holds "
                                 f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a checkpoint folder needs {CONFIG_NAME} "
                                f"(the model's hyperparameters) next to its weights")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of hyperparameters")
    expected = config_class.model_type
    model_type = values.get("model_type", expected)        # very old BERT configs have none
    if model_type != expected:
        raise ValueError(f"{path}: model_type is {model_type!r}; this model class loads "
                         f"model_type {expected!r} checkpoints")
    prefix, name = ARCHITECTURES[expected]
    architectures = values.get("architectures") or []
    if not isinstance(architectures, list) or any(
            not (isinstance(a, str) and a.startswith(prefix)) for a in architectures):
        raise ValueError(f"{path}: architectures {architectures!r} are not {name} architectures "
                         f"({prefix}Model, {prefix}ForMaskedLM, ...)")
    try:
        return config_class.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _refuse_unsafe(directory: str):
    found = [name for name in sorted(os.listdir(directory))
             if name in _UNSAFE_WEIGHTS or name.endswith(_UNSAFE_SUFFIXES)]
    if not found:
        raise FileNotFoundError(
            f"no weights in {directory}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")
    name = found[0]
    what = _UNSAFE_WEIGHTS.get(name, "a pickle or framework-specific file")
    source = os.path.join(directory, name)
    target = os.path.join(directory, WEIGHTS_NAME)
    architecture = "AutoModel"
    try:
        with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as f:
            names = json.load(f).get("architectures") or []
        if names and isinstance(names[0], str) and names[0].isidentifier():
            architecture = names[0]                   # keeps the heads the checkpoint has
    except (OSError, ValueError, AttributeError):
        pass
    raise ValueError(
        f"{source} is {what}; minibert reads weights only from safetensors files and never "
        "unpickles (loading a pickle can run arbitrary code). Convert it once, with PyTorch "
        "and transformers installed, if you trust the file:\n"
        f"    python -c \"import transformers; transformers.{architecture}.from_pretrained({directory!r})"
        f".save_pretrained({directory!r})\"\n"
        "or, for a PyTorch state dict, keeping every tensor as it is:\n"
        f"    python -c \"import torch; from safetensors.torch import save_file; "
        f"sd = torch.load({source!r}, map_location='cpu', weights_only=True); "
        f"save_file({{k: v.clone().contiguous() for k, v in sd.items()}}, {target!r}, "
        "metadata={'format': 'pt'})\"")


def weight_files(directory) -> list[str]:
    """The safetensors files of a checkpoint folder (one, or the shards of the index)."""
    directory = os.fspath(directory)
    single = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    index_path = os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        return sorted(set(_read_index(index_path).values()))
    _refuse_unsafe(directory)
    return []  # pragma: no cover - _refuse_unsafe always raises


def _read_index(index_path: str) -> dict[str, str]:
    """{tensor name: shard path} from a sharded checkpoint's index, validated."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{index_path}: not valid JSON ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: expected an object with a non-empty 'weight_map' "
                         "of tensor name -> shard file")
    directory = os.path.dirname(index_path)
    out = {}
    for key, shard in weight_map.items():
        if (not isinstance(shard, str) or os.path.basename(shard) != shard
                or shard in ("", ".", "..") or not shard.endswith(".safetensors")):
            raise ValueError(f"{index_path}: tensor {key!r} points to {shard!r}; shards must be "
                             "plain .safetensors file names in the same folder")
        path = os.path.join(directory, shard)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{index_path}: shard {shard} (holding {key!r}) is missing")
        out[key] = path
    return out


def read_weights(directory) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """All tensors of a checkpoint folder: ({key: array}, {key: file it came from}, files)."""
    directory = os.fspath(directory)
    files = weight_files(directory)
    index_path = os.path.join(directory, WEIGHTS_INDEX_NAME)
    expected = _read_index(index_path) if len(files) > 1 or (
        files and os.path.basename(files[0]) != WEIGHTS_NAME) else None
    tensors, origin = {}, {}
    for path in files:
        for key, value in st.load_file(path).items():
            if key in tensors:
                raise ValueError(f"{path}: tensor {key!r} is also in {origin[key]}")
            if expected is not None and expected.get(key) != path:
                raise ValueError(f"{path}: holds {key!r}, which {index_path} does not place in this shard")
            tensors[key], origin[key] = value, path
    if expected is not None:
        absent = [k for k in expected if k not in tensors]
        if absent:
            raise ValueError(f"{index_path} lists tensors that no shard holds: {_short(absent)}")
    return tensors, origin, files


# ============================================================================ key mapping
def map_state_dict(model, tensors: dict, origin: dict | None = None):
    """Match checkpoint keys to the model's parameter names.

    Returns ({parameter name: array}, LoadingInfo). Raises ValueError for a tensor whose
    shape differs from its parameter's (naming key, file and both shapes) or whose dtype
    cannot become the model's (an integer tensor for a float parameter).
    """
    origin = origin or {}
    params = {name: p for name, p in model.named_parameters()}
    aliases = model.state_dict_aliases()                 # tied names, gamma/beta
    prefix = model.base_model_prefix + "."               # "bert." or "roberta."
    info = LoadingInfo()
    mapped, source_key = {}, {}

    def resolve(key: str):
        """(parameter name, whether the key is the parameter's own name up to the prefix)."""
        stripped = key[len(prefix):] if key.startswith(prefix) else None
        for candidate in (key, prefix + key, stripped):
            if candidate in params:
                return candidate, True
        for candidate in (key, prefix + key, stripped):
            if candidate in aliases and aliases[candidate] in params:
                return aliases[candidate], False
        return None, False

    # Own names first, so a tied alias (decoder.weight) never shadows its parameter.
    resolved = {key: resolve(model.from_checkpoint_name(key)) for key in tensors}
    for key in sorted(tensors, key=lambda k: not resolved[k][1]):
        value = tensors[key]
        if key.endswith(_BUFFER_SUFFIXES):
            info.ignored_keys.append(key)
            continue
        name = resolved[key][0]
        if name is None:
            info.unexpected_keys.append(key)
            continue
        if name in mapped:                               # a second name for the same parameter
            first = mapped[name]
            if first.shape == value.shape and np.array_equal(first, value):
                info.ignored_keys.append(key)            # e.g. the tied decoder weight
            else:
                warnings.warn(
                    f"{origin.get(key, 'checkpoint')}: {key!r} and {source_key[name]!r} both map "
                    f"to minibert's {name!r} (tied or aliased in minibert) but hold different "
                    f"values; using {source_key[name]!r}", UserWarning, stacklevel=3)
                info.unexpected_keys.append(key)
            continue
        param = params[name]
        where = origin.get(key, "the checkpoint")
        if tuple(value.shape) != tuple(param.data.shape):
            raise ValueError(_shape_error(model, key, name, value.shape, param.data.shape, where))
        if value.dtype.kind not in "fb" and param.data.dtype.kind == "f":
            if value.dtype.kind not in "iu":
                raise ValueError(f"{where}: {key!r} has dtype {value.dtype}, not a number type")
            raise ValueError(f"{where}: {key!r} holds integers ({value.dtype}) but {name!r} is a "
                             f"{param.data.dtype} parameter")
        mapped[name] = value
        source_key[name] = key
        if key != name:
            info.renamed_keys[key] = name
    info.missing_keys = [name for name in params if name not in mapped]
    return mapped, info


def _shape_error(model, key, name, got, want, where):
    got, want = tuple(got), tuple(want)
    message = (f"{where}: tensor {key!r} has shape {got}, but minibert's parameter {name!r} "
               f"has shape {want}")
    config = getattr(model, "config", None)
    if name.endswith("word_embeddings.weight") and config is not None and len(got) == 2 \
            and got[1] == want[1]:
        message += (f": the vocabulary size disagrees with the embedding matrix "
                    f"(config.json says vocab_size = {config.vocab_size}, the matrix has {got[0]} "
                    "rows); fix vocab_size in config.json to match the checkpoint")
    elif name.startswith(("classifier.", "qa_outputs.")) and config is not None and got[0] != want[0]:
        message += (f": the checkpoint's head has {got[0]} outputs, this model {want[0]} (num_labels); "
                    f"give num_labels={got[0]} to load the head as it was trained")
    elif config is not None and len(got) >= 1 and len(want) >= 1 and got[-1] != want[-1]:
        message += f" (does config.json's hidden_size = {config.hidden_size} match the weights?)"
    return message


def _count_vocab(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# ============================================================================ public API
# config.json fields that minibert reads besides BertConfig's own (task heads, pruning)
EXTRA_CONFIG_FIELDS = ("num_labels", "id2label", "label2id", "problem_type", "classifier_dropout",
                       "pruned_heads", "position_embedding_type")


def _warn_about_unknown_overrides(config, overrides: dict) -> None:
    """A keyword that is no config field and not in config.json is kept (in ``config.extra``,
    as transformers keeps unknown attributes), but most often it is a typo: say so."""
    import difflib
    from dataclasses import fields

    known = {f.name for f in fields(config)} | set(config.extra) | set(EXTRA_CONFIG_FIELDS)
    candidates = sorted(known | {"device", "dtype", "seed", "strict", "output_loading_info"})
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, candidates, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            warnings.warn(f"from_pretrained: {key!r} is not a config field{hint}; it is kept in "
                          "config.extra and saved with the model", UserWarning, stacklevel=4)


def load_pretrained(model_class, directory, device: str = "cpu", dtype=np.float32, seed: int = 0,
                    strict: bool = False, output_loading_info: bool = False, **config_overrides):
    """Build ``model_class`` from a checkpoint folder and load its weights.

    ``config_overrides`` replace fields of config.json (e.g. ``hidden_dropout_prob=0.0``,
    ``attn_implementation="flash"``). Parameters absent from the file keep the
    initialisation that ``seed`` gives. With ``strict`` any missing or unexpected key is an
    error; otherwise they are reported (``model.loading_info`` and one warning). Returns the
    model, or ``(model, LoadingInfo)`` with ``output_loading_info``.
    """
    directory = os.fspath(directory)
    device = check_device(device)
    config = read_config(directory, model_class.config_class)
    if config_overrides:
        _warn_about_unknown_overrides(config, config_overrides)
        given_names, given_count = config_overrides.get("id2label"), config_overrides.get("num_labels")
        if given_names is not None and given_count is not None and len(given_names) != given_count:
            raise ValueError(f"id2label names {len(given_names)} labels but num_labels is {given_count}")
        values = config.to_dict()
        values.update(config_overrides)
        try:
            config = model_class.config_class.from_dict(values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"overriding {sorted(config_overrides)} of "
                             f"{os.path.join(directory, CONFIG_NAME)}: {exc}") from exc
    vocab_path = os.path.join(directory, VOCAB_NAME)
    if os.path.isfile(vocab_path):
        n_vocab = _count_vocab(vocab_path)
        if n_vocab > config.vocab_size:
            raise ValueError(f"{vocab_path} holds {n_vocab} tokens but config.json says vocab_size = "
                             f"{config.vocab_size}: token ids would fall outside the embedding matrix")

    tensors, origin, files = read_weights(directory)
    model = model_class(config, seed=seed, device="cpu", dtype=dtype)
    state, info = map_state_dict(model, tensors, origin)
    info.weight_files = files
    if strict and (info.missing_keys or info.unexpected_keys):
        raise ValueError(f"{directory}: checkpoint does not match {model_class.__name__} (strict):\n"
                         + info.summary(model_class.__name__, directory, checkpoint_name=model.to_checkpoint_name))
    model.load_state_dict(state, strict=False)
    del tensors, state
    if device != "cpu":
        model.to(device)
    model.eval()                                          # inference by default, as transformers
    model.loading_info = info
    message = info.summary(model_class.__name__, directory, model_has_heads=hasattr(model, "cls"),
                           checkpoint_name=model.to_checkpoint_name)
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    return (model, info) if output_loading_info else model


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def config_to_hf_dict(model) -> dict:
    """The model's configuration as transformers writes config.json."""
    values = model.config.to_dict()       # minibert's own fields carry a "minibert_" prefix
    values.pop("_name_or_path", None)
    values["model_type"] = model.config.model_type
    values["architectures"] = [type(model).__name__]
    return dict(sorted(values.items()))


def save_pretrained(model, directory, tokenizer=None, max_shard_size=None) -> str:
    """Write ``config.json`` and ``model.safetensors`` (and the vocabulary) into ``directory``.

    The folder loads back with :func:`load_pretrained` and with transformers'
    ``from_pretrained``. Each file is written atomically: an interrupted save leaves the
    previous files whole. With ``tokenizer`` (a :class:`minibert.tokenization.BertTokenizer`)
    its ``save_pretrained(directory)`` writes ``vocab.txt`` and ``tokenizer_config.json``
    (a tokenizer with only ``save_vocabulary`` gets a tokenizer_config.json written here).

    ``max_shard_size`` (bytes, or a string such as ``"500MB"`` or ``"2GiB"``): when the weights
    are larger, they are split, in state-dict order, into ``model-00001-of-0000N.safetensors``
    ... with ``model.safetensors.index.json`` mapping each tensor to its file, as Hugging Face
    shards a checkpoint (a tensor larger than the limit gets a shard of its own). Weight files
    of an earlier save in the folder that this one does not use are removed once the new ones
    are written. Returns the directory.
    """
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    if tokenizer is not None and not (hasattr(tokenizer, "save_pretrained") or hasattr(tokenizer, "save_vocabulary")):
        raise TypeError(f"tokenizer must be a BertTokenizer (or have save_vocabulary), got "
                        f"{type(tokenizer).__name__}: load a vocab.txt with BertTokenizer(path) first")
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    os.makedirs(directory, exist_ok=True)
    tensors = {model.to_checkpoint_name(name): to_numpy(array) for name, array in model.state_dict().items()}
    shards = _shards(tensors, limit)
    if len(shards) == 1:
        written = [WEIGHTS_NAME]
        st.save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
    else:
        written = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        weight_map = {}
        for filename, names in zip(written, shards):
            st.save_file({n: tensors[n] for n in names}, os.path.join(directory, filename),
                         metadata={"format": "pt"})
            weight_map.update({n: filename for n in names})
        index = {"metadata": {"total_size": sum(int(t.nbytes) for t in tensors.values())},
                 "weight_map": weight_map}
        _atomic_write_text(os.path.join(directory, WEIGHTS_INDEX_NAME), json.dumps(index, indent=2) + "\n")
        written.append(WEIGHTS_INDEX_NAME)
    _remove_stale_weight_files(directory, keep=set(written))
    _atomic_write_text(os.path.join(directory, CONFIG_NAME),
                       json.dumps(config_to_hf_dict(model), indent=2) + "\n")
    if tokenizer is not None:
        if hasattr(tokenizer, "save_pretrained"):      # vocab.txt + its own tokenizer_config.json
            tokenizer.save_pretrained(directory)
        else:
            tokenizer.save_vocabulary(directory)
            _atomic_write_text(os.path.join(directory, TOKENIZER_CONFIG_NAME),
                               json.dumps(_tokenizer_config(tokenizer, model), indent=2) + "\n")
    return directory


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size) -> int:
    """Bytes from an int or a string like ``"500MB"`` / ``"2GiB"`` (KB, MB, GB are powers of 1000)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        number, unit = int(size), ""
    elif isinstance(size, str):
        text = size.strip().upper().replace(" ", "")
        digits = text.rstrip("KMGIB")
        unit = text[len(digits):]
        try:
            number = float(digits)
        except ValueError:
            number, unit = -1, "?"
    else:
        raise TypeError(f"max_shard_size must be a number of bytes or a string like '500MB', got {size!r}")
    if unit not in _SIZE_UNITS or not number > 0:
        raise ValueError(f"max_shard_size {size!r} is not a positive size (bytes, or e.g. '500MB', '2GiB')")
    return int(number * _SIZE_UNITS[unit])


def _shards(tensors: dict, limit) -> list[list[str]]:
    """Tensor names split in order into groups of at most ``limit`` bytes (one group without a limit)."""
    if limit is None:
        return [list(tensors)]
    shards, current, current_size = [], [], 0
    for name, array in tensors.items():
        if current and current_size + array.nbytes > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += array.nbytes
    return shards + [current] if current else shards or [[]]


def _remove_stale_weight_files(directory: str, keep: set) -> None:
    """Remove a single weights file, an index or shards that an earlier save left and this one replaced."""
    for name in os.listdir(directory):
        stale = name == WEIGHTS_NAME or name == WEIGHTS_INDEX_NAME or \
            (name.startswith("model-") and "-of-" in name and name.endswith(".safetensors"))
        if stale and name not in keep:
            os.remove(os.path.join(directory, name))


def _tokenizer_config(tokenizer, model) -> dict:
    values = {"tokenizer_class": "BertTokenizer",
              "model_max_length": int(model.config.max_position_embeddings)}
    for attr in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        if hasattr(tokenizer, attr):
            values[attr] = getattr(tokenizer, attr)
    for attr in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        value = getattr(tokenizer, attr, None)
        values[attr] = value if isinstance(value, str) else "[" + attr[:-6].upper() + "]"
    return values
