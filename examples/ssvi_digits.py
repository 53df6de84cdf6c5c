# %% [markdown]
# # SSVI: a sparse Bayesian MLP on handwritten digits
#
# Train a Bayesian MLP (64-128-128-10) with sparse subspace variational inference at 10 %
# density, beside dense mean-field VI and a static random mask at the same density. Then look
# at accuracy, calibration (a reliability diagram) and the posterior of the active weights in
# ArviZ.
#
# Run top to bottom: `python examples/ssvi_digits.py` (about half a minute on 2 CPU cores; set
# `SSVI_SMOKE=1` for a few-second smoke run).

# %%
import os
import tempfile

import arviz as az
import matplotlib
import numpy as np

from bayeslr.datasets import load_bnn_dataset
from bayeslr.metrics import (
    accuracy,
    categorical_nll,
    debiased_calibration_error,
    expected_calibration_error,
)
from bayeslr.models import SSVI

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOKE = os.environ.get("SSVI_SMOKE") == "1"
EPOCHS = 5 if SMOKE else 100
data = load_bnn_dataset("digits")
print("train", data.x_train.shape, "test", data.x_test.shape)

# %% [markdown]
# ## Fit three posteriors
# The same network, optimizer and prior. Only the support differs: all weights (dense VI),
# 10 % updated during training (SSVI), or 10 % fixed at random (static mask).

# %%
fits = {
    "dense VI": SSVI(1.0, epochs=EPOCHS, progress_bar=False),
    "SSVI 10 %": SSVI(0.1, epochs=EPOCHS, progress_bar=False),
    "static mask 10 %": SSVI(0.1, epochs=EPOCHS, mask_update="static", progress_bar=False),
}
posts, preds = {}, {}
for name, solver in fits.items():
    posts[name] = solver.fit(data.x_train, data.y_train)
    preds[name] = posts[name].predict_summary(data.x_test, num_samples=50)
    p = preds[name]["probs"]
    print(f"{name:17s} density {posts[name].density:.3f}  "
          f"accuracy {accuracy(p, data.y_test):.3f}  NLL {categorical_nll(p, data.y_test):.3f}  "
          f"ECE {expected_calibration_error(p, data.y_test):.3f}  "
          f"debiased L2 CE {debiased_calibration_error(p, data.y_test):.3f}  "
          f"train GFLOPs {posts[name].extra['flops']['total'] / 1e9:.2f}")  # fmt: skip

# %% [markdown]
# ## The support moved, its size did not
# `support_sizes` is the active count per layer after every step. It is constant, while the
# active set itself changed.

# %%
post = posts["SSVI 10 %"]
sizes = post.extra["support_sizes"]
print("active weights per layer:", post.extra["active_counts"],
      "| constant over all steps:", bool(np.all(sizes == sizes[0])))  # fmt: skip
for i, (m0, m) in enumerate(zip(post.extra["initial_masks"], post.masks, strict=True)):
    print(f"layer {i}: {np.mean(m0[m]):.0%} of the final support was in the initial random one")

# %% [markdown]
# ## Reliability diagram
# Confidence of the top class against its accuracy, in 10 equal-width bins. A calibrated model
# lies on the diagonal.

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
edges = np.linspace(0, 1, 11)
for name, pred in preds.items():
    conf = pred["probs"].max(1)
    correct = pred["label"] == data.y_test
    idx = np.clip(np.digitize(conf, edges) - 1, 0, 9)
    keep = np.bincount(idx, minlength=10) > 0
    acc = np.bincount(idx, correct, minlength=10)[keep] / np.bincount(idx, minlength=10)[keep]
    mid = (np.bincount(idx, conf, minlength=10)[keep] / np.bincount(idx, minlength=10)[keep])
    ax.plot(mid, acc, "o-", label=name)
ax.plot([0, 1], [0, 1], "k--", lw=1)
ax.set(xlabel="confidence", ylabel="accuracy", title="digits, held-out")
ax.legend()
path = os.path.join(tempfile.gettempdir(), "ssvi_reliability.png")
fig.savefig(path, dpi=120, bbox_inches="tight")
print("reliability diagram written to", path)

# %% [markdown]
# ## The posterior in ArviZ
# `to_arviz()` holds draws of each layer's active weights (`w_<l>`, dims `active_<l>`) and the
# pointwise log-likelihood of the training set (for PSIS-LOO); `score` is the held-out log
# predictive density of the test set.

# %%
idata = post.to_arviz()
print(az.summary(idata, var_names=["w_2"]).head())
print(f"held-out log predictive density: {post.score(data.x_test, data.y_test):.1f} nats "
      f"over {len(data.y_test)} test digits")  # fmt: skip
pred = preds["SSVI 10 %"]
right = pred["label"] == data.y_test
print(f"mean predictive entropy: {pred['entropy'][right].mean():.3f} nats on correct "
      f"predictions, {pred['entropy'][~right].mean():.3f} on wrong ones")  # fmt: skip
