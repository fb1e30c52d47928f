"""Pictures people would rather look at than read: loss curves (and attention maps).

Every function saves a PNG with matplotlib and returns its path.
"""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot, drawing to files only (imported when first needed: it takes a while)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(history: list, path: str, *, train_label: str = "training loss",
                     best_step: int | None = None, best_label: str = "best validation loss",
                     early_stop_step: int | None = None) -> str | None:
    """Training and validation loss against the optimizer step.

    ``history`` holds records ``{"step", "split": "train" | "eval", "loss"}``. The sweet spot
    between under- and overfitting is where the validation curve is lowest (``best_step``,
    default: the lowest validation loss); past it the training loss keeps falling while the
    validation loss rises. ``early_stop_step`` marks where early stopping ended the run.
    """
    train = [(r["step"], r["loss"]) for r in history if r.get("split") == "train"]
    evals = [(r["step"], r["loss"]) for r in history if r.get("split") == "eval"]
    if not train:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(*zip(*train), label=train_label, lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss", lw=1.5)
        if best_step is None:
            best_step = min(evals, key=lambda e: e[1])[0]
        ax.axvline(best_step, color="green", ls="--", lw=1, label=best_label)
    if early_stop_step is not None:
        ax.axvline(early_stop_step, color="red", ls=":", lw=1.2, label="early stop")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_noise_scale(history: list, path: str) -> str | None:
    """The gradient noise scale (records' ``noise_scale``) against the optimizer step, log axis."""
    points = [(r["step"], r["noise_scale"]) for r in history
              if r.get("split") == "train" and r.get("noise_scale") and r["noise_scale"] > 0]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(*zip(*points), lw=1.4)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("gradient noise scale (sequences)")
    ax.set_title("B_noise = tr(Σ) / |G|²: batches far above it help little")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
