"""The package facade: ``from minibert import BertModel, ...``, loaded on first use."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import minibert

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "BertConfig", "BertModel", "BertForPreTraining", "BertForSequenceClassification",
    "BertForTokenClassification", "BertForQuestionAnswering", "BertForMaskedLM", "BertTokenizer",
    "AdamW", "SGD", "Trainer", "TrainingArguments", "SentenceEncoder", "no_grad",
}


def test_the_names_users_reach_for_are_exported():
    assert EXPECTED <= set(minibert.__all__)
    assert len(minibert.__all__) == len(set(minibert.__all__))
    assert set(minibert.__all__) <= set(dir(minibert))


@pytest.mark.parametrize("name", minibert.__all__)
def test_each_name_is_the_object_its_module_defines(name):
    module = importlib.import_module(minibert._EXPORTS[name])
    exported = getattr(minibert, name)
    assert exported is getattr(module, name)
    namespace = {}
    exec(f"from minibert import {name}", namespace)
    assert namespace[name] is exported


def test_star_import_gives_every_name():
    namespace = {}
    exec("from minibert import *", namespace)
    assert EXPECTED <= set(namespace)


def test_importing_the_package_loads_no_heavy_module():
    """``import minibert`` (what the command line does first) imports none of the library's
    modules, and so not NumPy either; the first use of a name loads its module."""
    code = (
        "import sys\n"
        "import minibert\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('minibert.') or m == 'numpy')\n"
        "print(','.join(loaded))\n"
        "minibert.BertModel\n"
        "print('minibert.modeling' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT)
    before, after = result.stdout.splitlines()
    assert before == "", f"import minibert also imported: {before}"
    assert after == "True"


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no attribute 'BertForTimeTravel'"):
        minibert.BertForTimeTravel
    with pytest.raises(ImportError, match="BertForTimeTravel"):
        exec("from minibert import BertForTimeTravel", {})
    assert not hasattr(minibert, "bert_for_time_travel")


def test_submodules_stay_importable_from_the_package():
    namespace = {}
    exec("from minibert import ops, tokenization", namespace)
    assert namespace["tokenization"] is importlib.import_module("minibert.tokenization")
    assert namespace["ops"] is importlib.import_module("minibert.ops")
