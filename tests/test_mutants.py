"""The mutation audit's list stays applicable: every planted bug still matches the source once.

The audit itself (``python tests/mutants.py``) takes about 22 minutes; this check takes a moment.
"""

import os

import pytest

from mutants import MUTANTS, ROOT, mutated_source


def test_mutant_ids_are_unique():
    ids = [m.id for m in MUTANTS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_mutant_applies_to_the_current_source(mutant):
    with open(os.path.join(ROOT, mutant.file), encoding="utf-8") as f:
        source = f.read()
    assert mutated_source(mutant, source) != source
    for test in mutant.tests:
        assert os.path.exists(os.path.join(ROOT, test.split("::")[0])), test
