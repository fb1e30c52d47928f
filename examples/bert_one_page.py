"""BERT on one page: the whole pretraining step in plain NumPy.

BERT pretraining reads a batch of sentence pairs "[CLS] A [SEP] B [SEP]" in which some
tokens were hidden, and computes two losses:
  * masked-LM (MLM): at each labelled position, the cross-entropy of the true token;
  * next-sentence prediction (NSP): from the [CLS] position, whether B follows A (label 0)
    or is a random sentence (label 1).
loss = mean MLM cross-entropy + mean NSP cross-entropy. This file computes that loss
(`forward`), its gradient with respect to every weight (`backward`, written by hand: no
autograd) and one AdamW update (`adamw_step`).

The weights are a dict of arrays named with the keys of Hugging Face's BertForPreTraining
state dict (linear weights stored [out, in]); `config` is the dict of its config.json.
Dropout is left out (it is the identity at evaluation, and tests use dropout 0).
tests/test_one_page.py proves that this page gives the same loss, the same gradients and
the same AdamW step as the minibert library, to about 1e-10 in float64.

Shapes:  B batch   T sequence   H hidden   N heads   D = H / N head size
         I intermediate   V vocabulary   M masked (labelled) positions
"""

import math

import numpy as np
from scipy.special import erf

IGNORE = -100           # a label that is not predicted (no loss, no gradient)
MASK_VALUE = -1e9       # added to the attention scores of padding keys: exp() makes it 0


# ================================================================ the ops: forward / backward
# Each forward returns (output, cache); its backward takes d(loss)/d(output) and the cache.

def linear_forward(x, w, b):
    """y = x @ w.T + b        x (..., in)  w (out, in)  b (out,)"""
    return x @ w.T + b, (x, w)


def linear_backward(dy, cache):
    """dx = dy @ w     dw = dy.T @ x     db = sum(dy), summed over every leading position"""
    x, w = cache
    dy2, x2 = dy.reshape(-1, w.shape[0]), x.reshape(-1, w.shape[1])      # (rows, out), (rows, in)
    return dy @ w, dy2.T @ x2, dy2.sum(axis=0)


def embedding_forward(ids, table):
    """y[i] = table[ids[i]]      ids (B, T) -> (B, T, H)"""
    return table[ids], (ids, table.shape)


def embedding_backward(dy, cache):
    """dtable[v] = sum of dy[i] over the positions i where ids[i] == v"""
    ids, shape = cache
    dtable = np.zeros(shape, dtype=dy.dtype)                              # (V, H)
    np.add.at(dtable, ids, dy)          # unbuffered: a repeated id adds every time
    return dtable


def layer_norm_forward(x, g, b, eps=1e-12):
    """y = g * (x - mean) / sqrt(var + eps) + b   over the last axis (biased variance)"""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * rstd
    return xhat * g + b, (xhat, rstd, g)


def layer_norm_backward(dy, cache):
    """dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dy * g"""
    xhat, rstd, g = cache
    hidden = xhat.shape[-1]
    dg = (dy * xhat).reshape(-1, hidden).sum(axis=0)
    db = dy.reshape(-1, hidden).sum(axis=0)
    dxhat = dy * g
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dg, db


def gelu_forward(x):
    """y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2   (exact GELU, as BERT)"""
    cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    """dy/dx = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)"""
    x, cdf = cache
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


def tanh_forward(x):
    """y = tanh(x)"""
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, y):
    """dy/dx = 1 - y^2"""
    return dy * (1.0 - y * y)


def softmax_forward(s):
    """p = exp(s - max s) / sum(exp(s - max s))   over the last axis"""
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp, p):
    """ds = p * (dp - sum(dp * p))"""
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


def attention_forward(q, k, v, mask):
    """o = softmax(q @ k.T / sqrt(D) + mask) @ v      q, k, v (B, N, T, D)  mask (B, 1, 1, T)"""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q @ k.swapaxes(-1, -2)) * scale + mask                          # (B, N, T, T)
    p, softmax_cache = softmax_forward(s)
    return p @ v, (q, k, v, p, softmax_cache, scale)                     # (B, N, T, D)


def attention_backward(do, cache):
    """dv = p.T @ do    dp = do @ v.T    ds = softmax'(dp)    dq = ds @ k / sqrt D    dk = ds.T @ q / sqrt D"""
    q, k, v, p, softmax_cache, scale = cache
    dv = p.swapaxes(-1, -2) @ do                                         # (B, N, T, D)
    dp = do @ v.swapaxes(-1, -2)                                         # (B, N, T, T)
    ds = softmax_backward(dp, softmax_cache) * scale
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


