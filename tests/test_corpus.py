"""Corpora: the embedded standard-library corpus, user text files, the validation split."""

import sys
import sysconfig
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from minibert.data.corpus import (
    SKIPPED_STDLIB_DIRS,
    CorpusError,
    corpus_statistics,
    detect_format,
    load_corpus,
    parse_text,
    pydoc_topic_documents,
    read_text_corpus,
    split_documents,
    split_sentences,
    stdlib_corpus,
    stdlib_source_files,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


# --------------------------------------------------------------------------- sentence splitter
def test_split_sentences_on_restructured_text():
    text = """Summary line of the function here.

    The first sentence of the body. The second one asks a question? Yes it does!
    See e.g. the Foo class for details.

    Example::

        for i in range(10):
            print(i)

    >>> f(1, 2)
    3

    Title of a section
    ==================

    Args:
        x: the value.

    .. note:: A directive line is dropped.
    """
    assert split_sentences(text) == [
        "Summary line of the function here.",
        "The first sentence of the body.",
        "The second one asks a question?",
        "Yes it does!",
        "See e.g. the Foo class for details.",
        "Title of a section",             # a heading of three words passes for a sentence
        "Args: x: the value.",
    ]


def test_the_output_of_a_doctest_is_dropped_even_when_it_reads_as_prose():
    text = "Return the greeting.\n\n>>> print(greeting())\nHello there, how are you today?\n"
    assert split_sentences(text) == ["Return the greeting."]


def test_indented_prose_is_kept_and_indented_code_dropped():
    text = ("Emulating numeric types is done with special methods.\n\n"
            "object.__add__(self, other)\n\n"
            "   These methods are called to implement addition.\n\n"
            "   x = compute(a,\n               b)\n\n"
            "   for_stmt ::= 'for' target_list 'in' starred_list\n")
    assert split_sentences(text) == ["Emulating numeric types is done with special methods.",
                                     "These methods are called to implement addition."]


def test_whitespace_is_normalised_and_symbols_dropped():
    assert split_sentences("A   sentence\n   that   wraps\tover lines.") == ["A sentence that wraps over lines."]
    assert split_sentences("od.__setitem__(i, y) <==> od[i]=y") == []       # half of it symbols
    assert split_sentences("a % b") == []


# --------------------------------------------------------------------------- the stdlib corpus
def test_stdlib_files_skip_tests_and_idle():
    files = stdlib_source_files()
    assert len(files) > 300
    assert files == sorted(files)
    for f in files:
        assert not SKIPPED_STDLIB_DIRS & set(f.relative_to(STDLIB).parts[:-1]), f


def test_modules_are_parsed_not_imported():
    """Importing 'this' prints the Zen of Python and 'antigravity' opens a web browser."""
    names = [n for n in ("this", "antigravity", "difflib") if (STDLIB / f"{n}.py").exists()]
    not_loaded = [n for n in names if n not in sys.modules]
    documents = stdlib_corpus(include_topics=False, files=[STDLIB / f"{n}.py" for n in names])
    assert any("get_close_matches" in s or "SequenceMatcher" in s for doc in documents for s in doc)
    for name in not_loaded:
        assert name not in sys.modules


def test_docstring_and_module_units(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text('"""The module docstring says something."""\n\n'
                      'def f():\n    """The function docstring says more."""\n\n'
                      'if True:\n    class C:\n        """A class inside a block is found too."""\n')
    (tmp_path / "broken.py").write_text("def f(:\n")                  # fails to parse: skipped
    files = [tmp_path / "broken.py", source]
    assert stdlib_corpus(include_topics=False, files=files, unit="docstring") == [
        ["The module docstring says something."], ["The function docstring says more."],
        ["A class inside a block is found too."]]
    assert stdlib_corpus(include_topics=False, files=files, unit="module") == [
        ["The module docstring says something.", "The function docstring says more.",
         "A class inside a block is found too."]]
    with pytest.raises(ValueError, match="unit"):
        stdlib_corpus(files=files, unit="chapter")


def test_identical_documents_are_kept_once():
    colorsys = STDLIB / "colorsys.py"                    # copied docstrings would leak across the split
    assert stdlib_corpus(include_topics=False, files=[colorsys, colorsys]) == stdlib_corpus(False, [colorsys])
    assert len(stdlib_corpus(include_topics=False, files=[colorsys, colorsys])) == 1


def test_pydoc_topics():
    documents = pydoc_topic_documents()
    assert len(documents) > 50
    assert any(s.startswith('The "for" statement is used to iterate') for doc in documents for s in doc)


@pytest.mark.slow
def test_full_stdlib_corpus_is_quick():
    start = time.perf_counter()
    corpus = load_corpus()                             # the embedded default
    seconds = time.perf_counter() - start
    stats = corpus_statistics(corpus)
    assert stats["documents"] > 400 and stats["sentences"] > 15_000 and stats["megabytes"] > 1.2
    assert seconds < 30                                # a few seconds on a quiet machine


def test_stdlib_corpus_is_deterministic():
    files = stdlib_source_files()[::40]
    assert stdlib_corpus(files=files) == stdlib_corpus(files=files)


# --------------------------------------------------------------------------- user text
LINES_TEXT = """The first sentence of document one.
The second sentence of document one.

Document two has one sentence.
And now a second sentence too.
"""

PARAGRAPHS_TEXT = """It is a truth universally acknowledged, that a single man in
possession of a good fortune, must be in want of a wife. However little
known the feelings or views of such a man may be on his first entering a
neighbourhood, this truth is so well fixed in the minds of the surrounding
families.

My dear Mr. Bennet, said his lady to him one day, have you heard that
Netherfield Park is let at last?
"""


def test_lines_format():
    assert parse_text(LINES_TEXT, "lines") == [
        ["The first sentence of document one.", "The second sentence of document one."],
        ["Document two has one sentence.", "And now a second sentence too."]]


def test_paragraphs_format():
    documents = parse_text(PARAGRAPHS_TEXT, "paragraphs")
    assert len(documents) == 2
    assert documents[0][0].startswith("It is a truth universally acknowledged, that a single man in possession")
    assert documents[0][0].endswith("want of a wife.")
    assert documents[1] == ["My dear Mr. Bennet, said his lady to him one day, have you heard that "
                            "Netherfield Park is let at last?"]


def test_auto_detection():
    assert detect_format(LINES_TEXT) == "lines"
    assert detect_format(PARAGRAPHS_TEXT) == "paragraphs"
    assert parse_text(PARAGRAPHS_TEXT) == parse_text(PARAGRAPHS_TEXT, "paragraphs")
    with pytest.raises(ValueError, match="format"):
        parse_text(LINES_TEXT, "markdown")


def test_read_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text(PARAGRAPHS_TEXT)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text(LINES_TEXT)
    (tmp_path / "ignored.md").write_text("Not a text file at all, it is ignored.")
    single = read_text_corpus(tmp_path / "b.txt")
    folder = read_text_corpus(tmp_path)
    # sorted paths: b.txt before sub/a.txt
    assert folder == single + parse_text(LINES_TEXT, "lines")
    assert load_corpus(tmp_path, format="auto") == folder


def test_bad_text_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_text_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="no sentences"):
        read_text_corpus(tmp_path / "empty.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        read_text_corpus(tmp_path / "nothing")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("First line is fine.\nSecond too.\nThird has caf\xe9 in Latin-1.\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt: line 3, column 14: invalid UTF-8"):
        read_text_corpus(bad)


# --------------------------------------------------------------------------- validation split
def documents_named(n):
    return [[f"Sentence one of document {i}.", f"Sentence two of document {i}."] for i in range(n)]


def test_split_by_document():
    docs = documents_named(100)
    train, validation = split_documents(docs, 0.1, seed=3)
    assert len(validation) == 10 and len(train) == 90
    assert split_documents(docs, 0.1, seed=3) == (train, validation)       # reproducible
    assert split_documents(docs, 0.1, seed=4) != (train, validation)
    # every document whole, on exactly one side, in corpus order
    assert sorted(train + validation) == sorted(docs)
    assert train == [d for d in docs if d in train]
    assert split_documents(docs, 0.0) == (docs, [])


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 60), fraction=st.floats(0.001, 0.999), seed=st.integers(0, 10**6))
def test_split_is_a_partition(n, fraction, seed):
    docs = documents_named(n)
    train, validation = split_documents(docs, fraction, seed)
    assert len(train) >= 1 and len(validation) >= 1
    assert len(train) + len(validation) == n
    assert not {tuple(d) for d in train} & {tuple(d) for d in validation}


def test_bad_split_input():
    with pytest.raises(ValueError, match="validation_fraction"):
        split_documents(documents_named(5), 1.0)
    with pytest.raises(CorpusError, match="empty"):
        split_documents([], 0.1)
    with pytest.raises(CorpusError, match="at least 2 documents"):
        split_documents(documents_named(1), 0.1)


@pytest.mark.parametrize("separator", ["\n\n", "\n\x0c\n", "\n\u00a0 \n", "\r\r", "\r\n\r\n"])
def test_any_blank_looking_line_separates_documents(separator):
    newline = "\r" if separator.startswith("\r") and "\n" not in separator else "\n"
    text = f"One sentence here.{newline}Another one here.{separator}A second document.{newline}"
    assert parse_text(text, "lines") == [["One sentence here.", "Another one here."], ["A second document."]]
