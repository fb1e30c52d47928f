"""Learn a WordPiece vocabulary from a corpus.

    vocab = train_wordpiece(texts, vocab_size=8000)          # list of tokens, in id order
    save_vocab(vocab, "my_tokenizer/")                       # vocab.txt + tokenizer_config.json
    tok = BertTokenizer.from_pretrained("my_tokenizer/")

The algorithm
-------------
1. Words. Every text goes through the tokenizer's own basic tokenization (cleaning,
   CJK spacing, accent stripping, lower-casing, splitting on whitespace and punctuation),
   so training sees exactly the words that tokenization will later see. Words are counted;
   special tokens found in the text are not words.
2. Alphabet. The ``limit_alphabet`` most frequent characters (ties: lower code point first)
   form the alphabet. Every alphabet character enters the vocabulary twice: ``c`` (starts
   a word) and ``##c`` (continues one). With both forms present, greedy longest-match can
   always fall back to single characters, so any word made of alphabet characters
   tokenizes without ``[UNK]``. Words holding a character outside the alphabet, or longer
   than ``max_input_chars_per_word``, would be ``[UNK]`` anyway and are not used.
3. Merges. Each word starts as its characters, ``h ##e ##l ##l ##o``. Repeatedly, the
   adjacent pair of symbols with the highest count (summed over word frequencies) is
   merged into a new vocabulary entry (``h`` + ``##e`` -> ``he``; ``##l`` + ``##o`` ->
   ``##lo``), until the vocabulary reaches ``vocab_size`` or no pair occurs at least
   ``min_frequency`` times.

   Why counts and not the WordPiece "likelihood" score count(ab) / (count(a) count(b))?
   The score favours pairs of rare symbols, so with a corpus of a few megabytes it spends
   the vocabulary on rare whole words and leaves frequent stems split; it also changes for
   every pair touching a merged symbol, which makes incremental updates costly. Merging
   by count is what Hugging Face's WordPiece trainer actually does (it runs byte-pair
   encoding with the ``##`` prefix) and gives a good vocabulary for greedy longest-match,
   which is how BERT uses it: the merges are not replayed at tokenization time, only
   the set of tokens matters.

   Ties are broken deterministically: among pairs with the same count, the one whose
   left symbol, then right symbol, comes first in code point order wins. The same input
   always gives the same vocabulary (Hugging Face's trainer does not promise this).

4. Speed. Pair counts are kept up to date incrementally: a merge only revisits the words
   that contain the merged pair (an index pair -> words), adjusts the counts of the pairs
   that appear or disappear there, and pushes the changed counts onto a heap; stale heap
   entries are skipped when popped. Nothing is recounted from scratch.

Vocabulary order: special tokens, the alphabet (code point order), its ``##`` forms, then
the merged tokens in the order they were learned.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict

from .backend import is_int_at_least
from .tokenization import TOKENIZER_CONFIG_NAME, VOCAB_FILE_NAME, BasicTokenizer, _check_text, _check_vocab

DEFAULT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def count_words(texts, basic: BasicTokenizer, special_tokens=()) -> Counter:
    """word -> how often it occurs, after the tokenizer's basic tokenization."""
    if isinstance(texts, str):
        texts = [texts]
    specials = set(special_tokens)
    counts = Counter()
    for i, text in enumerate(texts):
        _check_text(text, f"texts[{i}]")
        counts.update(basic.tokenize(text))
    for token in specials:
        counts.pop(token, None)
    return counts


def choose_alphabet(word_counts, limit_alphabet: int, initial_alphabet=()) -> list[str]:
    """The ``limit_alphabet`` most frequent characters (ties: lower code point first),
    plus ``initial_alphabet``, in code point order."""
    char_counts = Counter()
    for word, count in word_counts.items():
        for char in word:
            char_counts[char] += count
    ranked = sorted(char_counts, key=lambda c: (-char_counts[c], c))
    alphabet = set(ranked[:limit_alphabet]) | set(initial_alphabet)
    return sorted(alphabet)