def cross_entropy_forward(logits, labels):
    """loss = -mean over counted rows of log softmax(logits)[row, label]; rows labelled -100 do not count"""
    counted = labels != IGNORE                                           # (R,)
    count = max(int(counted.sum()), 1)                                   # no counted row: loss 0
    shifted = logits - logits.max(axis=-1, keepdims=True)                # (R, C)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    safe = np.where(counted, labels, 0)
    loss = -(logp[np.arange(len(labels)), safe] * counted).sum() / count
    return float(loss), (np.exp(logp), safe, counted, count)


def cross_entropy_backward(cache):
    """dlogits = (softmax(logits) - onehot(label)) / count on counted rows, 0 on the others"""
    probs, safe, counted, count = cache
    dlogits = probs.copy()
    dlogits[np.arange(len(safe)), safe] -= 1.0
    return dlogits * (counted / count)[:, None]


# ================================================================ helpers naming the weights
# `dense`/`norm` read the weights called `name` and keep the op's cache under that name;
# their backward twins add the weights' gradients into `grads` (+=: a weight used twice, like
# the tied word embeddings, gets both contributions) and return the input's gradient.

def dense(params, cache, name, x):
    y, cache[name] = linear_forward(x, params[name + ".weight"], params[name + ".bias"])
    return y


def dense_backward(grads, cache, name, dy):
    dx, dw, db = linear_backward(dy, cache[name])
    grads[name + ".weight"] += dw
    grads[name + ".bias"] += db
    return dx


def norm(params, cache, name, x, eps):
    y, cache[name] = layer_norm_forward(x, params[name + ".weight"], params[name + ".bias"], eps)
    return y


def norm_backward(grads, cache, name, dy):
    dx, dg, db = layer_norm_backward(dy, cache[name])
    grads[name + ".weight"] += dg
    grads[name + ".bias"] += db
    return dx


# ================================================================ one encoder layer (post-LN)

def layer_forward(params, cache, pre, h, mask, num_heads, eps):
    """h -> attention -> dense -> +h -> LayerNorm -> a;  a -> dense -> gelu -> dense -> +a -> LayerNorm"""
    B, T, H = h.shape
    D = H // num_heads

    def split(x):                                                        # (B, T, H) -> (B, N, T, D)
        return x.reshape(B, T, num_heads, D).transpose(0, 2, 1, 3)

    q = split(dense(params, cache, pre + "attention.self.query", h))     # (B, N, T, D)
    k = split(dense(params, cache, pre + "attention.self.key", h))
    v = split(dense(params, cache, pre + "attention.self.value", h))
    context, cache[pre + "attention"] = attention_forward(q, k, v, mask)  # (B, N, T, D)
    context = context.transpose(0, 2, 1, 3).reshape(B, T, H)             # (B, T, H)
    a = dense(params, cache, pre + "attention.output.dense", context) + h
    a = norm(params, cache, pre + "attention.output.LayerNorm", a, eps)
    i = dense(params, cache, pre + "intermediate.dense", a)              # (B, T, I)
    i, cache[pre + "gelu"] = gelu_forward(i)
    out = dense(params, cache, pre + "output.dense", i) + a              # (B, T, H)
    return norm(params, cache, pre + "output.LayerNorm", out, eps)


def layer_backward(grads, cache, pre, dout, num_heads):
    B, T, H = dout.shape
    D = H // num_heads

    def split(x):                                                        # (B, T, H) -> (B, N, T, D)
        return x.reshape(B, T, num_heads, D).transpose(0, 2, 1, 3)

    def merge(x):                                                        # (B, N, T, D) -> (B, T, H)
        return x.transpose(0, 2, 1, 3).reshape(B, T, H)

    dsum = norm_backward(grads, cache, pre + "output.LayerNorm", dout)   # d(dense out + a)
    di = dense_backward(grads, cache, pre + "output.dense", dsum)        # (B, T, I)
    di = gelu_backward(di, cache[pre + "gelu"])
    da = dsum + dense_backward(grads, cache, pre + "intermediate.dense", di)   # (B, T, H)
    dsum = norm_backward(grads, cache, pre + "attention.output.LayerNorm", da)  # d(dense out + h)
    dcontext = split(dense_backward(grads, cache, pre + "attention.output.dense", dsum))  # (B, N, T, D)
    dq, dk, dv = attention_backward(dcontext, cache[pre + "attention"])
    dh = dsum                                                            # the residual's share
    dh = dh + dense_backward(grads, cache, pre + "attention.self.query", merge(dq))
    dh = dh + dense_backward(grads, cache, pre + "attention.self.key", merge(dk))
    dh = dh + dense_backward(grads, cache, pre + "attention.self.value", merge(dv))
    return dh                                                            # (B, T, H)


# ================================================================ BertForPreTraining

