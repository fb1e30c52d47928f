"""Draw where BERT's attention heads look for one sentence.

    python examples/attention_map.py                                   # all-MiniLM-L6-v2, a default sentence
    python examples/attention_map.py --text "The cat sat on the mat." --layer 2
    python examples/attention_map.py --model runs/sentiment/best_model  # any BERT folder

Writes two PNGs into --output (default runs/attention):
    attention_layer<L>.png   one heat map per head of layer L: row i shows how token i's
                             attention is spread over the sentence (each row sums to 1)
    attention_all_layers.png every layer x every head, small, to compare the layers

What to look for: heads that look at the previous or the next token, heads that put almost
everything on [SEP] or [CLS] (a way of "doing nothing"), heads that link a word to its own
other pieces or to a related word, and heads that spread out evenly (mostly in low layers).
"""

import argparse
import os
import warnings

import numpy as np

from minibert.attention_maps import attention_probabilities, plot_attention_map
from minibert.sentence_embeddings import find_minilm
from minibert.modeling import BertModel
from minibert.tokenization import BertTokenizer

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", default=None, metavar="DIR", help="BERT folder (default: all-MiniLM-L6-v2)")
parser.add_argument("--text", default="The driverless car stopped because the light turned red.")
parser.add_argument("--layer", type=int, default=1, help="the layer drawn head by head (0 is the first)")
parser.add_argument("--output", default="runs/attention", metavar="DIR")
args = parser.parse_args()

directory = args.model or find_minilm()
tokenizer = BertTokenizer.from_pretrained(directory)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)        # a fine-tuned model's head is not needed here
    model = BertModel.from_pretrained(directory)
os.makedirs(args.output, exist_ok=True)

tokens, maps = attention_probabilities(model, tokenizer, args.text)
print(f"{len(tokens)} tokens: {' '.join(tokens)}")


def habit(p) -> str:
    """What a head mostly does, in words: where the attention of the ordinary tokens goes, on average."""
    t = p.shape[-1]
    words = range(1, t - 1)                                       # queries other than [CLS] and [SEP]
    shares = {"[CLS]/[SEP]": np.mean([p[i, 0] + p[i, t - 1] for i in words]),
              "previous": np.mean([p[i, i - 1] for i in words if i > 1]),
              "itself": np.mean([p[i, i] for i in words]),
              "next": np.mean([p[i, i + 1] for i in words if i < t - 2])}
    shares["elsewhere"] = 1.0 - sum(shares.values())
    name = max(shares, key=shares.get)
    return f"{name} {100 * shares[name]:.0f}%"


for layer, p in enumerate(maps):                     # a summary in words of each head's habit
    print(f"layer {layer}: " + "; ".join(f"h{h} {habit(p[h])}" for h in range(len(p))))

one = plot_attention_map(model, tokenizer, args.text, os.path.join(args.output, f"attention_layer{args.layer}.png"),
                         layer=args.layer)
every = plot_attention_map(model, tokenizer, args.text, os.path.join(args.output, "attention_all_layers.png"),
                           layer=None)
print(f"saved {one} and {every}")
