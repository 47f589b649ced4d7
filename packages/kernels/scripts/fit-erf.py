"""Fits the erf approximation used by the GELU kernel (packages/kernels/src/elementwise/erf.ts).

Run with Debian's python3 (numpy): /usr/bin/python3 packages/kernels/scripts/fit-erf.py
  |x| < 1:      erf(x) = x * P(x^2)                 (P: degree 6, least squares on Chebyshev nodes)
  1 <= |x| <= 4: erf(x) = 1 - exp(-x^2) * Q(x - 2.5)  (Q ~ erfc(x) e^{x^2}: degree 11)
  |x| > 4:       erf(x) = 1 in float32 (1 - erf(4) = 1.5e-8, under half an ulp of 1)
Prints the coefficients (highest degree first) and the worst absolute error of a float32 Horner evaluation.
"""
import math

import numpy as np

erf = np.vectorize(math.erf)
erfc = np.vectorize(math.erfc)


def horner32(coef, t):
    acc = np.zeros_like(t, dtype=np.float32)
    for c in coef.astype(np.float32):
        acc = (acc * t + c).astype(np.float32)
    return acc


def chebyshev_nodes(lo, hi, n=3000):
    return (np.cos(np.linspace(0, np.pi, n)) + 1) / 2 * (hi - lo) + lo


t = chebyshev_nodes(0.0, 1.0)
x = np.sqrt(t)
p = np.polyfit(t, np.where(x > 0, erf(x) / np.where(x > 0, x, 1), 2 / np.sqrt(np.pi)), 6)
x = chebyshev_nodes(1.0, 4.0)
q = np.polyfit(x - 2.5, erfc(x) * np.exp(x * x), 11)

xs = np.linspace(0, 1, 20001).astype(np.float32)
err_small = np.max(np.abs(xs * horner32(p, xs * xs) - erf(xs.astype(np.float64))))
xs = np.linspace(1, 4, 20001).astype(np.float32)
approx = np.float32(1) - np.exp(-(xs * xs)).astype(np.float32) * horner32(q, xs - np.float32(2.5))
err_large = np.max(np.abs(approx - erf(xs.astype(np.float64))))
print("P =", ", ".join(repr(float(np.float32(c))) for c in p))
print("Q =", ", ".join(repr(float(np.float32(c))) for c in q))
print(f"max |error| (float32 evaluation): {err_small:.3g} on [0, 1), {err_large:.3g} on [1, 4]")
