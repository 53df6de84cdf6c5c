# %% [markdown]
# # Mult-VAE on MovieLens
#
# Recommend movies from implicit feedback with a variational autoencoder (Liang et al. 2018).
# Ratings of 4 or more are clicks, and 100 validation and 100 test users are held out. The model
# never sees the held-out users in training: it folds in 80 % of their clicks and ranks the rest.
#
# Run top to bottom: `python examples/multvae_movielens.py` (about a minute on 2 CPU cores; set
# `MULTVAE_SMOKE=1` for a few-second smoke run: 3 epochs on the movies rated at least 10 times).

# %%
import os
import tempfile
import warnings

import arviz as az
import matplotlib
import numpy as np

from bayeslr.datasets import binarize, load_movielens_small, strong_generalization_split
from bayeslr.metrics import ndcg_at_k, recall_at_k
from bayeslr.models import EASE, MultVAE
from bayeslr.models.multvae import popularity_scores

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOKE = os.environ.get("MULTVAE_SMOKE") == "1"
EPOCHS = 3 if SMOKE else 60

ratings = load_movielens_small()
if SMOKE:
    n_ratings = ratings["movieId"].value_counts()
    ratings = ratings[ratings["movieId"].isin(n_ratings.index[n_ratings >= 10])]
clicks = binarize(ratings)
split = strong_generalization_split(clicks, n_val=100, n_test=100, seed=1)
print(f"{clicks.matrix.shape[0]} users x {clicks.matrix.shape[1]} movies, "
      f"{clicks.matrix.nnz} clicks; training matrix {split.train.shape}")  # fmt: skip

# %% [markdown]
# ## Fit
# The β-ELBO with KL annealing. β rises linearly; the epoch with the best validation NDCG@100
# is kept.

# %%
post = MultVAE(epochs=EPOCHS, batch_size=100, anneal_cap=0.2, progress_bar=False).fit(
    split.train, validation=(split.val_in, split.val_out)
)
best = post.extra["val_ndcg"].max()
print(f"best epoch {post.extra['best_epoch'] + 1}, validation NDCG@100 {best:.4f}, "
      f"{post.extra['users_per_second']:.0f} users/s")  # fmt: skip

# %% [markdown]
# ## Test users, beside two baselines

# %%
def report(name, scores):
    kw = dict(exclude=split.test_in)
    print(f"{name:11s} NDCG@100 {ndcg_at_k(scores, split.test_out, 100, **kw):.4f}  "
          f"Recall@20 {recall_at_k(scores, split.test_out, 20, **kw):.4f}  "
          f"Recall@50 {recall_at_k(scores, split.test_out, 50, **kw):.4f}")  # fmt: skip


report("Mult-VAE", post.scores(split.test_in))
report("EASE", EASE(200.0).fit(split.train).predict(split.test_in))
report("popularity", popularity_scores(split.train, split.test_in.shape[0]))

# %% [markdown]
# ## Recommend for one held-out user
# Items the user already clicked are never recommended.

# %%
top = post.recommend(split.test_in[:1], k=5)[0]
print("user", split.test_users[0], "clicked", split.test_in[0].nnz, "movies; top-5 new ones:",
      split.item_ids[top].tolist())  # fmt: skip

# %% [markdown]
# ## NDCG vs epoch, and the annealed β

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ep = np.arange(1, len(post.extra["val_ndcg"]) + 1)
ax.plot(ep, post.extra["val_ndcg"], label="validation NDCG@100")
ax.set(xlabel="epoch", ylabel="NDCG@100")
ax2 = ax.twinx()
ax2.plot(ep, post.extra["beta"], "k--", lw=1, label="β")
ax2.set_ylabel("β")
ax.legend(loc="lower right")
path = os.path.join(tempfile.gettempdir(), "multvae_ndcg.png")
fig.savefig(path, dpi=120, bbox_inches="tight")
print("NDCG-vs-epoch plot written to", path)

# %% [markdown]
# ## ArviZ: the latent codes of the validation users, and LOO across users

# %%
idata = post.to_arviz()
print(idata.posterior["z"].sizes)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # Pareto k of a few users
    print(az.loo(idata))
