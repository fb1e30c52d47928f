"""Mutation audit: small deliberate bugs that the tests must catch.

A test that cannot fail proves nothing. Each entry below plants one plausible bug (a sign,
a dropped term, a wrong axis, ``=`` for ``+=``, an off-by-one) in one file of the library
and names the tests that should notice. The audit runs each one and reports which tests
caught it::

    python tests/mutants.py              # all of them, ~35 minutes on 2 cores
    python tests/mutants.py T1 F7 O15    # a few, by id
    python tests/mutants.py --list

It works on a copy of the tracked files in a temporary folder, never on your checkout. A
mutant the named tests miss is tried against the whole suite before it counts as a
survivor; the exit status is 1 if any mutant not marked ``equivalent`` survives.
``tests/test_mutants.py`` checks, in the default test run, that every mutation still
applies to the current source (exactly one match), so the list cannot rot unnoticed.

When you fix a bug or add a feature, add the mutant that would have slipped through.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutant(NamedTuple):
    id: str
    file: str               # path from the repository root
    old: str                # text that must occur exactly once in ``file``
    new: str                # what it becomes
    tests: list             # test files (or node ids) that should catch it
    what: str               # the bug, in words
    also: tuple = ()        # further (old, new) replacements in the same file
    equivalent: str = ""    # why no test can catch it, for a mutant that changes nothing observable


OPS = ["tests/test_ops.py"]
MODULES = ["tests/test_modules.py", "tests/test_heads.py", "tests/test_reference.py"]
FLASH = ["tests/test_flash_attention.py"]
OPTIM = ["tests/test_optim.py", "tests/test_training.py"]
TOKENIZER = ["tests/test_tokenization.py"]
TOKENIZER_CALL = ["tests/test_tokenizer_call.py"]
CHECKPOINT = ["tests/test_safetensors.py", "tests/test_checkpoint.py"]
EMBED = ["tests/test_minilm.py"]
FAST = ["tests/test_fast.py"]              # the speed wing, the registry, the model in inference mode
PRETRAIN_DATA = ["tests/test_pretraining_data.py"]
GRADCHECK = ["tests/test_gradcheck.py", "tests/test_ops.py"]
TRAINING = ["tests/test_training.py", "tests/test_pretrain_command.py"]
FINETUNE = ["tests/test_finetune.py"]
PRUNE = ["tests/test_prune.py"]
VOCAB = ["tests/test_vocab_trainer.py"]
CORPUS = ["tests/test_corpus.py"]
DISTRIBUTED = ["tests/test_distributed.py"]
FINETUNE_DATA = ["tests/test_finetuning_data.py"]          # also the SQuAD metric's tests

A, L, E = "minibert/ops/activations.py", "minibert/ops/linear.py", "minibert/ops/embedding.py"
N, S, D = "minibert/ops/layer_norm.py", "minibert/ops/softmax.py", "minibert/ops/dropout.py"
T, F, C = "minibert/ops/attention.py", "minibert/ops/flash_attention.py", "minibert/ops/cross_entropy.py"
DI, MS = "minibert/ops/distillation.py", "minibert/ops/mse.py"
M, LY, H, NN = "minibert/modeling.py", "minibert/layers.py", "minibert/heads.py", "minibert/nn.py"
O, P, K = "minibert/optim.py", "minibert/data/pretraining.py", "minibert/tokenization.py"
X, CK, Y, G = "minibert/safetensors.py", "minibert/checkpoint.py", "minibert/sentence_embeddings.py", "minibert/gradcheck.py"
TR, FT, PR, V = "minibert/training.py", "minibert/finetune.py", "minibert/prune.py", "minibert/vocab_trainer.py"
CO, FD, SQ = "minibert/data/corpus.py", "minibert/data/finetuning.py", "minibert/data/squad_metric.py"
BK = "minibert/backend.py"
FC = "minibert/fast/cpu.py"
PJ, CP = "minibert/pretrain.py", "minibert/cli_pretrain.py"
DP = "minibert/distributed.py"
OA, VA = "minibert/ops/adamw.py", "minibert/validation.py"
RG, CF = "minibert/registry.py", "minibert/config.py"
SW, NS, CW = "minibert/sweep.py", "minibert/noise_scale.py", "minibert/cli_sweep.py"
SWEEP = ["tests/test_sweep.py"]
BP = "minibert/bpe.py"

MUTANTS = [
    Mutant('A1', A, '    pdf *= -0.5\n', '    pdf *= 0.5\n', OPS, 'gelu_backward: pdf exponent sign flipped exp(+x^2/2)'),
    Mutant('A2', A, '    pdf += cdf ', '    pass ', OPS, 'gelu_backward: drop Phi(x) term (only x*phi(x))'),
    Mutant('A3', A, '    pdf *= INV_SQRT_2PI\n', '', OPS, 'gelu_backward: drop 1/sqrt(2pi) constant'),
    Mutant('A4', A, '(1.0 + 3.0 * GELU_TANH_COEF * x * x)', '(1.0 + GELU_TANH_COEF * x * x)', OPS, 'gelu_tanh_backward: du/dx missing factor 3'),
    Mutant('A5', A, '0.5 * x * (1.0 - t * t) * du_dx', '0.5 * x * (1.0 + t * t) * du_dx', OPS, 'gelu_tanh_backward: 1-t^2 -> 1+t^2'),
    Mutant('A6', A, 'return dy * (1.0 - y * y)', 'return dy * (1.0 - y)', OPS, 'tanh_backward: 1-y^2 -> 1-y'),
    Mutant('A7', A, '"gelu_new": (gelu_tanh_forward, gelu_tanh_backward)', '"gelu_new": (gelu_forward, gelu_backward)', OPS + ['tests/test_modules.py', 'tests/test_heads.py', 'tests/test_reference.py'], 'ACTIVATIONS: gelu_new mapped to exact erf GELU'),
    Mutant('L1', L, 'dbias = dy2.sum(axis=0) if has_bias', 'dbias = dy2.mean(axis=0) if has_bias', OPS, 'linear_backward: db = mean instead of sum over positions'),
    Mutant('L2', L, '    dy2 = dy2.astype(weight.dtype, copy=False)         # float16 under mixed precision\n', '', OPS, 'linear_backward: mixed precision, no cast of dy to float16 before the products'),
    Mutant('L3', L, '    if weight.dtype != dtype:\n        dx, dweight', '    if weight.dtype == dtype:\n        dx, dweight', OPS, 'linear_backward: cast of dx/dW back to master dtype inverted'),
    Mutant('L4', LY, '        self.weight.grad += dweight\n', '        self.weight.grad[...] = dweight\n', MODULES + ['tests/test_training.py'], 'Linear.backward: weight.grad = instead of += (tied decoder / accumulation)'),
    Mutant('L5', LY, '            self.bias.grad += dbias\n', '            self.bias.grad[...] = dbias\n', MODULES + ['tests/test_training.py'], 'Linear.backward: bias.grad = instead of +='),
    Mutant('E1', E, '    xp.add.at(drows, which_row.reshape(-1), dy.reshape(-1, hidden))', '    drows[which_row.reshape(-1)] = dy.reshape(-1, hidden)', OPS, 'embedding_backward: repeated ids assigned, not summed'),
    Mutant('E2', LY, '        self.weight.grad[rows] += drows ', '        self.weight.grad[rows] = drows ', MODULES, 'Embedding.backward: grad[rows] = instead of += (overwrites tied decoder grad)'),
    Mutant('E3', LY, '            keep = rows != self.padding_idx\n', '            keep = rows == rows\n', MODULES, 'Embedding.backward: padding_idx row gets gradient'),
    Mutant('E4', M, 'self.position_embeddings.backward(dx.sum(axis=0, keepdims=True))', 'self.position_embeddings.backward(dx[:1])', MODULES, 'BertEmbeddings.backward: position grad from first sequence only'),
    Mutant('E5', M, '        dx = self.LayerNorm.backward(self.dropout.backward(dy))', '        dx = self.LayerNorm.backward(dy)', MODULES, 'BertEmbeddings.backward: dropout backward skipped'),
    Mutant('N1', N, '    dx -= mean_gx\n', '', OPS, 'layer_norm_backward: drop -mean(gx) term'),
    Mutant('N2', N, '(gx * xhat).sum(axis=-1, keepdims=True) / hidden', '(gx * xhat).sum(axis=-1, keepdims=True)', OPS, 'layer_norm_backward: sum instead of mean for gx*xhat'),
    Mutant('N3', N, 'dgamma = (dy * xhat).sum(axis=lead)', 'dgamma = dy.sum(axis=lead)', OPS, 'layer_norm_backward: dgamma without xhat'),
    Mutant('N4', N, '    dx *= rstd\n', '', OPS, 'layer_norm_backward: forget *rstd'),
    Mutant('N5', N, 'rstd = 1.0 / (var + eps) ** 0.5', 'rstd = 1.0 / (var ** 0.5 + eps)', OPS + ['tests/test_modules.py', 'tests/test_heads.py', 'tests/test_reference.py'], 'layer_norm_forward: eps outside sqrt'),
    Mutant('N6', N, '    dbeta = dy.sum(axis=lead)  ', '    dbeta = dy.sum(axis=0)  ', OPS + ['tests/test_modules.py', 'tests/test_heads.py', 'tests/test_reference.py'], 'layer_norm_backward: dbeta summed over axis 0 only'),
    Mutant('S1', S, 'ds = dp - (dp * p).sum(axis=-1, keepdims=True)', 'ds = dp - dp.sum(axis=-1, keepdims=True)', OPS, 'softmax_backward: sum(g) instead of sum(g*p)'),
    Mutant('S2', S, '    ds *= p\n', '', OPS, 'softmax_backward: forget *p'),
    Mutant('S3', S, 'ds = dp - (dp * p).sum(axis=-1, keepdims=True)', 'ds = dp - (dp * p).sum(axis=-2, keepdims=True)', OPS, 'softmax_backward: row sum over wrong axis (-2)'),
    Mutant('S4', S, '    p = s - s.max(axis=-1, keepdims=True)\n', '    p = s.copy()\n', OPS + ['tests/test_modules.py', 'tests/test_heads.py', 'tests/test_reference.py'], 'softmax_forward: max not subtracted (overflow)'),
    Mutant('D1', D, '    dx = dy * keep\n    dx *= scale\n', '    dx = dy * keep\n', OPS, 'dropout_backward: forget 1/(1-p) scale'),
    Mutant('D2', D, '    scale = 1.0 / (1.0 - p)\n', '    scale = 1.0\n', OPS, 'dropout_forward: no inverted scaling'),
    Mutant('D3', D, 'keep = rng.random(x.shape, dtype=x.dtype) >= p', 'keep = rng.random(x.shape, dtype=x.dtype) < p', OPS, 'dropout_forward: keeps with probability p'),
    Mutant('D4', D, 'keep = rng.random(x.shape, dtype=x.dtype) >= p', 'keep = rng.random(x.shape, dtype=x.dtype) > p', OPS, 'dropout_forward: >= p -> > p', equivalent="a float32 draw equals p exactly with probability ~2**-24"),
    Mutant('T1', T, '    dq *= scale\n', '', OPS, 'attention_backward: dq missing 1/sqrt(D)'),
    Mutant('T2', T, 'dk = ds.swapaxes(-1, -2) @ q_scaled ', 'dk = ds.swapaxes(-1, -2) @ q_scaled * scale ', OPS, 'attention_backward: dk scaled twice'),
    Mutant('T3', T, 'dv = p_dropped.swapaxes(-1, -2) @ do ', 'dv = p.swapaxes(-1, -2) @ do ', OPS, 'attention_backward: dv uses p not dropped p'),
    Mutant('T4', T, '    dp = dropout_backward(dp, dropout_cache)\n', '', OPS, 'attention_backward: no dropout backward on dp'),
    Mutant('T5', T, 'dv = p_dropped.swapaxes(-1, -2) @ do ', 'dv = p_dropped @ do ', OPS, 'attention_backward: dv missing transpose'),
    Mutant('T6', T, 'scale = 1.0 / math.sqrt(q.shape[-1])', 'scale = 1.0 / q.shape[-1]', OPS + ['tests/test_modules.py', 'tests/test_heads.py', 'tests/test_reference.py'], 'attention_forward: scale 1/D instead of 1/sqrt(D)'),
    Mutant('T7', T, '    if mask is not None:\n        s += mask\n', '', OPS + ['tests/test_modules.py', 'tests/test_heads.py', 'tests/test_reference.py'], 'attention_forward: mask ignored'),
    Mutant('F1', F, '            l_i *= alpha\n', '', FLASH, 'flash fwd: running sum not rescaled'),
    Mutant('F2', F, '            acc *= alpha[..., None]\n', '', FLASH, 'flash fwd: accumulator not rescaled'),
    Mutant('F3', F, 'm_new = xp.maximum(m_i, s.max(axis=-1))', 'm_new = s.max(axis=-1)', FLASH, 'flash fwd: running max forgets previous tiles'),
    Mutant('F4', F, "            l_i += p.sum(axis=-1)                    # l' = alpha l + sum_J exp(s - m')\n            if dropout is not None:                  # dropout acts after the sum: l counts every key\n                p *= _dropout_keep_tile(row_keys[:, :, i0:i1], j0, j1, threshold, xp)\n", '            if dropout is not None:\n                p *= _dropout_keep_tile(row_keys[:, :, i0:i1], j0, j1, threshold, xp)\n            l_i += p.sum(axis=-1)\n', FLASH, 'flash fwd: l summed after dropout (counts kept keys only)'),
    Mutant('F5', F, "            acc *= 1.0 / (1.0 - dropout_p)           # inverted dropout's scale, once per output\n", '            pass\n', FLASH, 'flash fwd: missing 1/(1-p) dropout scale'),
    Mutant('F6', F, '        l_i = xp.where(l_i == 0, 1, l_i)\n', '', FLASH, 'flash fwd: fully masked row 0/0'),
    Mutant('F7', F, '            dk[:, :, j0:j1] += ds.swapaxes', '            dk[:, :, j0:j1] = ds.swapaxes', FLASH, 'flash bwd: dk assigned not accumulated over query tiles'),
    Mutant('F8', F, '        dq_i *= scale\n', '', FLASH, 'flash bwd: dq missing scale'),
    Mutant('F9', F, '            ds -= d_i\n', '', FLASH, 'flash bwd: ds missing -D term'),
    Mutant('F10', F, 'd_i = (do_i * o[:, :, i0:i1]).sum(axis=-1)', 'd_i = (do[:, :, i0:i1] * o[:, :, i0:i1]).sum(axis=-1)', FLASH, 'flash bwd: D not divided by l'),
    Mutant('F11', F, '                dp *= z                              # gradient through the dropout\n', '', FLASH, 'flash bwd: dp not through dropout'),
    Mutant('F12', F, 'dv[:, :, j0:j1] += (e * z).swapaxes(-1, -2) @ do_i', 'dv[:, :, j0:j1] += e.swapaxes(-1, -2) @ do_i', FLASH, 'flash bwd: dv ignores dropout mask'),
    Mutant('F13', F, '                z *= keep_scale                      # z = keep / (1 - p_drop): dropped p = p z\n', '', FLASH, 'flash bwd: dropout keep scale missing'),
    Mutant('F14', F, '    rows = slice(i0, i1) if mask.shape[2] > 1 else slice(None)', '    rows = slice(j0, j1) if mask.shape[2] > 1 else slice(None)', FLASH, 'flash _mask_tile: query rows cut with key indices'),
    Mutant('F15', F, 'm_i = xp.full((batch, heads, i1 - i0), np.finfo(dtype).min, dtype=dtype)', 'm_i = xp.full((batch, heads, i1 - i0), -np.inf, dtype=dtype)', FLASH, 'flash fwd: running max starts at -inf'),
    Mutant('F16', F, '        dq[:, :, i0:i1] = dq_i\n', '        dq[:, :, i0:i1] += dq_i\n', FLASH, 'flash bwd: dq += into xp.empty (uninitialised)'),
    Mutant('C1', C, 'dlogits *= (counted * (dloss / max(count, 1)))', 'dlogits *= (counted * (dloss / probs.shape[0]))', OPS, 'ce_backward: divide by all rows incl. ignored'),
    Mutant('C2', C, 'loss = -float((logp_label * counted).sum()) / max(count, 1)', 'loss = -float((logp_label * counted).sum()) / logits.shape[0]', OPS, 'ce_forward: mean over all rows incl. ignored'),
    Mutant('C3', C, 'dlogits *= (counted * (dloss / max(count, 1)))', 'dlogits *= ((dloss / max(count, 1)) + 0 * counted)', OPS, 'ce_backward: ignored rows get gradient'),
    Mutant('C4', DI, 'return (q - p) * (dloss * temperature / max(rows, 1))', 'return (q - p) * (dloss * temperature ** 2 / max(rows, 1))', OPS, 'distillation_backward: T^2 instead of T'),
    Mutant('C5', MS, 'return diff * (2.0 * dloss / max(count, 1))', 'return diff * (dloss / max(count, 1))', ['tests/test_heads.py'], 'mse_backward: missing factor 2'),
    Mutant('M1', M, '        dh += self.key.backward(self._merge_heads(dk))\n', '        self.key.backward(self._merge_heads(dk))\n', MODULES, 'BertSelfAttention.backward: key path gradient not added to dh'),
    Mutant('M2', M, '        dh = self.self.backward(dcontext)\n        dh += dresidual\n', '        dh = self.self.backward(dcontext)\n', MODULES, 'BertAttention.backward: residual gradient dropped'),
    Mutant('M3', M, '        da += self.intermediate.backward(dintermediate)', '        da = self.intermediate.backward(dintermediate)', MODULES, 'BertLayer.backward: FFN residual gradient dropped'),
    Mutant('M4', M, 'dh[:, 0] = self.dense.backward(self.activation.backward(dpooled))', 'dh[:, 0] = self.dense.backward(dpooled)', MODULES, 'BertPooler.backward: tanh derivative skipped'),
    Mutant('M5', M, '                dh[where_first] += self.pooler.backward(dpooled)[:, 0]', '                dh[where_first] = self.pooler.backward(dpooled)[:, 0]', MODULES, 'BertModel.backward (output_positions): pooler grad overwrites sequence grad at [CLS]'),
    Mutant('M6', M, '                dh = dh + self.pooler.backward(dpooled)', '                dh = self.pooler.backward(dpooled)', MODULES, 'BertModel.backward (full): dsequence dropped when dpooled given'),
    Mutant('M7', M, 'first_tokens = xp.arange(batch) * length ', 'first_tokens = xp.arange(batch) ', MODULES, 'BertModel.forward: [CLS] rows = arange(B) not arange(B)*T'),
    Mutant('M8', VA, 'additive_mask = (1.0 - attention_mask.astype(dtype)) * np.finfo(dtype).min', 'additive_mask = attention_mask.astype(dtype) * np.finfo(dtype).min', MODULES, 'check_inputs: attention mask inverted'),
    Mutant('M9', M, '                dprediction_logits = ce_backward(mlm_weight, cache)', '                dprediction_logits = ce_backward(nsp_weight, cache)', MODULES + ['tests/test_training.py'], 'BertForPreTraining.backward: MLM uses nsp_weight'),
    Mutant('M10', M, '            dresidual = scatter_rows(dresidual, rows, h_shape)\n', '            dresidual = scatter_rows(dresidual, rows[::-1].copy(), h_shape)\n', MODULES, 'BertAttention.backward: residual rows scattered in wrong order'),
    Mutant('M11', M, '        dx = self.dense.backward(self.dropout.backward(dsum))', '        dx = self.dense.backward(dsum)', MODULES, 'BertAddNorm.backward: dropout backward skipped'),
    Mutant('H1', H, 'dpooled = self.dropout.backward(self.classifier.backward(dlogits))', 'dpooled = self.classifier.backward(dlogits)', ['tests/test_heads.py'], 'SeqCls.backward: classifier dropout backward skipped'),
    Mutant('H2', H, '            dstart = ops.cross_entropy_backward(weight / 2, start_cache) ', '            dstart = ops.cross_entropy_backward(weight, start_cache) ', ['tests/test_heads.py'], 'QA.backward: start gradient not halved'),
    Mutant('H3', H, '            out.loss = (losses[0] + losses[1]) / 2', '            out.loss = losses[0] + losses[1]', ['tests/test_heads.py'], 'QA.forward: loss sum not mean'),
    Mutant('H4', H, '        return dlogits * loss_weight if loss_weight != 1.0 else dlogits', '        return dlogits', ['tests/test_heads.py'], '_output_gradient: loss_weight ignored for given dlogits'),
    Mutant('H5', H, '            (lambda w: ops.cross_entropy_backward(w, loss_cache).reshape(shape))', '            (lambda w: ops.cross_entropy_backward(1.0, loss_cache).reshape(shape))', ['tests/test_heads.py'], 'TokenCls.backward: loss_weight ignored'),
    Mutant('H6', M, '    positions = xp.flatnonzero(flat != ops.IGNORE_INDEX)                 # (M,)', '    positions = xp.flatnonzero(flat > 0)', ['tests/test_heads.py', 'tests/test_modules.py'], 'MaskedLM.forward: label id 0 treated as ignored'),
    Mutant('O1', O, 'step=self.step_count,', 'step=self.step_count + 1,', OPTIM, 'AdamW: bias-correction step off by one'),
    Mutant('O2', OA, '        tmp /= math.sqrt(c2)\n', '        tmp /= c2\n', OPTIM, 'AdamW: v_hat correction without sqrt'),
    Mutant('O3', OA, '    tmp += eps                                          # tmp = denominator\n', '    xp.sqrt(tmp * tmp + eps, out=tmp)\n', OPTIM, 'AdamW: eps inside sqrt (sqrt(v_hat+eps))'),
    Mutant('O4', O, 'self._update(name, p, buffers, self.weight_decay if self.decays[name] else 0.0)', 'self._update(name, p, buffers, self.weight_decay)', OPTIM, 'Optimizer.step: weight decay applied to no_decay params'),
    Mutant('O5', O, 'DEFAULT_NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")', 'DEFAULT_NO_DECAY = ("bias", "LayerNorm.bias")', OPTIM, 'DEFAULT_NO_DECAY: LayerNorm.weight decayed'),
    Mutant('O6', OA, '        p *= 1.0 - lr * weight_decay\n', '        p *= 1.0 - weight_decay\n', OPTIM, 'AdamW: decay not multiplied by lr'),
    Mutant('O7', OA, '    if weight_decay:\n        p *= 1.0 - lr * weight_decay\n\n    # m = beta1', '    # m = beta1', OPTIM, 'AdamW: weight decay dropped entirely'),
    Mutant('O7b', OA, '    if weight_decay:\n        p *= 1.0 - lr * weight_decay\n\n    # m = beta1', '    # m = beta1', OPTIM, 'AdamW: decoupled decay moved after the Adam step (p_new*(1-lr*wd))', also=[('    tmp *= step_size\n    p -= tmp\n', '    tmp *= step_size\n    p -= tmp\n    if weight_decay:\n        p *= 1.0 - lr * weight_decay\n')]),
    Mutant('O8', OA, '    m *= beta1\n', '    m *= beta2\n', OPTIM, 'AdamW: first moment decays with beta2'),
    Mutant('O9', O, '    if step < warmup_steps:\n        return base_lr * step / warmup_steps\n    return base_lr * max(0.0,', '    if step < warmup_steps:\n        return base_lr * (step + 1) / warmup_steps\n    return base_lr * max(0.0,', OPTIM, 'linear schedule: warmup off by one (step+1)'),
    Mutant('O10', O, '(total_steps - step) / max(1, total_steps - warmup_steps)', '(total_steps - step) / max(1, total_steps)', OPTIM, 'linear schedule: decay denominator ignores warmup'),
    Mutant('O11', O, '    if step < warmup_steps:\n        return base_lr * step / warmup_steps\n    return base_lr * max(0.0,', '    if step <= warmup_steps:\n        return base_lr * step / warmup_steps\n    return base_lr * max(0.0,', OPTIM, 'linear schedule: warmup test <= (0/0 when warmup=0)'),
    Mutant('O12', O, '    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))', '    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)', OPTIM, 'cosine schedule: progress not capped at 1'),
    Mutant('O13', O, '    total_norm = float(xp.sqrt(squares.sum()))', '    total_norm = float(squares.sum())', OPTIM, 'clip_grad_norm: squared norm (no sqrt)'),
    Mutant('O14', O, '        xp.multiply(buf, self.lr, out=tmp)\n', '        xp.multiply(g, self.lr, out=tmp)\n', OPTIM, 'SGD: update uses g, ignores momentum buffer'),
    Mutant('O15', O, '            self.scale = max(self.scale * self.backoff_factor, self.min_scale)\n            self.good_steps = 0\n', '            self.scale = max(self.scale * self.backoff_factor, self.min_scale)\n', OPTIM, 'DynamicLossScaler: good_steps not reset on overflow'),
    Mutant('O16', OA, '    xp.multiply(g, 1.0 - beta1, out=tmp)\n', '    xp.multiply(g, 1.0 - beta2, out=tmp)\n', OPTIM, 'AdamW: m uses (1-beta2)'),
    Mutant('P1', P, 'MASK_TOKEN_PROB = 0.8\n', 'MASK_TOKEN_PROB = 0.9\n', PRETRAIN_DATA, '80/10/10 -> 90/10/0'),
    Mutant('P2', P, 'to_random = chosen & (u >= MASK_TOKEN_PROB) & (u < MASK_TOKEN_PROB + RANDOM_TOKEN_PROB)', 'to_random = chosen & (u >= MASK_TOKEN_PROB)', PRETRAIN_DATA, 'masking: 80/20/0 (never keep)'),
    Mutant('P3', P, 'MASKED_LM_PROB = 0.15\n', 'MASKED_LM_PROB = 0.2\n', PRETRAIN_DATA, 'masked_lm_prob 0.15 -> 0.2'),
    Mutant('P4', P, 'num_tokens = np.count_nonzero(ids != self.vocab.pad_id, axis=1)', 'num_tokens = np.full(batch, length)', PRETRAIN_DATA, 'k counts padding positions'),
    Mutant('P5', P, 'candidate = ~np.isin(ids, self.vocab.never_selected)', 'candidate = ids != self.vocab.pad_id', PRETRAIN_DATA, 'special tokens ([CLS]/[SEP]/[MASK]) may be chosen'),
    Mutant('P6', P, 'never_selected=np.array(sorted(set(ids.values())), dtype=ID_DTYPE)', "never_selected=np.array(sorted({ids['pad_id'], ids['cls_id'], ids['sep_id']}), dtype=ID_DTYPE)", PRETRAIN_DATA, 'never_selected lacks [MASK]'),
    Mutant('P7', P, '"next_sentence_label": np.array(int(pair.is_random_next), dtype=ID_DTYPE)', '"next_sentence_label": np.array(int(not pair.is_random_next), dtype=ID_DTYPE)', PRETRAIN_DATA, 'NSP label inverted'),
    Mutant('P8', P, 'starts = candidate & (~self.vocab.is_continuation[ids] | ~previous_is_candidate)', 'starts = candidate', PRETRAIN_DATA, 'whole-word masking: every token its own word'),
    Mutant('P9', P, 'fits = (r < num_words) & (count + n <= k)', 'fits = (r < num_words) & (count < k)', PRETRAIN_DATA, 'whole-word masking: may exceed k'),
    Mutant('P10', P, 'token_type_ids[len(pair.tokens_a) + 2: n] = 1', 'token_type_ids[len(pair.tokens_a) + 1: n] = 1', PRETRAIN_DATA, "segment B starts at A's [SEP]"),
    Mutant('P11', P, 'masked[to_random] = rng.choice(self.vocab.replacement_ids, size=int(to_random.sum()))', 'masked[to_random] = rng.integers(0, self.vocab.vocab_size, size=int(to_random.sum()))', PRETRAIN_DATA, 'random replacement may be a special/[unused] token'),
    Mutant('P12', P, '        if len_a > len_b:\n', '        if len_a >= len_b:\n', PRETRAIN_DATA, 'truncate_pair: A shortened on a tie'),
    Mutant('P13', P, '    j += j >= exclude ', '    j += 0 ', PRETRAIN_DATA, '_random_segment: may pick the same document'),
    Mutant('P14', P, '    starts = candidate & (~self.vocab.is_continuation[ids] | ~previous_is_candidate)', '    starts = candidate & ~self.vocab.is_continuation[ids]', PRETRAIN_DATA, 'whole-word: ## piece after non-candidate is not a word start'),
    Mutant('K1', K, 'if unicodedata.category(c) != "Mn")', 'if unicodedata.category(c) != "Mc")', TOKENIZER, 'strip_accents drops Mc not Mn'),
    Mutant('K2', K, '    if "\\u03a3" in text:\n        text = text.replace("\\u03a3", "\\u03c3")\n', '', TOKENIZER, 'lowercase: final sigma special case removed'),
    Mutant('K3', K, 'or 123 <= cp <= 126:', 'or 123 <= cp <= 125:', TOKENIZER, "is_punctuation: '~' not punctuation"),
    Mutant('K4', K, '(0x4E00, 0x9FFF), (0x3400, 0x4DBF), ', '(0x4E00, 0x9FFF), ', TOKENIZER, 'CJK: Extension A block dropped'),
    Mutant('K5', K, 'piece = word[start:end] if start == 0 else prefix + word[start:end]', 'piece = word[start:end]', TOKENIZER, 'wordpiece: no ## prefix on continuations'),
    Mutant('K6', K, '    if n > max_input_chars_per_word:\n', '    if n >= max_input_chars_per_word:\n', TOKENIZER, 'wordpiece: max chars off by one'),
    Mutant('K7', K, '        else:                       # nothing matched at `start`: the whole word is unknown\n            return [unk_token]\n', '        else:\n            piece, end = unk_token, start + 1\n', TOKENIZER, 'wordpiece: per-character [UNK] instead of whole word'),
    Mutant('K8', K, '        end = min(n, start + limit)\n', '        end = min(n, start + limit - 1)\n', TOKENIZER, 'wordpiece: longest candidate off by one'),
    Mutant('K9', K, '        if char == "\\x00" or char == "\\ufffd" or is_control(char):', '        if char == "\\x00" or is_control(char):', TOKENIZER, 'clean_text keeps U+FFFD'),
    Mutant('K10', K, '            lower = self.do_lower_case\n', '            lower = False\n', TOKENIZER, 'ASCII fast path does not lower-case'),
    Mutant('K11', K, 'alternatives = sorted(self.never_split, key=lambda t: (-len(t), t))', 'alternatives = sorted(self.never_split, key=lambda t: (len(t), t))', TOKENIZER, 'special tokens matched shortest first'),
    Mutant('K12', K, 'self._strip = self.do_lower_case if strip_accents is None else bool(strip_accents)', 'self._strip = False if strip_accents is None else bool(strip_accents)', TOKENIZER, 'uncased default does not strip accents'),
    Mutant('K13', K, '        end = min(n, start + limit)\n        while end > start:\n            piece = word[start:end] if start == 0 else prefix + word[start:end]\n            if piece in vocab:\n                break\n            end -= 1\n', '        end = start + 1\n        while end <= min(n, start + limit):\n            piece = word[start:end] if start == 0 else prefix + word[start:end]\n            if piece in vocab:\n                break\n            end += 1\n', TOKENIZER, 'wordpiece: shortest-match-first'),
    Mutant('K14', K, '    step = size - stride\n', '    step = size\n', TOKENIZER_CALL, 'overflow windows do not share stride tokens'),
    Mutant('K15', K, '            where = slice(0, n) if side == "right" else slice(width - n, width)\n', '            where = slice(0, n)\n', TOKENIZER_CALL, 'padding_side="left" ignored in the call'),
    Mutant('K16', K, '            elif k and not token.startswith((".", ",", "!", "?")):\n', '            elif k:\n', TOKENIZER_CALL, 'decode keeps the space before . , ! ?'),
    Mutant('X1', X, '        if begin < position:\n', '        if end < position:\n', CHECKPOINT, 'header: overlap check compares end'),
    Mutant('X2', X, '        if begin > position:\n', '        if begin > position + 1:\n', CHECKPOINT, 'header: 1-byte hole allowed'),
    Mutant('X3', X, '        if expected != end - begin:\n', '        if expected > end - begin:\n', CHECKPOINT, 'header: too many bytes for shape allowed'),
    Mutant('X4', X, 'flat = (flat.astype(np.uint32) << 16).view(np.float32)', 'flat = (flat.astype(np.uint32) << 16).astype(np.float32)', CHECKPOINT, 'bf16: value cast instead of bit reinterpret'),
    Mutant('X5', X, '        if end > data_size:\n', '        if begin > data_size:\n', CHECKPOINT, 'header: end past data area only checked via begin'),
    Mutant('X6', X, '        if dtype not in _STORED:\n', '        if dtype not in _STORED and dtype not in _KNOWN_UNSUPPORTED:\n', CHECKPOINT, 'header: unsupported dtype (e.g. F8) passes validation'),
    Mutant('X7', CK, 'stripped = key[len(prefix):] if key.startswith(prefix) else None', 'stripped = key[len(prefix) - 1:] if key.startswith(prefix) else None', CHECKPOINT, "map_state_dict: bert. prefix stripped leaving '.'"),
    Mutant('X8', NN, '                aliases[name[: -len("weight")] + "gamma"] = name', '                aliases[name[: -len("weight")] + "beta"] = name', CHECKPOINT, 'aliases: gamma/beta swapped (weight<-beta)'),
    Mutant('X9', CK, '            if first.shape == value.shape and np.array_equal(first, value):', '            if first.shape == value.shape:', CHECKPOINT, 'map_state_dict: differing tied duplicate silently ignored'),
    Mutant('X10', CK, '    for key in sorted(tensors, key=lambda k: not resolved[k][1]):', '    for key in sorted(tensors):', CHECKPOINT, 'map_state_dict: aliases not resolved after own names'),
    Mutant('X11', CK, '        for candidate in (key, prefix + key, stripped):\n            if candidate in params:', '        for candidate in (key, stripped):\n            if candidate in params:', CHECKPOINT, 'map_state_dict: no bert. prefix added for base checkpoints'),
    Mutant('Y1', Y, 'pooled = xp.where(m > 0, hidden, -xp.inf).max(axis=1)', 'pooled = hidden.max(axis=1)', EMBED, 'max pooling includes the padded positions (which read 0)'),
    Mutant('Y2', Y, '/ m.sum(axis=1)).astype(hidden.dtype)', '/ m.shape[1]).astype(hidden.dtype)', EMBED, 'mean pooling divides by the padded length, not the sentence length'),
    Mutant('Y3', Y, 'norms = xp.sqrt((pooled * pooled).sum(axis=1, keepdims=True))', 'norms = (pooled * pooled).sum(axis=1, keepdims=True)', EMBED, 'normalise by squared norm'),
    Mutant('Y4', FC, '    t *= -0.5\n', '    t *= -1.0\n', FAST, '_gelu_chunk: exp(-x^2) instead of exp(-x^2/2)'),
    Mutant('Y5', FC, 'np.multiply(a, _ERF_P * _SQRT_HALF, out=t)', 'np.multiply(a, _ERF_P, out=t)', FAST, '_gelu_chunk: t = 1/(1+p|x|) without 1/sqrt2'),
    Mutant('Y6', FC, '    var *= 1.0 / out.shape[1]\n', '    var *= 1.0 / (out.shape[1] - 1)\n', FAST, 'layer_norm_fast: unbiased variance'),
    Mutant('Y7', FC, '    var += eps\n    np.sqrt(var, out=var)\n', '    np.sqrt(var, out=var)\n    var += eps\n', FAST, 'layer_norm_fast: eps after sqrt'),
    Mutant('Y8', M, 'rows = xp.searchsorted(packed.rows, rows)', 'rows = xp.searchsorted(packed.rows, rows, side="right")', FAST, 'inference packing: the packed row of each output position off by one'),
    Mutant('Y9', M, 'merged = merged.reshape(b * t, -1)[packed.rows]', 'merged = merged.reshape(b * t, -1)[:packed.rows.size]', FAST, 'inference packing: attention output read back as if the real tokens were contiguous'),
    Mutant('Y10', FC, 'q_t = q.swapaxes(-1, -2) * (1.0 / math.sqrt(head_size))', 'q_t = q.swapaxes(-1, -2)', FAST, 'keys-first attention: queries not scaled by 1/sqrt(D)'),
    Mutant('Y11', Y, '    norms = xp.sqrt((pooled * pooled).sum(axis=1, keepdims=True))', '    norms = xp.sqrt((pooled * pooled).sum(axis=0, keepdims=True))', EMBED, 'normalise over the batch axis'),
    Mutant('G1', G, 'numeric[n] = (plus - minus) / (2 * eps)', 'numeric[n] = (plus - minus) / eps', GRADCHECK, 'central difference missing factor 2'),
    Mutant('G2', G, '              atol: float = 1e-7, rtol: float = 1e-5, seed: int = 0)', '              atol: float = 1e-3, rtol: float = 1e-2, seed: int = 0)', GRADCHECK, 'default tolerances 1e-7/1e-5 -> 1e-3/1e-2'),
    Mutant('G3', G, '            array[where] = original\n', '', GRADCHECK, 'perturbed coordinate not restored'),
    Mutant('G4', G, '    return np.sort(rng.choice(size, size=samples, replace=False))', '    return np.arange(samples)', GRADCHECK, 'sampling always the first coordinates'),
    Mutant('G5', G, '    module.zero_grad()\n', '', GRADCHECK + ['tests/test_modules.py', 'tests/test_heads.py'], 'check_module: no zero_grad before backward'),
    Mutant('G6', G, '        return bool(np.all(self.errors <= self.allowed))', '        return bool(np.mean(self.errors <= self.allowed) >= 0.5)', GRADCHECK, 'ok if most coordinates agree'),
    Mutant('G7', G, '            array[where] = original - eps\n            minus = scalar_loss()\n            array[where] = original\n            numeric[n] = (plus - minus) / (2 * eps)', '            array[where] = original\n            minus = scalar_loss()\n            numeric[n] = (plus - minus) / eps', GRADCHECK, 'one-sided forward difference instead of central'),
    Mutant('Y12', FC, '    s *= np.reciprocal(s.sum(axis=0))\n', '    s *= np.reciprocal(s.sum())\n', FAST, 'keys-first softmax: one sum over the whole batch, not per query'),
    Mutant('BK1', FC, 'zip(bounds[:-1], bounds[1:])', 'zip(bounds[:-2], bounds[1:-1])', FAST, 'parallel_unary (erf split over the cores): the last block left uncomputed'),
    # round 3: checkpoint folders (reading, mapping, saving) and Module state dicts
    Mutant('CK1', CK, '    if model_type != expected:\n', '    if model_type in ("gpt2", "t5"):\n', CHECKPOINT, 'read_config: only some non-BERT model types refused'),
    Mutant('CK2', CK, 'not (isinstance(a, str) and a.startswith(prefix)) for a in architectures', 'not isinstance(a, str) for a in architectures', CHECKPOINT, 'read_config: non-BERT architectures accepted'),
    Mutant('CK3', CK, '        if key.endswith(_BUFFER_SUFFIXES):\n', '        if False:\n', CHECKPOINT, 'position_ids buffers reported as unexpected'),
    Mutant('CK4', CK, '        if value.dtype.kind not in "fb" and param.data.dtype.kind == "f":\n', '        if False:\n', CHECKPOINT, 'integer tensor silently loaded into a float parameter'),
    Mutant('CK5', CK, '    info.missing_keys = [name for name in params if name not in mapped]\n', '    info.missing_keys = []\n', CHECKPOINT, 'missing keys never reported'),
    Mutant('CK6', CK, '    if strict and (info.missing_keys or info.unexpected_keys):\n', '    if strict and info.missing_keys:\n', CHECKPOINT, 'strict ignores unexpected keys'),
    Mutant('CK7', CK, '        if n_vocab > config.vocab_size:\n', '        if n_vocab > config.vocab_size + 1:\n', CHECKPOINT, 'vocabulary one token larger than vocab_size accepted'),
    Mutant('CK8', CK, '            if key in tensors:\n                raise', '            if False:\n                raise', CHECKPOINT, 'a tensor in two shards: the later one wins silently'),
    Mutant('CK9', CK, '            if expected is not None and expected.get(key) != path:\n', '            if False:\n', CHECKPOINT, 'a shard holding a tensor its index places elsewhere is accepted'),
    Mutant('CK10', CK, '        if absent:\n', '        if False:\n', CHECKPOINT, 'tensors listed in the index but in no shard go unnoticed'),
    Mutant('CK11', CK, "        if (not isinstance(shard, str) or os.path.basename(shard) != shard\n", "        if (not isinstance(shard, str)\n", CHECKPOINT, 'index may point to a shard in another folder (../x.safetensors)'),
    Mutant('CK12', CK, '    tmp = f"{path}.{os.getpid()}.tmp"\n', '    tmp = path\n', CHECKPOINT, 'config.json written in place, not atomically'),
    Mutant('CK13', CK, '        if stale and name not in keep:\n', '        if stale and name in keep:\n', CHECKPOINT, 'the new weight files removed, stale ones kept'),
    Mutant('CK14', CK, '        if current and current_size + array.nbytes > limit:\n', '        if current and current_size + array.nbytes >= limit:\n', CHECKPOINT, 'shards: a tensor that exactly fills the limit starts a new shard'),
    Mutant('CK15', CK, '    values["architectures"] = [type(model).__name__]\n', '    values["architectures"] = ["BertModel"]\n', CHECKPOINT, 'config.json names BertModel whatever the class'),
    Mutant('CK16', CK, '    model.eval()                                          # inference by default, as transformers\n', '', CHECKPOINT, 'from_pretrained leaves the model in training mode (dropout on)'),
    Mutant('CK17', CK, '        if given_names is not None and given_count is not None and len(given_names) != given_count:\n', '        if False:\n', CHECKPOINT + ['tests/test_heads.py'], 'id2label and num_labels may disagree'),
    Mutant('CK18', CK, '_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3,', '_SIZE_UNITS = {"": 1, "B": 1, "KB": 2**10,', CHECKPOINT, 'KB read as 1024 bytes'),
    Mutant('CK19', CK, '    if strict and (info.missing_keys or info.unexpected_keys):\n', '    if strict and info.unexpected_keys:\n', CHECKPOINT, 'strict ignores missing keys'),
    Mutant('NN1', NN, '            to_copy.append((param, value))\n        if strict', '            param.data[...] = value\n            to_copy.append((param, value))\n        if strict', MODULES + ['tests/test_model_errors.py'], 'load_state_dict copies before every entry is checked'),
    Mutant('NN2', NN, '        missing = [name for name in params if name not in state\n                   and not any(alias in state for alias, target in aliases.items() if target == name)]', '        missing = [name for name in params if name not in state]', ['tests/test_model_errors.py', 'tests/test_checkpoint.py'], 'load_state_dict: a parameter given under an alias counted missing'),
    Mutant('NN3', NN, '            if id(param) not in seen:\n', '            if True:\n', MODULES + ['tests/test_optim.py'], 'named_parameters yields a shared (tied) parameter twice'),
    Mutant('NN4', NN, '            p.grad = get_array_module(p.data).zeros_like(p.data)\n', '', ['tests/test_model_errors.py'], 'to(dtype): gradients keep the old dtype'),
    Mutant('NN5', NN, '    previous, _grad_enabled = _grad_enabled, False\n', '    previous, _grad_enabled = True, False\n', ['tests/test_model_errors.py'], 'nested no_grad re-enables caches when the inner block ends'),
    # round 4: the main job's steps (pretrain.py) and its command (cli_pretrain.py)
    Mutant('PJ1', PJ, '        validation=ArrayDataset(validation, batch_size, shuffle=False),', '        validation=ArrayDataset(validation, batch_size, shuffle=True),', TRAINING, 'validation batches shuffled (evaluations see different subsets)'),
    Mutant('PJ2', PJ, '        labels = batch["labels"][batch["labels"] != -100]\n', '        labels = batch["labels"]\n', TRAINING, 'unigram baseline counts the ignored positions'),
    Mutant('PJ3', PJ, '    for document in train_ids:\n', '    for document in validation_ids:\n', TRAINING, 'token counts (and the baseline) taken from the validation text'),
    Mutant('PJ4', PJ, '                      and len(tokenizer.tokenize(w)) == 1]', '                      ]', TRAINING, 'fill-mask examples whose answer is several word pieces'),
    Mutant('PJ5', PJ, '    if vocab is not None:\n', '    if False:\n', TRAINING, 'a given vocabulary ignored: one is trained instead'),
    Mutant('CP1', CP, '    if checkpoint is not None or any(name in ("best_model", "results.json") for name in names):\n', '    if False:\n', TRAINING, 'an existing run folder is reused without --resume'),
    Mutant('CP2', CP, '        if changed:\n', '        if False:\n', TRAINING, '--resume with other data or model options accepted'),
    Mutant('CP3', CP, '    if checkpoint is not None and vocab is None and os.path.isfile(', '    if False and vocab is None and os.path.isfile(', TRAINING, '--resume trains a new vocabulary instead of the run\'s own'),
    Mutant('CP4', CP, '    warmup = int(args.warmup * args.steps) if args.warmup < 1 else int(args.warmup)\n', '    warmup = int(args.warmup * args.steps)\n', TRAINING, '--warmup 100 read as a fraction (100 x steps)'),
    Mutant('CP5', CP, '    if config.max_position_embeddings < args.max_seq_length:\n', '    if False:\n', TRAINING, '--max-seq-length beyond the model\'s positions accepted'),
    Mutant('CP6', CP, '    if config.vocab_size != len(tokenizer):\n', '    if False:\n', TRAINING, '--config with another vocab_size than the vocabulary accepted'),
    Mutant('CP7', CP, '    if not 0.0 < args.validation_fraction < 1.0:\n', '    if not 0.0 <= args.validation_fraction < 1.0:\n', TRAINING, '--validation-fraction 0 accepted (nothing held out)'),
    Mutant('CP8', CP, '    if others:\n', '    if False:\n', TRAINING, 'a folder holding files that are not a run\'s is emptied'),
    Mutant('CP9', CP, '        if state["step"] >= args.steps:', '        if False:', TRAINING, 'resuming a finished run trains and rewrites its results'),
    Mutant('CP10', CP, '    saved = model_class.from_pretrained(summary["model_dir"], device=args.device)\n', '    saved = model\n', TRAINING, 'the fill-mask demo queries the last step, not the saved model'),
    Mutant('TR11', TR, '                self._rewrite_metrics()\n', '                pass\n', TRAINING, 'a resumed run logs the steps it redoes twice'),
    # training.py: the pretraining loop
    Mutant('TR1', TR, 'shares = {name: count[name] / max(totals[name], 1) for name in totals}', 'shares = {name: 1.0 / len(batches) for name in totals}', TRAINING, 'accumulation: micro-batch MLM losses averaged equally, not by masked tokens'),
    Mutant('TR2', TR, 'nsp_weight=weights["nsp_loss"]', 'nsp_weight=1.0', TRAINING, 'accumulation: NSP gradients of the micro-batches summed, not averaged'),
    Mutant('TR3', TR, 'if not (math.isfinite(loss) and math.isfinite(grad_norm)):', 'if not math.isfinite(loss):', TRAINING, 'non-finite gradient norm with a finite loss not detected'),
    Mutant('TR4', TR, 'self.optimizer.lr = self.schedule(self.step)', 'self.optimizer.lr = self.schedule(self.step + 1)', TRAINING, 'learning-rate schedule read one step ahead'),
    Mutant('TR5', TR, '        os.replace(tmp, final)\n        _write_json_atomic(os.path.join(out, CHECKPOINT_POINTER), os.path.basename(final))\n', '        _write_json_atomic(os.path.join(out, CHECKPOINT_POINTER), os.path.basename(final))\n        os.replace(tmp, final)\n', TRAINING, 'checkpoint pointer moved before the folder is in place'),
    Mutant('TR6', TR, '        self.model.random.set_state(state["dropout_rng"])\n', '', TRAINING, 'resume: dropout generator state not restored'),
    Mutant('TR7', TR, '        self.train_dataset.position = state["data_position"]\n', '', TRAINING, 'resume: data position not restored (batches from the start)'),
    Mutant('TR8', TR, 'if args.patience is not None and self.evals_without_improvement >= args.patience:', 'if args.patience is not None and self.evals_without_improvement > args.patience:', TRAINING, 'early stopping one evaluation late'),
    Mutant('TR9', TR, 'mlm_loss = mlm_loss_sum / max(masked, 1)', 'mlm_loss = mlm_loss_sum / max(sequences, 1)', TRAINING, 'evaluation MLM loss divided by sequences, not masked tokens'),
    Mutant('TR10', TR, '                shutil.rmtree(os.path.join(out, name), ignore_errors=True)\n', '                pass\n', TRAINING, 'older checkpoints never removed'),
    # finetune.py
    Mutant('FT1', TR, 'else value > self.best_value)', 'else value < self.best_value)', FINETUNE, 'higher-is-better metric (accuracy) compared the wrong way'),
    Mutant('FT2', TR, 'self.best_weights = {n: p.data.copy() for n, p in self.model.named_parameters()}', 'self.best_weights = {n: p.data for n, p in self.model.named_parameters()}', FINETUNE, 'best weights kept by reference, not copied'),
    Mutant('FT3', TR, 'if args.restore_best and self.best_weights is not None and self.best_step != self.step:', 'if self.best_weights is not None and self.best_step != self.step:', FINETUNE, 'restore_best=False ignored'),
    Mutant('FT4', TR, 'if args.patience is not None and self.evals_without_improvement >= args.patience:', 'if args.patience is not None and self.evals_without_improvement > args.patience:', FINETUNE, 'early stopping one validation late'),
    Mutant('FT5', FT, '            loss_sum += out.loss * count\n            items += count\n', '            loss_sum += out.loss\n            items += 1\n', FINETUNE, 'evaluate: loss is the mean of batch means, not over items'),
    Mutant('FT6', FT, 'fp = matrix.sum(axis=0) - tp', 'fp = matrix.sum(axis=1) - tp', FINETUNE, 'macro_f1: false positives counted along the wrong axis'),
    Mutant('FT7', FT, 'np.add.at(matrix, (labels[counted], predictions[counted]), 1)', 'np.add.at(matrix, (predictions[counted], labels[counted]), 1)', FINETUNE, 'confusion matrix transposed (rows = predictions)'),
    # prune.py
    Mutant('PR1', PR, 'order = np.lexsort((heads, layers, importance[layers, heads]))', 'order = np.lexsort((heads, layers, -importance[layers, heads]))', PRUNE, 'most important heads pruned first'),
    Mutant('PR2', PR, '        if left[layer] > 1:\n', '        if left[layer] >= 1:\n', PRUNE, 'a layer may lose its last head'),
    Mutant('PR3', PR, 'summed = np.abs(gates).sum(axis=0)', 'summed = gates.sum(axis=0)', PRUNE, 'head importance: signed gradients summed (cancel out)'),
    Mutant('PR4', PR, 'count = min(int(round(sparsity * magnitudes.size)), magnitudes.size - 1)', 'count = min(int(sparsity * magnitudes.size), magnitudes.size - 1)', PRUNE, 'magnitude pruning count floored, not rounded'),
    Mutant('PR5', PR, '        self.pruner.mask_gradients()\n', '', PRUNE, 'masked optimizer: gradients of pruned weights not zeroed (moments build up)'),
    Mutant('PR6', M, 'pruned = {int(k): set(v) for k, v in', 'pruned = {k: set(v) for k, v in', PRUNE + ['tests/test_modules.py'], 'pruned_heads keys read back from JSON as strings, not ints'),
    # vocab_trainer.py
    Mutant('V1', V, 'ranked = sorted(char_counts, key=lambda c: (-char_counts[c], c))', 'ranked = sorted(char_counts, key=lambda c: (char_counts[c], c))', VOCAB, 'alphabet: least frequent characters kept'),
    Mutant('V2', V, '        if count < min_frequency:\n', '        if count <= min_frequency:\n', VOCAB, 'a pair seen exactly min_frequency times is not merged'),
    Mutant('V3', V, 'merged = symbols[left] + symbols[right][strip:]', 'merged = symbols[left] + symbols[right]', VOCAB, 'merged token keeps the inner ## prefix'),
    Mutant('V4', V, '        counts.pop(token, None)\n', '        pass\n', VOCAB, 'special tokens in the text counted as words'),
    Mutant('V5', V, '                delta[p] -= freq\n', '                delta[p] -= 0\n', VOCAB, 'merge: counts of the pairs that disappear not decreased'),
    # data/corpus.py
    Mutant('CO1', CO, 'n_validation = min(n - 1, max(1, round(validation_fraction * n)))', 'n_validation = min(n, max(1, round(validation_fraction * n)))', CORPUS, 'validation split may take every document'),
    Mutant('CO2', CO, 'held_out = np.random.default_rng(seed).permutation(n)[:n_validation]', 'held_out = np.arange(n)[:n_validation]', CORPUS, 'validation documents are the first ones, not a random choice'),
    Mutant('CO3', CO, 'merged[-1].rsplit(" ", 1)[-1] in ABBREVIATIONS', 'merged[-1].rsplit(" ", 1)[0] in ABBREVIATIONS', CORPUS, 'abbreviation check looks at the wrong word'),
    Mutant('CO4', CO, '                break                                   # doctest', '                continue                                # doctest', CORPUS, 'doctest output lines kept as prose'),
    Mutant('CO5', CO, '            seen.add(key)\n', '            pass\n', CORPUS, 'duplicate documents not removed'),
    # data/finetuning.py
    Mutant('FD1', FD, 'return sorted(names, key=lambda name: (float(name), name))', 'return sorted(names)', FINETUNE_DATA, 'numeric labels sorted as strings ("10" < "2")'),
    Mutant('FD2', FD, 'names = (["O"] if "O" in found else []) + sorted(found - {"O"})', 'names = sorted(found)', FINETUNE_DATA, 'CoNLL tag "O" not given id 0'),
    Mutant('FD3', FD, '            if word != previous:                       # the first piece of its word\n', '            if True:\n', FINETUNE_DATA, 'token labels on every piece, not only the first'),
    Mutant('FD4', K, '        return int(max_length) - need, truncation\n', '        return int(max_length) - need + 1, truncation\n', FINETUNE_DATA + TOKENIZER, 'truncation: no room kept for [SEP]'),
    Mutant('FD5', FD, 'enumerate(offsets) if e > start_char), None)', 'enumerate(offsets) if e >= start_char), None)', FINETUNE_DATA, 'answer span starts at a token that ends where the answer begins'),
    Mutant('FD6', FD, '            start += min(length, doc_stride)\n', '            start += length\n', FINETUNE_DATA, 'SQuAD windows do not overlap (stride ignored)'),
    Mutant('FD7', FD, 'offsets[context_positions[j], 1]]', 'offsets[context_positions[j], 0]]', FINETUNE_DATA, 'answer text cut at the start of its last token'),
    Mutant('FD8', FD, 'if owner not in best or score > best[owner][0]:', 'if owner not in best:', FINETUNE_DATA, 'postprocessing: first window wins, not the best-scoring one'),
    # data/squad_metric.py
    Mutant('SQ1', SQ, '    text = text.lower()\n', '', FINETUNE_DATA, 'normalize_answer does not lower-case'),
    Mutant('SQ2', SQ, r'_ARTICLES = re.compile(r"\b(a|an|the)\b")', r'_ARTICLES = re.compile(r"(a|an|the)")', FINETUNE_DATA, 'articles removed inside words too (no word boundaries)'),
    Mutant('SQ3', SQ, 'precision, recall = common / len(predicted), common / len(expected)', 'precision, recall = common / len(expected), common / len(predicted)', FINETUNE_DATA, 'precision and recall swapped', equivalent='F1 is symmetric in precision and recall'),
    Mutant('SQ4', SQ, 'common = sum((Counter(predicted) & Counter(expected)).values())', 'common = len(set(predicted) & set(expected))', FINETUNE_DATA, 'F1 overlap ignores repeated words'),
    Mutant('SQ5', SQ, '        count += 1\n        if qid not in predictions:\n            continue                                   # unanswered: scores 0\n', '        if qid not in predictions:\n            continue                                   # unanswered: scores 0\n        count += 1\n', FINETUNE_DATA, 'unanswered questions left out of the mean instead of scoring 0'),
    # round 5: today's redesign: the registry, the CPU speed wing, inference packing, head masks,
    # attention outputs, pruned heads in the config and the model, the one training loop
    Mutant('RG1', RG, '(inference or not self.inference_only) and x.dtype', 'x.dtype', FAST, 'registry: an inference-only speed-up (no backward) chosen with grad on'),
    Mutant('RG2', RG, '(inference or not self.inference_only)', '(not self.inference_only)', FAST, 'registry: inference-only speed-ups never chosen, even under no_grad'),
    Mutant('RG3', RG, ' and x.dtype.name in self.dtypes\n', '\n', FAST, 'registry: dtype not checked (float64 inference gets the float32 shortcuts)'),
    Mutant('RG4', RG, '        _enabled = previous\n', '        _enabled = True\n', FAST, 'reference_only: speed-ups switched on at the end of a nested block, not put back as found'),
    Mutant('RG5', RG, '.insert(0, speed_up)', '.append(speed_up)', FAST, 'register: a new speed-up tried last, not first'),
    Mutant('FC1', FC, '    if not (real == (np.arange(n_keys) < lengths[:, None])).all():\n        return None\n', '', FAST, 'padding_lengths: a mask hiding other keys than trailing padding read as lengths'),
    Mutant('FC2', FC, 'np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1)', 'np.split(order, np.flatnonzero(np.diff(lengths[order])))', FAST, 'keys-first attention: groups of equal length split one sequence early'),
    Mutant('FC3', FC, 'k[group, :, :n], v[group, :, :n]', 'k[group, :, :n - 1], v[group, :, :n - 1]', FAST, 'keys-first attention: a group attends over n-1 of its n real keys'),
    Mutant('FC7', FC, 'zero = n < n_queries and not q[group, :, n:].any()', 'zero = n < n_queries', FAST, 'keys-first attention: padded queries taken for zero without looking'),
    Mutant('FC8', FC, 'o[group, :, n:] = v_g.mean(axis=2, keepdims=True)', 'o[group, :, n:] = v_g.sum(axis=2, keepdims=True)', FAST, 'keys-first attention: zero queries given the sum of the values, not their mean'),
    Mutant('FC4', FC, '        _local.single = self.previous\n', '        _local.single = False\n', FAST, 'single_threaded: the end of a nested block turns the outer one off'),
    Mutant('FC5', FC, 'libc.mallopt(GLIBC_M_MMAP_THRESHOLD, MMAP_THRESHOLD)', 'libc.mallopt(GLIBC_M_MMAP_THRESHOLD, TRIM_THRESHOLD)', FAST, 'keep_freed_memory: the two thresholds swapped', also=[('libc.mallopt(GLIBC_M_TRIM_THRESHOLD, TRIM_THRESHOLD)', 'libc.mallopt(GLIBC_M_TRIM_THRESHOLD, MMAP_THRESHOLD)')]),
    Mutant('FC6', FC, 'lengths.min() == k.shape[2] or lengths.min() == 0:', 'lengths.min() == k.shape[2]:', FAST, 'keys-first attention: a sequence that is all padding grouped over zero keys'),
    Mutant('FS1', FC, '        if bias is not None:\n            y[rows] += bias\n', '        if bias is not None and i == 0:\n            y[rows] += bias\n', FAST, 'linear_split: the bias added to the first block of rows only'),
    Mutant('FS2', FC, 'np.concatenate([[0], np.cumsum(weights)])', 'np.concatenate([[0], np.cumsum(np.ones_like(weights))])', FAST, 'attention_split: sequences shared out by count, not by their work'),
    Mutant('FS3', FC, '            lib.set_num_threads(threads)\n', '            lib.set_num_threads(1)\n', FAST, 'single_threaded_blas: BLAS left single-threaded after the block'),
    Mutant('FS4', FC, '        work(0)\n        for future in pending:', '        for future in pending:', FAST, 'run_parts: the calling thread never does its own block'),
    Mutant('FS5', FC, 'None if mask is None else mask[s])', 'None if mask is None else mask[:s.stop - s.start])', FAST, 'attention_split: every block of sequences given the first block\'s padding mask'),
    Mutant('FS6', FC, '    return max(1, min(available_cores(), blas_threads()))', '    return available_cores()', FAST, 'split_parts: every core used even where BLAS was limited to fewer threads'),
    Mutant('FS7', FC, 'for start in starts[i::parts]]', 'for start in starts[i::parts + 1]]', FAST, 'gelu_split: some chunks of the output never computed'),
    Mutant('MP1', M, '            if rows is not None:\n                needed[rows] = True\n', '', FAST, 'inference packing: asked-for padded output positions not computed'),
    Mutant('MP2', M, 'needed = mask.reshape(-1) == 0', 'needed = xp.ones(batch * length, dtype=bool)', FAST, 'inference packing: the padded rows packed and computed too'),
    Mutant('MP3', M, 'xp.searchsorted(order, positions), xp.searchsorted(order, first_tokens)', 'xp.searchsorted(rows, positions), xp.searchsorted(rows, first_tokens)', FAST, 'output_positions: searched among the packed rows, not the flat positions they hold'),
    Mutant('MP4', M, 'h = scatter_rows(h, packed.rows, (batch, length, hidden))', 'h = scatter_rows(h, xp.arange(packed.rows.size), (batch, length, hidden))', FAST, 'inference packing: the sequence output scattered to the first rows, not the real positions'),
    Mutant('MP5', M, 'ungated, context = context, context * gate', 'ungated, context = context, context', ['tests/test_modules.py'], 'head_mask: the gate not applied in forward'),
    Mutant('MP6', M, '            dcontext = dcontext * gate\n', '', ['tests/test_modules.py'], 'head_mask: backward does not multiply the gradient by the gate'),
    Mutant('MP7', M, '(ungated * dcontext).sum(axis=(2, 3))', '(ungated * dcontext).sum(axis=(0, 2, 3))', ['tests/test_modules.py', 'tests/test_prune.py'], 'head_mask_grad summed over the batch too (not per sequence)'),
    Mutant('MP8', M, 'return (merged, cache.p) if output_attentions', 'return (merged, cache.p_dropped) if output_attentions', ['tests/test_attention_maps.py'], 'output_attentions returns the probabilities after dropout'),
    Mutant('PH1', M, 'kept = [before.kept_heads(layer_index).index(h)', 'kept = [config.kept_heads(layer_index).index(h)', ['tests/test_modules.py'], 'prune_heads: kept heads located in the config after pruning, not before'),
    Mutant('PH2', M, '            kept[name] = value[:, columns]', '            kept[name] = value[columns]', ['tests/test_modules.py', 'tests/test_prune.py'], '_state_of_heads: rows of output.dense kept instead of columns'),
    Mutant('CF1', CF, '.get("pruned_heads", {}).get(str(layer), ())', '.get("pruned_heads", {}).get(layer, ())', ['tests/test_modules.py', 'tests/test_prune.py'], 'kept_heads: looks the layer up by int (config.json keys are strings): pruned heads ignored'),
    Mutant('CF2', CF, '            if len(heads) >= self.num_attention_heads:\n', '            if len(heads) > self.num_attention_heads:\n', ['tests/test_modules.py', 'tests/test_prune.py'], 'pruned_heads: every head of a layer may be pruned'),
    Mutant('TK1', TR, '{name: share * scale for name, share in shares.items()}', '{name: count[name] * scale for name in shares}', ['tests/test_training.py'], 'accumulation: loss weights are item counts, not divided by the step\'s total'),
    Mutant('TK2', TR, '{name: share * scale for name, share in shares.items()}', '{name: share for name, share in shares.items()}', ['tests/test_training.py'], 'fp16: the loss scale not applied to the loss weights'),
    Mutant('TK3', TR, 'if not (math.isfinite(loss) and math.isfinite(grad_norm)):', 'if not (math.isfinite(loss) and not math.isnan(grad_norm)):', ['tests/test_training.py'], 'divergence check passes an infinite gradient norm (only NaN stops)'),
    Mutant('VA1', VA, '    if length > config.max_sequence_length:\n', '    if length >= config.max_sequence_length:\n', ['tests/test_model_errors.py'], 'a sequence of exactly max_position_embeddings tokens refused'),
    Mutant('SW1', SW, '    if last > 0.95 * first:\n', '    if last > 0.5 * first:\n', SWEEP, 'a run whose loss halved labelled stagnant'),
    Mutant('SW2', SW, '    steepest = first + int(np.argmin(slopes[first:lowest + 1]))', '    steepest = first + int(np.argmax(slopes[first:lowest + 1]))', SWEEP, 'range test: suggests the flattest point, not the steepest fall'),
    Mutant('SW3', NS, '    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)', '    trace = (small_sq - big_sq) / (1.0 / b_small)', SWEEP, 'noise scale: tr(Sigma) divided by 1/b only'),
    Mutant('RB1', 'minibert/roberta.py', '        return xp.cumsum(real, axis=1) * real + self.padding_idx\n', '        return xp.cumsum(real, axis=1) + self.padding_idx\n', ['tests/test_roberta.py'], 'RoBERTa: padding gets positions past the real tokens'),
    Mutant('RB2', 'minibert/roberta.py', '        self.position_embeddings.backward(dx)                            # each sequence its own positions\n', '        self.position_embeddings.backward(dx[:1])\n', ['tests/test_roberta.py'], 'RoBERTa: position gradient of the first sequence only'),
    Mutant('DB1', 'minibert/distilbert.py', '    ("encoder.layer.{}.output.dense.", "transformer.layer.{}.ffn.lin2."),', '    ("encoder.layer.{}.output.dense.", "transformer.layer.{}.ffn.lin1."),', ['tests/test_distilbert.py'], 'DistilBERT: the second feed-forward layer saved under the first one\'s name'),
    Mutant('DB2', 'minibert/distilbert.py', '        self.position_embeddings.backward(dx.sum(axis=0, keepdims=True))\n', '        self.position_embeddings.backward(dx[:1])\n', ['tests/test_distilbert.py'], 'DistilBERT: position gradient of the first sequence only'),
    Mutant('KE1', 'kernels/layer_norm.cu', '        const float gx = __fmul_rn(gr[c], gamma[c]);\n', '        const float gx = gr[c] * gamma[c];\n', ['tests/test_kernels.py'], 'LayerNorm kernel: g * gamma left to FMA contraction (dx not 0 at hidden size 1)'),
    Mutant('KE2', 'kernels/adamw.cu', '        const float v_new = beta2 * v[i] + one_minus_beta2 * grad * grad;', '        const float v_new = beta2 * v[i] + (1.0f - beta2) * grad * grad;', ['tests/test_kernels.py'], 'AdamW kernel: 1 - beta2 computed in float32 on the device'),
    Mutant('KE3', 'minibert/fast/cuda.py', '    if 0 in grid:\n        return\n', '', ['tests/test_kernels.py'], 'a launch with no blocks runs one block (out-of-bounds reads)'),
    Mutant('BP1', BP, '            if pair not in self.ranks:\n                break\n', '            if pair not in self.ranks or len(symbols) < 3:\n                break\n', ['tests/test_bpe.py'], 'BPE stops merging once two symbols are left'),
    Mutant('BP2', BP, '            trimmed_begin = min(begin + leading, end)\n', '            trimmed_begin = begin\n', ['tests/test_bpe.py'], 'BPE offsets keep the leading space of a token'),
    Mutant('SW5', TR, '                self._first_micro_batch = (_squared_norm(self.model) / (share * scale) ** 2, len(batch["input_ids"]))', '                self._first_micro_batch = (_squared_norm(self.model) / (share * scale), len(batch["input_ids"]))', SWEEP, 'noise scale: the first micro-batch\'s gradient divided by its share once, not squared'),
    Mutant('SW4', CW, '            baseline[name] = values[0]                    # one value: part of the baseline', '            knobs[name] = values', SWEEP, 'a knob with one value swept alone instead of setting the baseline'),
    # data parallel (minibert/distributed.py and its use in the loop)
    Mutant('DP1', TR, 'totals = {name: int(n) for name, n in self._sum_over_ranks(totals).items()}', 'totals = {name: int(n) for name, n in totals.items()}', DISTRIBUTED, 'data parallel: each rank weights its losses by its own item count, not the global one'),
    Mutant('DP2', DP, 'self.buckets[self.next_bucket][2] < finished_groups:', 'self.buckets[self.next_bucket][2] <= finished_groups:', DISTRIBUTED, 'a gradient bucket sent one layer before backward has finished it'),
    Mutant('DP3', DP, '    lo, hi = rank * rows // size, (rank + 1) * rows // size\n', '    lo, hi = 0, rows // size\n', DISTRIBUTED, 'every rank trains on the first rows of the global batch'),
    Mutant('DP4', DP, 'weight_decay=self.weight_decay if self._decays(name) else 0.0,', 'weight_decay=self.weight_decay,', DISTRIBUTED, 'ZeRO: weight decay on biases and LayerNorm'),
    Mutant('DP5', TR, '    if comm.size > 1:\n        sums = comm.all_reduce(', '    if False:\n        sums = comm.all_reduce(', DISTRIBUTED, 'sharded evaluation: the ranks\' sums not added'),
    Mutant('DP6', DP, '            if time.monotonic() > deadline:\n                return False\n', '', DISTRIBUTED, 'after an error on one rank the others are never aborted (they wait for ever)'),
    Mutant('ML1', 'minibert/cli_tokenizer.py', 'strip_accents = True if args.strip_accents else False if args.keep_accents else None', 'strip_accents = False if args.strip_accents else True if args.keep_accents else None', ['tests/test_multilingual_vocab.py'], 'train-vocab: --strip-accents and --keep-accents swapped'),
    Mutant('ML2', 'minibert/cli_tokenizer.py', '                   tokenize_chinese_chars=not args.no_split_cjk)', '                   tokenize_chinese_chars=True)', ['tests/test_multilingual_vocab.py'], 'train-vocab: --no-split-cjk ignored'),
    Mutant('ML3', 'minibert/cli_tokenizer.py', '    path = save_vocab(vocab, args.output, **options)', '    path = save_vocab(vocab, args.output, do_lower_case=not args.cased)', ['tests/test_multilingual_vocab.py'], 'train-vocab: the accent and CJK options are used for training but not saved in tokenizer_config.json'),
    Mutant('ML4', 'minibert/data/multilingual.py', '            line = unicodedata.normalize("NFD", line)', '            line = unicodedata.normalize("NFC", line)', ['tests/test_multilingual_vocab.py'], 'multilingual text: no paragraph is ever decomposed (NFD)'),
    Mutant('ML5', 'minibert/data/multilingual.py', '    return word[:-1] + "\\u03c2" if word.endswith("\\u03c3") else word', '    return word', ['tests/test_multilingual_vocab.py'], 'multilingual text: Greek words never end in the final sigma'),
    Mutant('ML6', 'minibert/data/multilingual.py', '        if language.cased and position == 0:', '        if language.cased and position == 1:', ['tests/test_multilingual_vocab.py'], 'multilingual text: the second word of a sentence is capitalised instead of the first'),
    Mutant('ML7', 'minibert/data/multilingual.py', '            total += 1.0 / (k + 1)', '            total += 1.0', ['tests/test_multilingual_vocab.py'], 'multilingual text: words drawn uniformly instead of with Zipf weights'),
    Mutant('ML8', 'minibert/data/multilingual.py', '        size += len(line.encode("utf-8")) + 1', '        size += len(line) + 1', ['tests/test_multilingual_vocab.py'], 'multilingual_text: size counted in characters, not UTF-8 bytes'),
    Mutant('ML9', 'minibert/data/multilingual.py', '    return unicodedata.normalize("NFC", onset + vowel + coda)', '    return onset + vowel + coda', ['tests/test_multilingual_vocab.py'], 'multilingual text: Vietnamese syllables left decomposed (combining marks) in composed paragraphs'),
    Mutant('ML10', 'minibert/data/multilingual.py', '    if unknown or not languages:', '    if unknown:', ['tests/test_multilingual_vocab.py'], 'multilingual text: an empty list of languages is not reported'),
    Mutant('ML11', 'examples/multilingual_vocab.py', '        return prefix + "\\u00b7".join(body)', '        return prefix + body', ['tests/test_multilingual_vocab.py'], 'example: Hangul jamo of a stripped syllable shown joined (drawn as the syllable)'),
    Mutant('ML12', 'minibert/data/multilingual.py', '            if language.nouns_capitalised and word in lexicon.nouns:', '            if language.nouns_capitalised and word not in lexicon.nouns:', ['tests/test_multilingual_vocab.py'], 'multilingual text: German capitalises the wrong two thirds of its lexicon'),
    Mutant('KT1', 'kernels/flash_attention_tc.cu', 'acc[c] = acc[c] * alpha + pv[r * out_ld(D) + 2 * c + half];', 'acc[c] = acc[c] + pv[r * out_ld(D) + 2 * c + half];', ['tests/test_kernels.py'], 'version 2 forward does not rescale the register accumulator when the running max grows'),
    Mutant('KT2', 'kernels/flash_attention_tc.cu', 'tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 1));', 'tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 2));', ['tests/test_kernels.py'], 'the lane pair combines its tile maximum with a lane of the next row instead of its partner'),
    Mutant('KT3', 'kernels/flash_attention_tc.cu', 'dk[idx + d] = from_float<T>(scratch[r * out_ld(D) + d] * a.scale);', 'dk[idx + d] = from_float<T>(scratch[r * D + d] * a.scale);', ['tests/test_kernels.py'], 'dk is read back from the padded warp tile with the unpadded row length'),
    Mutant('KT4', 'minibert/fast/cuda.py', 'dtypes=("float16", "bfloat16"), accepts=flash_tc_accepts', 'dtypes=("float16",), accepts=flash_tc_accepts', ['tests/test_kernels.py'], 'the registry never gives bfloat16 arrays to version 2'),
    Mutant('KT5', 'minibert/fast/cuda.py', 'return (q.ndim == 4 and q.size > 0 and q.shape[-1] in FLASH_TC_HEAD_SIZES', 'return (q.ndim == 4 and q.size > 0 and q.shape[-1] in FLASH_HEAD_SIZES', ['tests/test_kernels.py'], 'version 2 claims head size 32, for which it has no kernel'),
    Mutant('KT6', 'benchmarks/attention.py', 'if max(worst.values()) > 3e-2:', 'if max(worst.values()) < 3e-2:', ['tests/test_kernels.py'], 'the GPU benchmark refuses correct kernels and would time wrong ones'),
    Mutant('RT1', 'minibert/bpe.py', '        return [cls, *ids_a, sep, sep, *ids_b, sep]\n', '        return [cls, *ids_a, sep, *ids_b, sep]\n', ['tests/test_roberta_tokenizer.py'], 'RoBERTa pair with one </s> between the texts'),
    Mutant('RT2', 'minibert/bpe.py', '    SPECIAL_LAYOUT = {False: (1, 0, 1), True: (1, 2, 1)}\n', '    SPECIAL_LAYOUT = {False: (1, 0, 1), True: (1, 1, 1)}\n', ['tests/test_roberta_tokenizer.py'], 'RoBERTa pair layout counts one special token between the texts'),
    Mutant('RT3', 'minibert/bpe.py', '                    first, begin, end = None, position + begin, position + end - shift\n', '                    first, begin, end = None, position + begin - shift, position + end - shift\n', ['tests/test_roberta_tokenizer.py'], 'the token holding the space added after a special token is offset as an ordinary token'),
    Mutant('RT4', 'minibert/bpe.py', '                    first_offsets.append(first if leading == 1 else None)\n', '                    first_offsets.append(None)\n', ['tests/test_roberta_tokenizer.py'], "a window's first token does not keep the space before it"),
    Mutant('RT5', 'minibert/bpe.py', '    SECOND_TYPE_ID = 0\n', '    SECOND_TYPE_ID = 1\n', ['tests/test_roberta_tokenizer.py'], 'RoBERTa pair without special tokens gets token type 1'),
    Mutant('RT6', 'minibert/bpe.py', '        if isinstance(settings.get("model_max_length"), (int, float)) and settings["model_max_length"] > 1e9:\n            settings["model_max_length"] = None', '        if False:\n            settings["model_max_length"] = None', ['tests/test_roberta_tokenizer.py'], 'a huge model_max_length in tokenizer_config.json is not read as no limit'),
    Mutant('RT7', 'minibert/tokenization.py', '                return alignments_of(encode_rows(True)[0])\n', '                return alignments_of(encode_rows(False)[0])\n', ['tests/test_roberta_tokenizer.py'], 'the lazy alignment encodes without alignment'),
    Mutant('RT8', 'minibert/tokenization.py', '                if self._vocabulary_changes != changes:\n', '                if False:\n', ['tests/test_roberta_tokenizer.py'], 'the lazy alignment is made after tokens were added'),
    Mutant('RT9', 'minibert/tokenization.py', '    return list(words) if isinstance(words, (list, tuple)) else words\n', '    return words\n', ['tests/test_roberta_tokenizer.py'], "the call keeps the caller's word lists, which may change before the lazy alignment"),
    Mutant('RT10', 'minibert/tokenization.py', '        if start and offsets and self.first_offsets is not None and self.first_offsets[start] is not None:\n', '        if False:\n', ['tests/test_roberta_tokenizer.py'], 'window slices ignore the first-token offsets'),
    Mutant('RH1', 'minibert/roberta.py', 'return self.dropout.backward(self.dense.backward(self.activation.backward(dx)))', 'return self.dropout.backward(self.dense.backward(dx))', ['tests/test_roberta.py'], 'RoBERTa classification head: backward skips the tanh derivative'),
    Mutant('RH2', 'minibert/heads.py', 'first = get_array_module(ids).arange(batch) * length', 'first = get_array_module(ids).arange(batch)', ['tests/test_roberta.py', 'tests/test_distilbert.py'], "first-token states read positions 0..B-1 of the flat batch instead of each sequence's first position"),
    Mutant('RH3', 'minibert/roberta.py', '        p = _classifier_dropout(config)\n', '        p = config.hidden_dropout_prob\n', ['tests/test_roberta.py'], 'RoBERTa classification head ignores classifier_dropout'),
    Mutant('RH4', 'minibert/roberta.py', '        self.roberta.backward(self.classifier.backward(dlogits), None)', '        self.roberta.backward(None, self.classifier.backward(dlogits))', ['tests/test_roberta.py'], 'RoBERTa sequence classifier sends its gradient to the (absent) pooler'),
    Mutant('DH1', 'minibert/distilbert.py', '        self.activation = Activation("relu")', '        self.activation = Activation("gelu")', ['tests/test_distilbert.py'], 'DistilBERT pre_classifier followed by GELU instead of ReLU'),
    Mutant('DH2', 'minibert/distilbert.py', '        dfirst = self.pre_classifier.backward(self.activation.backward(dhidden))', '        dfirst = self.pre_classifier.backward(dhidden)', ['tests/test_distilbert.py'], 'DistilBERT sequence classifier: backward skips the ReLU mask'),
    Mutant('DH3', 'minibert/distilbert.py', '_dropout_field(self.config, "qa_dropout", 0.1)', '_dropout_field(self.config, "qa_dropout", 0.2)', ['tests/test_distilbert.py'], 'DistilBERT question answering: wrong qa_dropout default'),
    Mutant('DH4', 'minibert/distilbert.py', '        self.dropout.p = self.config.hidden_dropout_prob\n', '', ['tests/test_distilbert.py'], 'DistilBERT token classification reads classifier_dropout (transformers uses dropout)'),
    Mutant('DH6', 'minibert/ops/activations.py', '    positive = cache\n    return dy * positive', '    positive = cache\n    return dy', ['tests/test_ops.py', 'tests/test_distilbert.py'], 'ReLU backward passes the gradient where x <= 0'),
    Mutant('DH7', 'minibert/ops/activations.py', '    positive = x > 0\n', '    positive = x >= -0.1\n', ['tests/test_ops.py', 'tests/test_distilbert.py'], 'ReLU lets slightly negative inputs through'),
    Mutant('RZ1', 'minibert/modeling.py', 'if isinstance(module, Linear) and module.weight is table and module.bias is not None:', 'if isinstance(module, Linear) and module.bias is not None and module.bias.data.shape[0] > 2:', ['tests/test_roberta.py', 'tests/test_tokenizer_call.py'], 'resize_token_embeddings resizes biases of layers not tied to the vocabulary'),
    Mutant('FM1', 'minibert/cli_finetune_tasks.py', '    if model.config.type_vocab_size == 1:\n', '    if model.config.type_vocab_size == 0:\n', ['tests/test_distilbert.py'], 'finetune command keeps sentence-B token types for a one-token-type model'),
    Mutant('FM2', 'minibert/cli_finetune_tasks.py', '    "distilbert": ("DistilBert", ("vocab.txt",)),', '    "distilbert": ("Bert", ("vocab.txt",)),', ['tests/test_distilbert.py'], 'finetune command builds a BERT head for a DistilBERT checkpoint'),
    Mutant('FM3', 'minibert/cli_finetune_tasks.py', '        return head_class(args.model_type, head).from_pretrained(', '        return head_class("bert", head).from_pretrained(', ['tests/test_distilbert.py'], 'finetune --task always builds the BERT head'),
    Mutant('FM4', 'minibert/checkpoint.py', 'model_has_heads=hasattr(model, "cls"),\n                           checkpoint_name=model.to_checkpoint_name)', 'model_has_heads=hasattr(model, "cls"))', ['tests/test_distilbert.py'], "a missing DistilBERT tensor is reported under minibert's name, not the file's"),
    Mutant('FM5', 'minibert/cli_finetune_tasks.py', '        return RobertaTokenizer.from_pretrained(directory, **({"add_prefix_space": True} if words else {}))', '        return RobertaTokenizer.from_pretrained(directory)', ['tests/test_roberta.py'], 'finetune --task wnut16 with RoBERTa tokenizes pre-split words without the leading space'),
    Mutant('FM6', 'minibert/cli_finetune_tasks.py', '    basic = getattr(tokenizer, "basic", None)\n', '    basic = tokenizer.basic\n', ['tests/test_roberta.py'], "the bag-of-words baseline needs the WordPiece tokenizer's basic splitter (RoBERTa has none)"),
    Mutant('DF1', 'minibert/data/finetuning.py', '            if key in encoded:           # token_type_ids: absent', '            if True:           # token_type_ids: absent', ['tests/test_roberta.py'], 'encode_classification needs token_type_ids from the tokenizer (RoBERTa gives none)'),
    Mutant('DF2', 'minibert/data/finetuning.py', '    token_types = np.zeros_like(input_ids) if token_types is None else token_types.astype(np.int32)', '    token_types = token_types.astype(np.int32)', ['tests/test_roberta.py'], 'encode_token_classification needs token_type_ids from the tokenizer (RoBERTa gives none)'),
    Mutant('DS1', 'minibert/ops/cosine_embedding.py', 'return dcos * (-dloss * weights / count)[:, None]', 'return dcos * (dloss * weights / count)[:, None]', ['tests/test_distill.py'], 'cosine_embedding_backward: gradient of the wrong sign'),
    Mutant('DS2', 'minibert/ops/cosine_embedding.py', '- (cos / student_norm ** 2)[:, None] * student', '- (cos / student_norm)[:, None] * student', ['tests/test_distill.py'], 'cosine_embedding_backward: |s| instead of |s|^2 in the length term'),
    Mutant('DS3', 'minibert/ops/cosine_embedding.py', 'loss = float((weights * (1.0 - cos)).sum()) / count', 'loss = float((1.0 - cos).sum()) / count', ['tests/test_distill.py'], 'cosine_embedding_forward: padded rows counted in the loss'),
    Mutant('DS4', 'minibert/distill.py', 'rest = f"encoder.layer.{layers[int(index)]}.{tail}"', 'rest = f"encoder.layer.{int(index)}.{tail}"', ['tests/test_distill.py'], 'student_from_teacher: copies the first layers instead of the chosen ones'),
    Mutant('DS5', 'minibert/distill.py', 'value += to_numpy(token_types.data)[0]', 'pass', ['tests/test_distill.py'], 'student_from_teacher: the token-type-0 embedding not folded into the positions'),
    Mutant('DS6', 'minibert/distill.py', 'return [i * teacher_layers // student_layers for i in range(student_layers)]', 'return [2 * i for i in range(student_layers)]', ['tests/test_distill.py'], 'evenly_spaced_layers: always every other layer, whatever --layers says'),
    Mutant('DS7', 'minibert/distill.py', 'dflat[positions] += dmasked', 'dflat[positions] = dmasked', ['tests/test_distill.py'], 'DistillationTask: the head gradient overwrites the cosine gradient at masked positions'),
    Mutant('DS8', 'minibert/distill.py', 'dflat = backward(self.alphas["cos"] * weights["cos_loss"], cache)', 'dflat = backward(weights["cos_loss"], cache)', ['tests/test_distill.py'], 'DistillationTask: the cosine loss backpropagated without its weight a_cos'),
    Mutant('DS9', 'minibert/distill.py', 'self.teacher = teacher.eval()', 'self.teacher = teacher', ['tests/test_distill.py'], 'DistillationTask: the teacher keeps dropout on, its targets are noisy'),
    Mutant('DS10', 'minibert/cli_distill.py', 'alpha_mlm = distill.DEFAULT_ALPHAS["mlm"] if has_head else 0.0', 'alpha_mlm = distill.DEFAULT_ALPHAS["mlm"]', ['tests/test_distill.py'], 'minibert distill: a headless teacher trains the new masked-LM head by default'),
    Mutant('PM1', 'examples/pretraining_matters.py', '    if pretrained:\n        with warnings', '    if True:\n        with warnings', ['tests/test_pretraining_matters.py'], 'the random start loads the pretrained weights too'),
    Mutant('PM2', 'examples/pretraining_matters.py', '"steps": [0] + [r["step"] for r in evals]', '"steps": [r["step"] for r in evals]', ['tests/test_pretraining_matters.py'], 'the learning curve loses its untrained point'),
    Mutant('PM3', 'examples/pretraining_matters.py', 'math.ceil(steps * batch_size / len(train))', 'math.ceil(steps / len(train))', ['tests/test_pretraining_matters.py'], 'too few epochs: the runs stop before the step budget'),
    Mutant('PM4', 'examples/pretraining_matters.py', 'for folder in (path, os.path.join(path, "best_model")):', 'for folder in (path,):', ['tests/test_pretraining_matters.py'], 'a pretrain run folder is not looked into for its best_model/'),
    Mutant('SWF1', 'minibert/sweep.py', 'return ["--output", folder, "--no-progress"]', 'return ["--output", output, "--no-progress"]', ['tests/test_sweep.py'], 'every fine-tuning run writes into the sweep folder itself'),
    Mutant('SWF2', 'minibert/sweep.py', '            os.remove(os.path.join(folder, "metrics.jsonl"))          # the loop appends to it\n', '            pass\n', ['tests/test_sweep.py'], 'a restarted fine-tuning run appends to the records of its first try'),
    Mutant('SWF3', 'minibert/sweep.py', 'best = max(scored, key=lambda row: row[f"best_validation_{metric}"])', 'best = min(scored, key=lambda row: row[f"best_validation_{metric}"])', ['tests/test_sweep.py'], 'the best fine-tuning run is the one with the lowest accuracy'),
    Mutant('SWF4', 'minibert/sweep.py', '"finetune": {"lr": "--lr", "batch_size": "--batch-size", "warmup": "--warmup-ratio",', '"finetune": {"lr": "--lr", "batch_size": "--batch-size", "warmup": "--warmup",', ['tests/test_sweep.py'], 'the warm-up knob is spelt as pretraining spells it'),
    Mutant('CS1', 'minibert/cli_sweep.py', 'i += 1 if "=" in argv[i] else 1 + options[flag]', 'i += 1', ['tests/test_sweep.py'], 'the knob values are left in the fine-tuning command'),
    Mutant('CS2', 'minibert/cli_sweep.py', '    if settings["warmup"] >= 1:', '    if settings["warmup"] > 1.5:', ['tests/test_sweep.py'], 'a warm-up share of 1 or more reaches the fine-tuning runs'),
    Mutant('CS3', 'minibert/sweep.py', '    if not text.strip():\n', '    if False:\n', ['tests/test_sweep.py'], 'an empty knob list is not named'),
    Mutant('CS4', 'minibert/cli_sweep.py', '        if given:\n            raise', '        if False:\n            raise', ['tests/test_sweep.py'], 'a pretraining sweep silently ignores --task'),
    Mutant('SC1', 'minibert/sweep.py', 'ratio = (baseline["batch_size"] * baseline["max_seq_length"]) / (run["batch_size"] * run["max_seq_length"])', 'ratio = (run["batch_size"] * run["max_seq_length"]) / (baseline["batch_size"] * baseline["max_seq_length"])', ['tests/test_sweep.py'], 'a larger batch gets more steps, not fewer, under --same-compute'),
    Mutant('SC2', 'minibert/sweep.py', '            for flag, value in r.derived.items():\n                arguments += [flag, str(value)]\n', '', ['tests/test_sweep.py'], 'the scaled --steps never reach the runs'),
    Mutant('SC3', 'minibert/sweep.py', '"weight_decay": "--weight-decay", "max_seq_length": "--max-length"},', '"weight_decay": "--weight-decay", "max_seq_length": "--max-seq-length"},', ['tests/test_sweep.py'], 'the sequence-length knob is spelt as pretraining spells it in fine-tuning runs'),
    Mutant('SC4', 'minibert/sweep.py', '    if run["warmup"] >= 1:\n', '    if run["warmup"] >= 100:\n', ['tests/test_sweep.py'], 'a warm-up given in steps keeps its length when the steps shrink'),
    Mutant('SC6', 'minibert/sweep.py', '    if unigram_accuracy and accuracies and accuracies[-1] <= 1.1 * unigram_accuracy:', '    if unigram_accuracy and accuracies and accuracies[0] <= 1.1 * unigram_accuracy:', ['tests/test_sweep.py'], 'a run is judged stuck at the unigram level by its first validation'),
    Mutant('SC5', 'benchmarks/compare_recipes.py', 'args.max_seq_length or shape["max_seq_length"]', 'shape["max_seq_length"]', ['tests/test_roberta_recipe.py'], 'runs are scored at the first run\'s length whatever --max-seq-length says'),
    Mutant('RR1', 'minibert/data/pretraining.py', 'separator = [separator_id] if s == 0 and current else []', 'separator = [separator_id] if s == 0 else []', ['tests/test_roberta_recipe.py'], 'a document that starts a sequence gets a separator after [CLS]'),
    Mutant('RR2', 'minibert/data/pretraining.py', 'separator = [separator_id] if s == 0 and current else []', 'separator = []', ['tests/test_roberta_recipe.py'], 'documents run together with no separator between them'),
    Mutant('RR3', 'minibert/data/pretraining.py', 'if len(current) + len(separator) + len(sentence) <= capacity:', 'if len(current) + len(separator) + len(sentence) < capacity:', ['tests/test_roberta_recipe.py'], 'a sentence that exactly fills the sequence is pushed to the next one'),
    Mutant('RR4', 'minibert/data/pretraining.py', '                sentence = sentence[capacity:]', '                sentence = sentence[capacity + 1:]', ['tests/test_roberta_recipe.py'], 'a sentence longer than a sequence loses a token at each cut'),
    Mutant('RR5', 'minibert/data/pretraining.py', '    capacity = int(max_seq_length) - 2\n', '    capacity = int(max_seq_length) - 3\n', ['tests/test_roberta_recipe.py'], 'one position of every packed sequence is wasted'),
    Mutant('RR6', 'minibert/training.py', '        return {"mlm_loss": int((batch["labels"] != -100).sum())}', '        return {"mlm_loss": len(batch["input_ids"])}', ['tests/test_roberta_recipe.py'], 'micro-batches weighted by sequences instead of masked tokens: accumulation no longer equals one batch'),
    Mutant('RR7', 'minibert/training.py', '            masked += count\n            correct += int((to_numpy(logits)', '            masked += len(batch["input_ids"])\n            correct += int((to_numpy(logits)', ['tests/test_roberta_recipe.py', 'tests/test_training.py'], 'the masked-LM accuracy and loss divided by the sequences, not the masked tokens'),
    Mutant('RR8', 'minibert/pretrain.py', 'dupe_factor=None, adam_betas=(0.9, 0.98)', 'dupe_factor=None, adam_betas=(0.9, 0.999)', ['tests/test_roberta_recipe.py'], "the roberta recipe keeps BERT's beta2"),
    Mutant('RR9', 'minibert/pretrain.py', '        train = examples_to_arrays(create_packed_examples(train_ids, vocab, max_seq_length))', '        train = examples_to_arrays(create_packed_examples(train_ids, vocab, max_seq_length, masker=masker))', ['tests/test_roberta_recipe.py'], 'the packed training set masked once ahead of time (static masks)'),
    Mutant('RR10', 'minibert/cli_pretrain.py', '    if recipe == "roberta" and getattr(args, "dupe_factor", None) is not None:', '    if recipe == "roberta" and getattr(args, "dupe_factor", None) is None:', ['tests/test_roberta_recipe.py'], '--dupe-factor accepted with --recipe roberta'),
    Mutant('RR11', 'minibert/cli_pretrain.py', '        if getattr(args, option, None) is None:\n            setattr(args, option, job.RECIPES[recipe][key])', '        setattr(args, option, job.RECIPES[recipe][key])', ['tests/test_roberta_recipe.py'], "the recipe overwrites the user's --batch-size / --lr"),
    Mutant('RR12', 'minibert/cli_pretrain.py', '    model_class = BertForMaskedLM if args.recipe == "roberta" else BertForPreTraining', '    model_class = BertForPreTraining', ['tests/test_roberta_recipe.py'], 'the roberta recipe trains a model with an NSP head'),
    Mutant('RR13', 'minibert/data/pretraining.py', '    return {"input_ids": input_ids, "token_type_ids": np.zeros(max_seq_length, dtype=ID_DTYPE),', '    return {"input_ids": input_ids, "token_type_ids": attention_mask.copy(),', ['tests/test_roberta_recipe.py'], 'packed sequences marked as segment B'),
]


def mutated_source(mutant: Mutant, source: str) -> str:
    """``source`` with the mutant planted; ValueError if a replacement does not match exactly once."""
    for old, new in [(mutant.old, mutant.new), *mutant.also]:
        count = source.count(old)
        if count != 1:
            raise ValueError(f"{mutant.id}: {old!r} occurs {count} times in {mutant.file}, expected once")
        source = source.replace(old, new)
    return source


def _copy_tracked_files(destination: str) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    for name in listed:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(destination, name))


def _pytest(copy: str, tests: list) -> tuple[bool, str]:
    """Run pytest in the copy; (failed, the first failing test or the last line of output)."""
    env = dict(os.environ, PYTHONPATH=copy)
    # test_mutants.py checks that every mutation applies, which a planted one no longer does
    ignore = ["--ignore", os.path.join("tests", "test_mutants.py")]
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *ignore, *tests],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    lines = (done.stdout + done.stderr).strip().splitlines()
    first_failure = next((line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))), None)
    return done.returncode != 0, first_failure or (lines[-1] if lines else f"exit status {done.returncode}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Plant each mutant in a copy of the code and run its tests.")
    parser.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    known = {m.id: m for m in MUTANTS}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        parser.error(f"unknown mutant id(s): {', '.join(unknown)}")
    chosen = [known[i] for i in args.ids] if args.ids else MUTANTS
    if args.list:
        for m in chosen:
            print(f"{m.id:5s} {m.file:32s} {m.what}")
        return 0
    with tempfile.TemporaryDirectory(prefix="minibert-mutants-") as copy:
        _copy_tracked_files(copy)
        where = subprocess.run([sys.executable, "-c", "import minibert; print(minibert.__file__)"], cwd=copy,
                               env=dict(os.environ, PYTHONPATH=copy), capture_output=True, text=True).stdout
        if not where.startswith(copy):
            raise SystemExit(f"the copy's minibert is not the one imported ({where.strip()}); not running")
        survivors = []
        for m in chosen:
            path = os.path.join(copy, m.file)
            with open(path, encoding="utf-8") as f:
                original = f.read()
            start = time.perf_counter()
            with open(path, "w", encoding="utf-8") as f:
                f.write(mutated_source(m, original))
            try:
                caught, by = _pytest(copy, m.tests)
                if not caught:                                     # maybe another test file notices
                    caught, by = _pytest(copy, [])
            finally:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(original)
            verdict = "caught" if caught else ("equivalent" if m.equivalent else "SURVIVED")
            if verdict == "SURVIVED":
                survivors.append(m.id)
            print(f"{m.id:5s} {verdict:10s} {time.perf_counter() - start:5.0f} s  {m.what}  "
                  f"[{by if caught else m.equivalent or 'no test failed'}]", flush=True)
    print(f"\n{len(chosen)} mutants: {len(chosen) - len(survivors)} caught or equivalent, "
          f"{len(survivors)} survived{': ' + ' '.join(survivors) if survivors else ''}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