def train_wordpiece(texts, vocab_size: int, min_frequency: int = 2, limit_alphabet: int = 1000,
                    special_tokens=DEFAULT_SPECIAL_TOKENS, do_lower_case: bool = True,
                    strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                    initial_alphabet=(), max_input_chars_per_word: int = 100,
                    prefix: str = "##") -> list[str]:
    """Learn a WordPiece vocabulary; returns the tokens in id order (see the module doc).

    ``texts``: an iterable of str (or one str). The tokenization options must be the ones
    the vocabulary will be used with; ``save_vocab`` records them.
    """
    for name, value in (("vocab_size", vocab_size), ("min_frequency", min_frequency),
                        ("limit_alphabet", limit_alphabet)):
        if not is_int_at_least(value, 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    vocab_size = int(vocab_size)
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be a list of tokens, got the string {special_tokens!r}")
    special_tokens = list(dict.fromkeys(special_tokens))
    if "[UNK]" not in special_tokens:
        raise ValueError("special_tokens must include '[UNK]' (BertTokenizer needs it)")
    basic = BasicTokenizer(do_lower_case, strip_accents, tokenize_chinese_chars, never_split=special_tokens)
    word_counts = count_words(texts, basic, special_tokens)
    if not word_counts:
        raise ValueError("the texts hold no words: nothing to learn a vocabulary from")

    alphabet = choose_alphabet(word_counts, limit_alphabet, initial_alphabet)
    vocab = list(special_tokens)
    for token in alphabet + [prefix + c for c in alphabet]:
        if token not in vocab:
            vocab.append(token)
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is too small: the {len(special_tokens)} special "
                         f"tokens and the {len(alphabet)}-character alphabet (with its ## forms) "
                         f"already take {len(vocab)} entries; raise vocab_size or lower limit_alphabet")

    # symbols are ints: index into `symbols`; a word is a list of symbols
    symbols: list[str] = list(vocab)
    symbol_id = {s: i for i, s in enumerate(symbols)}
    in_alphabet = set(alphabet)
    words, freqs = [], []
    for word in sorted(word_counts):                      # sorted: a fixed processing order
        if len(word) > max_input_chars_per_word or not set(word) <= in_alphabet:
            continue
        words.append([symbol_id[word[0]]] + [symbol_id[prefix + c] for c in word[1:]])
        freqs.append(word_counts[word])

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    pair_words: dict[tuple[int, int], set] = defaultdict(set)   # pair -> indices of words holding it
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            pair_words[pair].add(index)

    def entry(pair, count):
        # heap order: highest count, then left symbol's text, then right symbol's text
        return (-count, symbols[pair[0]], symbols[pair[1]], pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    strip = len(prefix)

    while len(vocab) < vocab_size and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:                           # stale entry: a newer one is in the heap
            continue
        if count < min_frequency:
            break                                         # the best remaining pair is too rare
        left, right = pair
        merged = symbols[left] + symbols[right][strip:]  # right always continues a word ("##...")
        if merged in symbol_id:                           # reached before by another pair of pieces
            new = symbol_id[merged]
        else:
            new = symbol_id[merged] = len(symbols)
            symbols.append(merged)
            vocab.append(merged)

        delta: dict[tuple[int, int], int] = defaultdict(int)
        for index in pair_words.pop(pair):
            old = words[index]
            rebuilt, i, n = [], 0, len(old)
            while i < n:
                if i + 1 < n and old[i] == left and old[i + 1] == right:
                    rebuilt.append(new)
                    i += 2
                else:
                    rebuilt.append(old[i])
                    i += 1
            if len(rebuilt) == n:                         # this word no longer holds the pair
                continue
            freq = freqs[index]
            for p in zip(old, old[1:]):
                delta[p] -= freq
            for p in zip(rebuilt, rebuilt[1:]):
                delta[p] += freq
                pair_words[p].add(index)
            words[index] = rebuilt
        pair_counts.pop(pair, None)
        for p, change in delta.items():
            if change == 0 or p == pair:
                continue
            pair_counts[p] += change
            if pair_counts[p] > 0:
                heapq.heappush(heap, entry(p, pair_counts[p]))
            else:
                del pair_counts[p]
    return vocab


def save_vocab(vocab, output, do_lower_case: bool = True, strip_accents: bool | None = None,
               tokenize_chinese_chars: bool = True, model_max_length: int = 512) -> str:
    """Write ``vocab.txt`` (one token per line, id order) and ``tokenizer_config.json``.

    ``output`` is a directory (created if needed); returns the path of ``vocab.txt``. The
    config records the tokenization options so ``BertTokenizer.from_pretrained(output)``
    tokenizes exactly as the trainer did.
    """
    vocab = _check_vocab(list(vocab))                     # one token per line: no empty, repeated or multi-line ones
    output = os.fspath(output)
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, VOCAB_FILE_NAME)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(vocab) + "\n")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case,
              "strip_accents": strip_accents, "tokenize_chinese_chars": tokenize_chinese_chars,
              "model_max_length": model_max_length}
    with open(os.path.join(output, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path
