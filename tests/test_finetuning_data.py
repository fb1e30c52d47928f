"""Fine-tuning data: CSV/TSV and CoNLL readers (with malformed files), SQuAD windows, spans and metric."""

import json
import os

import numpy as np
import pytest

from minibert.data.finetuning import (
    DataFormatError,
    SquadAnswer,
    SquadExample,
    best_span,
    encode_classification,
    encode_token_classification,
    postprocess_squad,
    prepare_squad_features,
    read_classification_file,
    read_conll,
    read_squad,
)
from minibert.data.squad_metric import exact_match_score, f1_score, normalize_answer, squad_evaluate
from minibert.tokenization import BertTokenizer, basic_tokenize

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SENTIMENT = os.path.join(FIXTURES, "sentiment_tiny.csv")
CONLL = os.path.join(FIXTURES, "conll_tiny.txt")
SQUAD = os.path.join(FIXTURES, "squad_tiny.json")

# words the test vocabulary splits into WordPieces, so that alignment is tested on real splits
SPLIT = {"lighthouse": ["light", "##house"], "millbrook": ["mill", "##brook"], "voss": ["vo", "##ss"],
         "zurich": ["zu", "##rich"], "muller": ["mu", "##ller"], "kerosene": ["kero", "##sene"]}


def make_tokenizer(texts):
    """A small uncased WordPiece tokenizer covering ``texts``: every word whole, except SPLIT's
    words (two pieces), plus every character alone and as a ##piece (no [UNK] for new words)."""
    words = sorted({w for text in texts for w in basic_tokenize(text)})
    chars = sorted({c for w in words for c in w})
    pieces = [p for w in SPLIT.values() for p in w]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + pieces
    vocab += [w for w in words if w not in SPLIT and w not in vocab]
    return BertTokenizer(vocab)


def _all_texts():
    texts = [open(SENTIMENT, encoding="utf-8").read(), open(CONLL, encoding="utf-8").read()]
    for example in read_squad(SQUAD):
        texts += [example.question, example.context]
    return texts


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(_all_texts())


def _write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# ============================================================================ CSV / TSV
def test_sentiment_csv_with_quoted_commas_and_a_multiline_field():
    data = read_classification_file(SENTIMENT, "text", "sentiment")
    assert data.label_names == ["negative", "neutral", "positive"]
    assert len(data) == 24
    assert data.texts[3] == "What a lovely morning, the coffee is perfect"
    multi = data.texts.index("The garden looks wonderful after the rain,\nand the roses are in bloom")
    assert data.lines[multi] == 14                    # the record starts on line 14, spans 14-15
    assert data.lines[multi + 1] == 16                # so the next one starts on line 16
    assert data.lines[-1] == 27                       # a blank line (23) was skipped
    assert data.labels[0] == data.label_names.index("positive")
    assert data.skipped_lines == []


def test_glue_style_tsv_with_text_pairs_and_stray_quotes(tmp_path):
    path = _write(tmp_path, "dev.tsv", "index\tsentence1\tsentence2\tlabel\n"
                  '0\tHe said "yes.\tHe agreed.\tentailment\n'
                  "1\tIt rains.\tThe sun is out.\tcontradiction\n")
    data = read_classification_file(path, "sentence1", "label", text_pair_column="sentence2")
    assert data.texts == ['He said "yes.', "It rains."]
    assert data.text_pairs == ["He agreed.", "The sun is out."]
    assert data.label_names == ["contradiction", "entailment"] and data.labels == [1, 0]


def test_headerless_file_with_columns_by_position_and_numeric_labels(tmp_path):
    path = _write(tmp_path, "cola.tsv", "gj04\t1\t\tThe book was read.\ngj04\t0\t*\tBook the read was.\n"
                  "gj04\t10\t\tAn odd label.\ngj04\t2\t\tAnother.\n")
    data = read_classification_file(path, 3, 1, header=False)
    assert data.label_names == ["0", "1", "2", "10"]   # numeric order, not "10" < "2"
    assert data.labels == [1, 0, 3, 2]
    with pytest.raises(ValueError, match="no header"):
        read_classification_file(path, "text", 1, header=False)


def test_regression_labels(tmp_path):
    path = _write(tmp_path, "sts.csv", "a,b,score\nA dog runs.,A dog is running.,4.8\nA cat.,A car.,0.4\n")
    data = read_classification_file(path, "a", "score", "b", regression=True)
    assert data.labels == [4.8, 0.4] and data.label_names is None and data.num_labels == 1
    bad = _write(tmp_path, "bad.csv", "a,b,score\nA dog runs.,A dog.,high\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:2: regression label 'high' is not a number"):
        read_classification_file(bad, "a", "score", "b", regression=True)