WORD = "bert.embeddings.word_embeddings.weight"   # also the MLM decoder's weight (tied)


def forward(params, config, input_ids, token_type_ids, attention_mask, mlm_labels, nsp_labels):
    """The pretraining loss, and the cache that `backward` needs.

    input_ids, token_type_ids, attention_mask (1 = token, 0 = padding), mlm_labels: (B, T)
    integers, mlm_labels -100 where nothing is predicted; nsp_labels (B,): 0 = B follows A.
    """
    assert config.get("hidden_act", "gelu") == "gelu", "this page has the exact GELU only"
    eps = config.get("layer_norm_eps", 1e-12)
    num_heads = config["num_attention_heads"]
    B, T = input_ids.shape
    cache = {"shape": (B, T), "pad_id": config.get("pad_token_id", 0)}

    # embeddings: word + position + token type -> LayerNorm
    positions = np.broadcast_to(np.arange(T), (B, T))
    x, cache["word"] = embedding_forward(input_ids, params[WORD])        # (B, T, H)
    p, cache["position"] = embedding_forward(positions, params["bert.embeddings.position_embeddings.weight"])
    t, cache["token_type"] = embedding_forward(token_type_ids, params["bert.embeddings.token_type_embeddings.weight"])
    h = norm(params, cache, "bert.embeddings.LayerNorm", x + p + t, eps)

    # encoder: padding keys get MASK_VALUE added to their scores, so no query attends to them
    mask = (1.0 - attention_mask[:, None, None, :]) * MASK_VALUE          # (B, 1, 1, T)
    for n in range(config["num_hidden_layers"]):
        h = layer_forward(params, cache, f"bert.encoder.layer.{n}.", h, mask, num_heads, eps)

    # pooler: the [CLS] position, through dense and tanh
    pooled = dense(params, cache, "bert.pooler.dense", h[:, 0])          # (B, H)
    pooled, cache["pooler.tanh"] = tanh_forward(pooled)

    # MLM head, on the labelled positions only: dense -> gelu -> LayerNorm -> tied decoder + bias
    flat_labels = mlm_labels.reshape(-1)
    masked = np.flatnonzero(flat_labels != IGNORE)                       # (M,) flat indices
    cache["masked"] = masked
    hm = h.reshape(B * T, -1)[masked]                                    # (M, H)
    hm = dense(params, cache, "cls.predictions.transform.dense", hm)
    hm, cache["mlm.gelu"] = gelu_forward(hm)
    hm = norm(params, cache, "cls.predictions.transform.LayerNorm", hm, eps)
    logits, cache["decoder"] = linear_forward(hm, params[WORD], params["cls.predictions.bias"])  # (M, V)
    mlm_loss, cache["mlm.loss"] = cross_entropy_forward(logits, flat_labels[masked])

    # NSP head: a linear layer on the pooled output
    nsp_logits = dense(params, cache, "cls.seq_relationship", pooled)    # (B, 2)
    nsp_loss, cache["nsp.loss"] = cross_entropy_forward(nsp_logits, nsp_labels)
    return mlm_loss + nsp_loss, cache


def backward(params, config, cache):
    """d(loss)/d(every weight), a dict with the keys of `params`."""
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    num_heads = config["num_attention_heads"]
    B, T = cache["shape"]

    # NSP head and pooler
    dnsp = cross_entropy_backward(cache["nsp.loss"])                     # (B, 2)
    dpooled = dense_backward(grads, cache, "cls.seq_relationship", dnsp)  # (B, H)
    dpooled = tanh_backward(dpooled, cache["pooler.tanh"])
    dcls = dense_backward(grads, cache, "bert.pooler.dense", dpooled)    # (B, H)

    # MLM head; the decoder's weight gradient joins the word embeddings' (tied)
    dlogits = cross_entropy_backward(cache["mlm.loss"])                  # (M, V)
    dhm, dword, grads["cls.predictions.bias"] = linear_backward(dlogits, cache["decoder"])  # (M, H)
    grads[WORD] += dword
    dhm = norm_backward(grads, cache, "cls.predictions.transform.LayerNorm", dhm)
    dhm = gelu_backward(dhm, cache["mlm.gelu"])
    dhm = dense_backward(grads, cache, "cls.predictions.transform.dense", dhm)

    # back to the encoder output: the masked rows and the [CLS] rows get gradient
    dh = np.zeros((B * T, dhm.shape[-1]), dtype=dhm.dtype)               # (B*T, H)
    dh[cache["masked"]] = dhm                                            # positions are distinct
    dh = dh.reshape(B, T, -1)                                            # (B, T, H)
    dh[:, 0] += dcls

    for n in reversed(range(config["num_hidden_layers"])):
        dh = layer_backward(grads, cache, f"bert.encoder.layer.{n}.", dh, num_heads)

    # embeddings; the [PAD] row gets no gradient from the lookup (PyTorch's padding_idx)
    dx = norm_backward(grads, cache, "bert.embeddings.LayerNorm", dh)     # (B, T, H)
    dword = embedding_backward(dx, cache["word"])                         # (V, H)
    dword[cache["pad_id"]] = 0.0
    grads[WORD] += dword
    grads["bert.embeddings.position_embeddings.weight"] += embedding_backward(dx, cache["position"])
    grads["bert.embeddings.token_type_embeddings.weight"] += embedding_backward(dx, cache["token_type"])
    return grads


