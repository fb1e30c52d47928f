"""Text corpora for pretraining: documents made of sentences.

A corpus is a list of documents, each a list of sentence strings::

    [["The for statement is used to iterate over a sequence.", "It ..."],   # document 0
     ["Return the absolute value of the argument.", ...],                  # document 1
     ...]

Documents matter for next-sentence prediction (the true next sentence comes from the same
document, the random one from another) and for the validation split (held out by document,
so no text of a validation document is seen in training).

Where the text comes from:

* :func:`stdlib_corpus`, the default, needs no download: the docstrings of the Python
  standard library's ``.py`` files, read with :mod:`ast` (the modules are parsed, never
  imported), plus the reference-manual topics of ``pydoc_data.topics`` (a data module).
  One document per module (its docstrings in order; or one per docstring) and per topic.
* :func:`read_text_corpus`: a ``.txt`` file or a folder of them, in BERT's original format
  (one sentence per line, a blank line between documents) or as plain paragraphs.

Nothing is cached on disk: reading the standard library takes a few seconds.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sysconfig
from pathlib import Path

import numpy as np

Corpus = list  # list[list[str]]: documents, each a list of sentences

# ----------------------------------------------------------------------------- constants
# Standard-library folders that hold no prose worth learning from: test suites (their
# docstrings describe test cases), IDLE, installed third-party packages, the codec tables
# of ``encodings`` (generated boilerplate), and ``pydoc_data`` (read as data instead).
SKIPPED_STDLIB_DIRS = frozenset({
    "test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__",
    "encodings", "pydoc_data",
})

# A sentence needs at least this many words (with a letter in them); shorter fragments
# ("Args:", "Returns", "a % b") are headings, list markers or code, not sentences.
MIN_SENTENCE_WORDS = 3
# ... and at least this fraction of its non-space characters must be letters: below it,
# a "sentence" is mostly symbols, such as "od.__setitem__(i, y) <==> od[i]=y".
MIN_LETTER_FRACTION = 0.6

# Words ending in a period that do not end a sentence.
ABBREVIATIONS = frozenset({"e.g.", "i.e.", "cf.", "vs.", "viz.", "approx.", "resp.", "Mr.", "Mrs.",
                           "Ms.", "Dr.", "St.", "No.", "Fig.", "Sec.", "Eq."})

# What one document of the standard-library corpus is (see stdlib_docstring_documents).
DOCUMENT_UNITS = ("module", "docstring")

# Text formats of user corpora (see parse_text). "auto" picks "lines" when at least this
# fraction of the lines that continue onto a next line end with sentence punctuation.
FORMATS = ("auto", "lines", "paragraphs")
LINES_FORMAT_THRESHOLD = 0.6


class CorpusError(ValueError):
    """A corpus that cannot be used: empty, unreadable, or too small for what was asked."""


# ----------------------------------------------------------------------------- sentences
_BLANK_LINES = re.compile(r"\n[ \t]*\n")                  # paragraph separator in docstrings
_BLANK_TEXT_LINES = re.compile(r"\n\s*\n")                 # in text files: any blank-looking line (\f, NBSP...)
_UNDERLINE = re.compile(r"^\s*([-=~^*#+`'\".:_])\1{2,}\s*$")  # reST title under/overlines
_TABLE_ROW = re.compile(r"^\s*(\||\+[-=])")                    # reST grid-table rows and borders
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))"     # after . ! or ?, possibly with a closing quote/bracket
    r"\s+"                                   # whitespace
    r"(?=[\"'(\[]?[A-Z0-9])"                 # then the capital letter or digit of the next sentence
)
_WHITESPACE = re.compile(r"\s+")
_PROSE_START = re.compile(r"[\"'(\[]?[A-Z]")                    # a capital, maybe after a quote
_PROSE_END = re.compile(r"[.!?][\"')\]]?$")                      # . ! or ?, maybe before a quote


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _reads_as_prose(text: str) -> bool:
    """Starts with a capital letter and ends a sentence: prose rather than code."""
    return bool(_PROSE_START.match(text)) and bool(_PROSE_END.search(text))


def _paragraphs(text: str) -> list[str]:
    """The prose paragraphs of reST-ish text, each as one whitespace-normalised string.

    Dropped: doctests (from a ``>>>`` line to the end of its paragraph, which holds its
    output), title underlines, table rows, directives (``.. note::``), and indented
    paragraphs that do not read as prose (code and grammar examples are indented in
    docstrings and in the reference manual; indented prose such as a definition's
    description is kept).
    """
    lines = inspect.cleandoc(text).splitlines()       # tabs expanded, docstring indentation removed
    base = min((_indent(line) for line in lines if line.strip()), default=0)
    kept = []
    for block in _BLANK_LINES.split("\n".join(lines)):
        block_lines = []
        for line in block.splitlines():
            stripped = line.strip()
            if stripped.startswith(">>>"):
                break                                   # doctest: the rest is code and output
            if not stripped or _UNDERLINE.match(line) or _TABLE_ROW.match(line) or stripped.startswith(".. "):
                continue
            block_lines.append(line)
        if not block_lines:
            continue
        paragraph = _WHITESPACE.sub(" ", " ".join(block_lines)).strip()
        paragraph = paragraph.replace("::", ":")         # reST "Example::" reads "Example:"
        indented = min(_indent(line) for line in block_lines) > base
        if indented and not _reads_as_prose(paragraph):
            continue
        kept.append(paragraph)
    return kept


def split_sentences(text: str) -> list[str]:
    """Split reST-ish prose into sentences.

    1. Paragraphs are separated by blank lines; code, doctests and titles are dropped
       (see ``_paragraphs``); the lines of a paragraph are joined, whitespace normalised.
    2. A paragraph is cut after ``.``, ``!`` or ``?`` (optionally followed by a closing
       quote or bracket) where whitespace and a capital letter or digit follow, unless the
       word before is an abbreviation such as "e.g.".
    3. Fragments of fewer than ``MIN_SENTENCE_WORDS`` words, or with fewer than
       ``MIN_LETTER_FRACTION`` letters among their characters (code), are dropped.

    >>> split_sentences("Return the value. See e.g. the Foo class.\\n\\n>>> f(1)\\n2\\n\\nArgs:")
    ['Return the value.', 'See e.g. the Foo class.']
    """
    sentences = []
    for paragraph in _paragraphs(text):
        pieces = _SENTENCE_END.split(paragraph)
        merged = []
        for piece in pieces:
            if merged and merged[-1].rsplit(" ", 1)[-1] in ABBREVIATIONS:
                merged[-1] += " " + piece           # "e.g. Foo" is one sentence
            else:
                merged.append(piece)
        sentences += [s for s in merged if _is_sentence(s)]
    return sentences


_WORD_WITH_LETTER = re.compile(r"\S*[^\W\d_]\S*")         # a run of non-space with a letter in it
_NOT_LETTERS = re.compile(r"[\W\d_]+")                       # everything but letters


def _is_sentence(text: str) -> bool:
    """Enough words (``MIN_SENTENCE_WORDS``) and enough letters (``MIN_LETTER_FRACTION``)."""
    if len(_WORD_WITH_LETTER.findall(text)) < MIN_SENTENCE_WORDS:
        return False
    non_space = len(text) - text.count(" ")                   # text is whitespace-normalised
    letters = len(_NOT_LETTERS.sub("", text))
    return letters >= MIN_LETTER_FRACTION * non_space


# ----------------------------------------------------------------------------- the stdlib
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Compound statements whose bodies may hold definitions (``if sys.platform == ...: def f``).
_BLOCKS = _DEFINITIONS + (ast.If, ast.Try, ast.With, ast.For, ast.While, ast.AsyncWith, ast.AsyncFor)
if hasattr(ast, "TryStar"):                                   # Python >= 3.11
    _BLOCKS += (ast.TryStar,)


def _docstrings(tree: ast.Module) -> list[str]:
    """Docstrings of a module and of its classes and functions, in source order.

    Only statement blocks are followed (bodies of classes, functions, ``if``/``try``/``with``
    ...), which finds every definition without visiting every expression node.
    """
    found = []

    def visit(node):
        if isinstance(node, (ast.Module,) + _DEFINITIONS):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        for field in ("body", "orelse", "finalbody", "handlers"):
            for child in getattr(node, field, ()):
                if isinstance(child, _BLOCKS) or isinstance(child, ast.excepthandler):
                    visit(child)

    visit(tree)
    return found


def stdlib_source_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted, skipping ``SKIPPED_STDLIB_DIRS``."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise CorpusError(f"standard library folder not found: {root}")
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_STDLIB_DIRS)
        files += [Path(folder) / name for name in names if name.endswith(".py")]
    return sorted(files)


def stdlib_docstring_documents(files=None, unit: str = "module") -> Corpus:
    """Documents made of the docstrings of the given (default: all) standard-library files.

    ``unit="module"``: one document per file, its docstrings in source order (a module reads
    like an article in sections). ``unit="docstring"``: one document per docstring; half of
    them are a single sentence, so most sequence pairs would be short and mostly padding.
    Files are parsed with :func:`ast.parse`, never imported; a file that fails to parse (or
    to decode) is skipped.
    """
    if unit not in DOCUMENT_UNITS:
        raise ValueError(f"unit must be one of {DOCUMENT_UNITS}, got {unit!r}")
    files = stdlib_source_files() if files is None else files
    documents = []
    for path in files:
        try:
            tree = ast.parse(Path(path).read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            continue
        per_docstring = [split_sentences(doc) for doc in _docstrings(tree)]
        if unit == "module":
            per_docstring = [[s for sentences in per_docstring for s in sentences]]
        documents += [sentences for sentences in per_docstring if sentences]
    return documents


def pydoc_topic_documents() -> Corpus:
    """One document per topic of the Python reference manual (``pydoc_data.topics``), sorted by name."""
    from pydoc_data.topics import topics        # a module of data: a dict of strings
    return [s for s in (split_sentences(topics[name]) for name in sorted(topics)) if s]


def stdlib_corpus(include_topics: bool = True, files=None, unit: str = "module") -> Corpus:
    """The embedded default corpus: stdlib docstrings (+ pydoc topics), duplicates removed.

    Deterministic: files in sorted order, docstrings in source order, topics by name.
    ``unit`` chooses one document per module or per docstring (see
    :func:`stdlib_docstring_documents`); ``files`` restricts the docstrings to some files
    (small corpora for tests).
    """
    documents = stdlib_docstring_documents(files, unit)
    if include_topics:
        documents += pydoc_topic_documents()
    return _deduplicate(documents)


def _deduplicate(documents: Corpus) -> Corpus:
    """Drop documents identical to an earlier one (copied docstrings would leak across splits)."""
    seen = set()
    unique = []
    for doc in documents:
        key = tuple(doc)
        if key not in seen:
            seen.add(key)
            unique.append(doc)
    return unique


# ----------------------------------------------------------------------------- user text
def _read_utf8(path: Path) -> str:
    """The text of a file; invalid UTF-8 is an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CorpusError(
            f"{path}: line {line}, column {column}: invalid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def detect_format(text: str) -> str:
    """Guess whether ``text`` has one sentence per line ("lines") or wrapped paragraphs.

    In the "lines" format almost every line ends a sentence; in wrapped paragraphs most
    lines that continue onto another line stop mid-sentence. So: among lines followed by
    another non-blank line, if at least ``LINES_FORMAT_THRESHOLD`` of them end with sentence
    punctuation, it is "lines". A file of single-line blocks (nothing to compare) is "lines".
    """
    lines = text.splitlines()
    continued = [a.rstrip() for a, b in zip(lines, lines[1:]) if a.strip() and b.strip()]
    if not continued:
        return "lines"
    ending = sum(bool(_PROSE_END.search(line)) for line in continued)
    return "lines" if ending / len(continued) >= LINES_FORMAT_THRESHOLD else "paragraphs"


def parse_text(text: str, format: str = "auto") -> Corpus:
    """Documents from text; blank lines separate documents in both formats.

    "lines":      each non-blank line is one sentence (BERT's original data format).
    "paragraphs": each blank-line-separated paragraph is one document; its lines are
                  joined and cut into sentences by :func:`split_sentences`.
    "auto":       :func:`detect_format` chooses.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "auto":
        format = detect_format(text)
    documents = []
    for block in _BLANK_TEXT_LINES.split(text.replace("\r\n", "\n").replace("\r", "\n")):
        if format == "lines":
            sentences = [_WHITESPACE.sub(" ", line).strip() for line in block.splitlines()]
            sentences = [s for s in sentences if s]
        else:
            sentences = split_sentences(block)
        if sentences:
            documents.append(sentences)
    return documents


def read_text_corpus(path: str | os.PathLike, format: str = "auto") -> Corpus:
    """Read a ``.txt`` file, or every ``.txt`` file under a folder (sorted), as a corpus.

    See :func:`parse_text` for the formats; "auto" is decided per file.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus path not found: {path}")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise CorpusError(f"no .txt files found under {path}")
    documents = []
    for file in files:
        documents += parse_text(_read_utf8(file), format)
    if not documents:
        raise CorpusError(f"the corpus at {path} holds no sentences: the files are empty, or (read as "
                          f"paragraphs) every sentence is shorter than {MIN_SENTENCE_WORDS} words; "
                          "format='lines' keeps every non-blank line")
    return documents


def load_corpus(source: str | os.PathLike | None = None, format: str = "auto") -> Corpus:
    """The corpus named by ``source``: None or "stdlib" for the embedded default, else a path."""
    if source is None or str(source) == "stdlib":
        return stdlib_corpus()
    return read_text_corpus(source, format)


# ----------------------------------------------------------------------------- splits, stats
def split_documents(documents: Corpus, validation_fraction: float, seed: int = 0):
    """Hold out a random ``validation_fraction`` of the documents: (train, validation).

    The split is by document (never a document cut in two) and reproducible from ``seed``;
    each part keeps the corpus order. At least one document goes to each side when
    ``validation_fraction > 0``.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    n = len(documents)
    if n == 0:
        raise CorpusError("cannot split an empty corpus")
    if validation_fraction == 0.0:
        return list(documents), []
    if n < 2:
        raise CorpusError(f"a validation split needs at least 2 documents, the corpus has {n}")
    n_validation = min(n - 1, max(1, round(validation_fraction * n)))
    held_out = np.random.default_rng(seed).permutation(n)[:n_validation]
    is_validation = np.zeros(n, dtype=bool)
    is_validation[held_out] = True
    train = [doc for doc, v in zip(documents, is_validation) if not v]
    validation = [doc for doc, v in zip(documents, is_validation) if v]
    return train, validation


def corpus_statistics(documents: Corpus) -> dict:
    """Counts that describe a corpus: documents, sentences, words, characters, megabytes (UTF-8)."""
    sentences = [s for doc in documents for s in doc]
    return {
        "documents": len(documents),
        "sentences": len(sentences),
        "words": sum(len(s.split()) for s in sentences),
        "characters": sum(len(s) for s in sentences),
        "megabytes": sum(len(s.encode("utf-8")) for s in sentences) / 1e6,
    }