def test_invalid_utf8_rows_are_skipped_and_counted_or_errors():
    malformed = os.path.join(FIXTURES, "sentiment_malformed.csv")
    with pytest.raises(DataFormatError, match=r"sentiment_malformed.csv:3: invalid UTF-8"):
        read_classification_file(malformed, "text", "sentiment", invalid_utf8="error")
    # skipping line 3 reaches the next problem: the empty text on line 4
    with pytest.raises(DataFormatError, match=r"sentiment_malformed.csv:4: empty text in the text column 'text'"):
        read_classification_file(malformed, "text", "sentiment")


def test_skip_and_replace_modes(tmp_path):
    path = _write(tmp_path, "t.csv", b"label,text\npos,fine\nneg,caf\xe9 au lait\npos,also fine\n", "wb")
    skipped = read_classification_file(path, "text", "label")
    assert skipped.texts == ["fine", "also fine"] and skipped.skipped_lines == [3]
    replaced = read_classification_file(path, "text", "label", invalid_utf8="replace")
    assert replaced.texts[1] == "caf\ufffd au lait" and replaced.skipped_lines == []


@pytest.mark.parametrize("content, message", [
    ("label,text\npos,good\npos\n", r":3: expected at least 2 fields"),
    ("label,text\npos,good\n,ok\n", r":3: missing label in the label column 'label'"),
    ("label,text\npos,good\nneg,   \n", r":3: empty text in the text column 'text'"),
    ("label,text\npos,good\nmaybe,hmm\n", r":3: unknown label 'maybe'; the 2 labels are \['neg', 'pos'\]"),
    ("label,sentence\npos,good\n", r":1: no text column 'text'; the header has columns \['label', 'sentence'\]"),
    ("", r"empty"),
    ("label,text\n", r"no examples"),
    ("text,label\nhello, world,pos\n", r":2: 3 fields but the header has 2: a text holding the delimiter"),
])
def test_malformed_csv_rows_name_the_line(tmp_path, content, message):
    path = _write(tmp_path, "bad.csv", content)
    with pytest.raises(DataFormatError, match=message):
        read_classification_file(path, "text", "label", labels=["neg", "pos"])