# ================================================================ AdamW

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")   # name patterns left without decay


def adamw_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, step=1):
    """One AdamW update of every weight, in place (`params` and `state` are changed).

    step t counts from 1; `state` starts as {} and keeps m and v per weight:
        p = p * (1 - lr * wd)                       decoupled decay (wd = 0 for NO_DECAY names)
        m = b1 * m + (1 - b1) * g                   running mean of gradients
        v = b2 * v + (1 - b2) * g^2                 running mean of squared gradients
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)    bias-corrected
    """
    b1, b2 = betas
    for name, g in grads.items():
        m, v = state.get(name, (np.zeros_like(g), np.zeros_like(g)))
        p = params[name]
        if not any(pattern in name for pattern in NO_DECAY):
            p = p * (1.0 - lr * weight_decay)
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * (g * g)
        denominator = np.sqrt(v) / math.sqrt(1.0 - b2 ** step) + eps
        params[name] = p - lr / (1.0 - b1 ** step) * (m / denominator)
        state[name] = (m, v)


# ================================================================ a tiny run

def init_params(config, seed=0):
    """Random weights as BERT starts: normal(0, 0.02) matrices, zero biases, LayerNorm 1 and 0."""
    rng = np.random.default_rng(seed)
    H, I, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {WORD: (V, H), "bert.embeddings.position_embeddings.weight": (config["max_position_embeddings"], H),
              "bert.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], H)}
    dense_layers = {"bert.pooler.dense": (H, H), "cls.predictions.transform.dense": (H, H),
                    "cls.seq_relationship": (2, H)}
    norms = ["bert.embeddings.LayerNorm", "cls.predictions.transform.LayerNorm"]
    for n in range(config["num_hidden_layers"]):
        pre = f"bert.encoder.layer.{n}."
        for name in ("query", "key", "value"):
            dense_layers[pre + "attention.self." + name] = (H, H)
        dense_layers[pre + "attention.output.dense"] = (H, H)
        dense_layers[pre + "intermediate.dense"] = (I, H)
        dense_layers[pre + "output.dense"] = (H, I)
        norms += [pre + "attention.output.LayerNorm", pre + "output.LayerNorm"]
    params = {name: rng.normal(0.0, 0.02, shape) for name, shape in shapes.items()}
    params[WORD][config.get("pad_token_id", 0)] = 0.0
    for name, (out_size, in_size) in dense_layers.items():
        params[name + ".weight"] = rng.normal(0.0, 0.02, (out_size, in_size))
        params[name + ".bias"] = np.zeros(out_size)
    for name in norms:
        params[name + ".weight"], params[name + ".bias"] = np.ones(H), np.zeros(H)
    params["cls.predictions.bias"] = np.zeros(V)
    return params


def main(steps=30):
    """Learn one fixed tiny batch; the loss printed every 5 steps falls."""
    config = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 16, "type_vocab_size": 2,
              "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
    params = init_params(config)
    rng = np.random.default_rng(1)
    B, T = 4, 12
    ids = rng.integers(5, 50, (B, T))                                    # one fixed batch to learn
    token_types = (np.arange(T) >= T // 2).astype(int)[None].repeat(B, axis=0)   # A then B
    attention_mask = np.ones((B, T))
    attention_mask[1, -3:] = 0                                           # some padding
    ids[1, -3:] = 0
    labels = np.full((B, T), IGNORE)
    labels[:, [2, 7]] = ids[:, [2, 7]]                                   # predict two tokens each
    ids[:, [2, 7]] = 4                                                   # shown as [MASK] (id 4)
    nsp = np.array([0, 1, 0, 1])
    state, losses = {}, []
    for step in range(1, steps + 1):
        loss, cache = forward(params, config, ids, token_types, attention_mask, labels, nsp)
        grads = backward(params, config, cache)
        adamw_step(params, grads, state, lr=1e-3, step=step)
        losses.append(loss)
        if step == 1 or step % 5 == 0:
            print(f"step {step:2d}  loss {loss:.4f}")
    return losses


if __name__ == "__main__":
    main()