def test_label_sets_columns_and_lengths_that_cannot_work(tmp_path, tokenizer):
    path = _write(tmp_path, "ok.csv", "text,label\ngood,pos\nbad,neg\n")
    with pytest.raises(ValueError, match="labels must be distinct"):
        read_classification_file(path, labels=["pos", "neg", "pos"])
    data = read_classification_file(path)
    with pytest.raises(ValueError, match="too few to split .* a part would be empty"):
        data.split((0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="max_length must leave room .* at least 3, got 2"):
        encode_classification(data, tokenizer, max_length=2)
    conll = _write(tmp_path, "tags.conll", "Paris B-LOC\nis O\n")
    with pytest.raises(ValueError, match="differ from tag_column"):
        read_conll(conll, token_column=0, tag_column=0)
    with pytest.raises(DataFormatError, match="tag column -2 is the token column on this line"):
        read_conll(conll, tag_column=-2)


def test_encode_classification_and_trimmed_batches(tokenizer):
    data = read_classification_file(SENTIMENT, "text", "sentiment")
    encoded = encode_classification(data, tokenizer, max_length=16)
    arrays = encoded.arrays
    assert arrays["input_ids"].shape == (24, 16) and arrays["labels"].dtype == np.int64
    assert (arrays["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    batch = encoded.get_batch([2, 5])                  # two short texts: trimmed to the longer one
    width = int(arrays["attention_mask"][[2, 5]].sum(1).max())
    assert batch["input_ids"].shape == (2, width) and batch["attention_mask"][:, -1].any()
    assert list(batch) == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    train, val, test = data.split((0.5, 0.25, 0.25), seed=1)
    assert (len(train), len(val), len(test)) == (12, 6, 6)
    assert sorted(train.texts + val.texts + test.texts) == sorted(data.texts)


# ============================================================================ CoNLL
def test_conll_sentences_tags_and_docstart():
    data = read_conll(CONLL)
    assert len(data) == 3
    assert data.sentences[0] == ["Clara", "Voss", "visited", "Zürich", "in", "March", "."]
    assert data.label_names[0] == "O"
    assert [data.label_names[t] for t in data.tags[1][:4]] == ["O", "B-ORG", "I-ORG", "I-ORG"]
    assert data.lines == [3, 11, 22]


def test_conll_labels_on_the_first_piece_only(tokenizer):
    data = read_conll(CONLL)
    encoded = encode_token_classification(data, tokenizer, max_length=32)
    ids, labels = encoded.arrays["input_ids"][0], encoded.arrays["labels"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids[encoded.arrays["attention_mask"][0] == 1])
    assert tokens == ["[CLS]", "clara", "vo", "##ss", "visited", "zu", "##rich", "in", "march", ".", "[SEP]"]
    names = data.label_names
    expected = [-100, names.index("B-PER"), names.index("I-PER"), -100, 0, names.index("B-LOC"), -100, 0, 0, 0, -100]
    assert labels[:len(expected)].tolist() == expected
    assert (labels[len(expected):] == -100).all()
    # predictions read back per word at each first piece
    predictions = np.where(encoded.arrays["labels"] >= 0, encoded.arrays["labels"], 99)
    assert encoded.word_predictions(predictions) == data.tags
    short = encode_token_classification(data, tokenizer, max_length=6)
    assert short.arrays["input_ids"].shape[1] == 6 and short.truncated_words > 0


def test_malformed_conll_names_the_line(tmp_path):
    with pytest.raises(DataFormatError, match=r"conll_malformed.txt:5: expected at least 2 whitespace-separated"):
        read_conll(os.path.join(FIXTURES, "conll_malformed.txt"))
    unknown = _write(tmp_path, "u.txt", "Anna B-PER\nran O\n\nBob B-XYZ\n")
    with pytest.raises(DataFormatError, match=r"u.txt:4: unknown tag 'B-XYZ'"):
        read_conll(unknown, labels=["O", "B-PER"])
    bad_bytes = _write(tmp_path, "b.txt", b"Anna B-PER\nr\xffn O\n", "wb")
    with pytest.raises(DataFormatError, match=r"b.txt:2: invalid utf-8"):
        read_conll(bad_bytes)


# ============================================================================ SQuAD
def test_read_squad_fixture():
    examples = read_squad(SQUAD)
    assert len(examples) == 13
    assert examples[0].id == "hp-1" and examples[0].answers[0].text == "Clara Voss"
    for example in examples:
        for answer in example.answers:
            assert example.context[answer.start:answer.start + len(answer.text)] == answer.text


def _squad_file(tmp_path, qa, context="The cat sat on the mat."):
    document = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]}
    return _write(tmp_path, "s.json", json.dumps(document, indent=1))


def test_answer_not_at_its_start_names_the_question(tmp_path):
    path = _squad_file(tmp_path, {"id": "q-17", "question": "Where?", "answers": [{"text": "mat", "answer_start": 3}]})
    with pytest.raises(DataFormatError, match=r"s.json:\d+: question 'q-17' .*'mat' is not at answer_start 3.*"
                                              r"it occurs at 19"):
        read_squad(path)
    path = _squad_file(tmp_path, {"id": "q-18", "question": "Who?", "answers": [{"text": "dog", "answer_start": 4}]})
    with pytest.raises(DataFormatError, match=r"question 'q-18'.*does not occur in the context"):
        read_squad(path)
    path = _squad_file(tmp_path, {"id": "q-19", "answers": []})
    with pytest.raises(DataFormatError, match=r"question 'q-19'.*missing 'question'"):
        read_squad(path)
    broken = _write(tmp_path, "broken.json", '{"data": [\n  {"title": "x",,}\n]}')
    with pytest.raises(DataFormatError, match=r"broken.json:2: not valid JSON"):
        read_squad(broken)


def test_squad_2_negative_starts_and_hand_built_answers_are_refused(tmp_path, tokenizer):
    path = _squad_file(tmp_path, {"id": "q2", "question": "Why?", "answers": [], "is_impossible": True})
    with pytest.raises(DataFormatError, match="unanswerable question .*only SQuAD v1.1"):
        read_squad(path)
    path = _squad_file(tmp_path, {"id": "q3", "question": "Where?", "answers": [{"text": "mat.", "answer_start": -4}]})
    with pytest.raises(DataFormatError, match="answer_start -4: a character offset >= 0"):
        read_squad(path)                                # context[-4:] is "mat." all the same
    example = SquadExample("q4", "What is it?", "Paris is the capital.", [SquadAnswer("Paris", 10)])
    with pytest.raises(ValueError, match="answer 'Paris' is not at character 10"):
        prepare_squad_features([example], tokenizer, max_length=32, doc_stride=8)
    with pytest.raises(ValueError, match="no examples"):
        prepare_squad_features([], tokenizer)


def test_postprocessing_refuses_inputs_that_would_give_wrong_answers(tokenizer):
    examples = read_squad(SQUAD)
    features = prepare_squad_features(examples, tokenizer, max_length=48, doc_stride=16, max_query_length=12)
    T = features.arrays["input_ids"].shape[1]
    logits = np.zeros((len(features), T))
    with pytest.raises(ValueError, match="max_answer_length must be a positive integer"):
        postprocess_squad(examples, features, logits, logits, max_answer_length=0)
    with pytest.raises(ValueError, match="not those the features were prepared from"):
        postprocess_squad(examples[::-1], features, logits, logits)
    with pytest.raises(ValueError, match="give logits for every position of the window"):
        postprocess_squad(examples, features, logits[:, :4], logits[:, :4])
    with pytest.raises(ValueError, match=r"1-D rows .* pass \[\.\.\., 0\] and \[\.\.\., 1\]"):
        postprocess_squad(examples, features, np.zeros((len(features), T, 2)), np.zeros((len(features), T, 2)))
    nan = logits.copy()
    nan[0, :] = np.nan
    with pytest.raises(ValueError, match="window 0: the logits hold NaN"):
        postprocess_squad(examples, features, nan, logits)
    with pytest.raises(TypeError, match="gold answers must be a list of str"):
        squad_evaluate([("q1", "Paris")], {"q1": "Paris"})
    with pytest.raises(ValueError, match="none of the 1 predictions is for a question id"):
        squad_evaluate([("1", ["Paris"])], {1: "Paris"})


def test_windows_cover_every_answer_and_spans_round_trip(tokenizer):
    examples = read_squad(SQUAD)
    features = prepare_squad_features(examples, tokenizer, max_length=48, doc_stride=16, max_query_length=12)
    owners = features.example_index
    long_context = [i for i, e in enumerate(examples) if e.id.startswith("mb-")]
    assert all((owners == i).sum() >= 4 for i in long_context)          # the long context needs several windows
    arrays = features.arrays
    assert arrays["input_ids"].shape[1] <= 48
    for index, example in enumerate(examples):
        windows = np.flatnonzero(owners == index)
        answer = example.answers[0]
        found = 0
        for f in windows:
            start, end = arrays["start_positions"][f], arrays["end_positions"][f]
            if start == 0:
                assert end == 0                                        # not in this window: [CLS]
                continue
            found += 1
            assert arrays["token_type_ids"][f, start] == 1 and features.offsets[f, start, 0] >= 0
            text = example.context[features.offsets[f, start, 0]:features.offsets[f, end, 1]]
            assert text == answer.text                                 # characters -> tokens -> characters
        assert found >= 1, example.id


def test_an_answer_right_after_a_bracket_starts_at_its_own_token(tokenizer):
    context = "The lighthouse was built (1850) by the harbour."       # "(" ends where the answer starts
    example = SquadExample("q", "When was the lighthouse built?", context, [SquadAnswer("1850", 26)])
    features = prepare_squad_features([example], tokenizer, max_length=48)
    s, e = features.arrays["start_positions"][0], features.arrays["end_positions"][0]
    assert context[features.offsets[0, s, 0]:features.offsets[0, e, 1]] == "1850"


def test_windows_overlap_by_the_stride_and_keep_the_question(tokenizer):
    example = [e for e in read_squad(SQUAD) if e.id == "mb-1"]
    features = prepare_squad_features(example, tokenizer, max_length=40, doc_stride=10, max_query_length=8)
    question = tokenizer.tokenize_to_ids(example[0].question)[:8]
    context_ids, _ = tokenizer.tokenize_with_offsets(example[0].context)
    seen = []
    for row, mask in zip(features.arrays["input_ids"], features.arrays["attention_mask"]):
        row = row[mask == 1].tolist()
        assert row[:len(question) + 2] == [tokenizer.cls_token_id, *question, tokenizer.sep_token_id]
        seen.append(row[len(question) + 2:-1])
    window = 40 - len(question) - 3
    for k, part in enumerate(seen):
        assert part == context_ids[10 * k:10 * k + window]
    assert seen[-1][-1] == context_ids[-1]


def test_postprocessing_recovers_the_gold_spans_from_perfect_logits(tokenizer):
    examples = read_squad(SQUAD)
    features = prepare_squad_features(examples, tokenizer, max_length=48, doc_stride=16, max_query_length=12)
    T = features.arrays["input_ids"].shape[1]
    start_logits = np.full((len(features), T), -5.0)
    end_logits = np.full((len(features), T), -5.0)
    for f in range(len(features)):
        s, e = features.arrays["start_positions"][f], features.arrays["end_positions"][f]
        if s:                                        # a big vote for the gold span where it is visible
            start_logits[f, s] += 10
            end_logits[f, e] += 10
        start_logits[f, 0] = end_logits[f, 0] = 50   # [CLS] is never an answer
    predictions = postprocess_squad(examples, features, start_logits, end_logits)
    assert predictions == {e.id: e.answers[0].text for e in examples}
    assert squad_evaluate(examples, predictions) == {"exact_match": 100.0, "f1": 100.0, "questions": 13}
    # trimmed rows (a batch cut to its longest window) work too
    rows = [start_logits[f, :int(features.arrays["attention_mask"][f].sum())] for f in range(len(features))]
    ends = [end_logits[f, :len(rows[f])] for f in range(len(features))]
    assert postprocess_squad(examples, features, rows, ends) == predictions


def test_postprocessing_keeps_original_case_and_accents(tokenizer):
    example = [e for e in read_squad(SQUAD) if e.id == "cm-2"]
    features = prepare_squad_features(example, tokenizer, max_length=64)
    s, e = features.arrays["start_positions"][0], features.arrays["end_positions"][0]
    pieces = tokenizer.convert_ids_to_tokens(features.arrays["input_ids"][0, s:e + 1].tolist())
    assert pieces == ["anna", "mu", "##ller"]
    logits = np.zeros((1, features.arrays["input_ids"].shape[1]))
    start, end = logits.copy(), logits.copy()
    start[0, s], end[0, e] = 5, 5
    assert postprocess_squad(example, features, start, end) == {"cm-2": "Anna Müller"}


def test_best_span_respects_order_and_length():
    start = np.array([0.0, 5.0, 0.0, 0.0, 9.0])
    end = np.array([8.0, 0.0, 0.0, 6.0, 0.0])
    assert best_span(start, end, 30)[:2] == (1, 3)       # (4, 0) scores more but ends before it starts
    assert best_span(start, end, 2)[:2] == (4, 4)        # length <= 2 tokens: (1, 3) is too long
    i, j, score = best_span(start, end, 1)
    assert i == j and score == 9.0


# ============================================================================ the metric
@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple,  a pear ", "apple pear"),
    ("Theatre", "theatre"),                              # "the" only as a whole word
    ("A", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_on_known_cases():
    assert exact_match_score("the Eiffel tower", "Eiffel Tower.") == 1.0
    assert exact_match_score("Eiffel", "Eiffel Tower") == 0.0
    # pred "eiffel" vs gold "eiffel tower": precision 1, recall 1/2 -> F1 2/3
    assert f1_score("Eiffel", "Eiffel Tower") == pytest.approx(2 / 3)
    # pred "in paris france" vs gold "paris": precision 1/3, recall 1 -> 0.5
    assert f1_score("in Paris, France", "Paris") == pytest.approx(0.5)
    assert f1_score("London", "Paris") == 0.0
    assert f1_score("the", "a") == 0.0                  # both normalise to nothing: no common token
    # repeated tokens count with multiplicity: common = 1 ("a a b" -> "b"? no: articles go) ...
    assert f1_score("new new york", "new york") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    # "cat" twice on both sides: common = 2, precision 1, recall 2/3 -> 0.8 (a set overlap would give 0.4)
    assert f1_score("cat cat", "cat cat dog") == pytest.approx(0.8)


def test_squad_evaluate_takes_the_best_gold_and_counts_missing_as_zero():
    examples = [("q1", ["Clara Voss", "the engineer Clara Voss"]), ("q2", ["31 meters"]), ("q3", ["whale oil"])]
    predictions = {"q1": "engineer Clara Voss", "q2": "31"}
    scores = squad_evaluate(examples, predictions)
    # q1: EM 1 (matches the second gold after normalisation), F1 1; q2: EM 0, F1 2/3; q3: missing, 0
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
