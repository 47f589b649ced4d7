import { f32, fma32 } from "./float32.ts";

// PyTorch's AVX2 normal kernel computes log, sin and cos with the Cephes-derived polynomials of avx_mathfun.h
// (J. Pommier's sse_mathfun, AVX port by G. Garberoglio) in float32, not with libm. To reproduce its bits we
// evaluate the same polynomials in the same order. x86 Linux builds are compiled by GCC with -mfma and GCC's
// default -ffp-contract=fast, which fuses a multiplication into the addition that consumes it whenever that
// addition is its only use; the fma32 calls below mark exactly those places (verified bit for bit against
// torch 1.13 dumps, see test/random.test.ts). Upstream's decimal constants are written here with the digits a
// double keeps; each rounds to the same float.

const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f32);
const LOG_Q1 = f32(-2.1219444e-4);
const LOG_Q2 = f32(0.693359375);
const SQRT_HALF = f32(Math.SQRT1_2);
const MIN_NORMAL = 2 ** -126;

const scratchF32 = new Float32Array(1);
const scratchBits = new Int32Array(scratchF32.buffer);

/** Natural log of a positive float as log256_ps computes it (NaN for x ≤ 0). */
export function avxLog(input: number): number {
  if (!(input > 0)) return Number.NaN;
  scratchF32[0] = Math.max(input, MIN_NORMAL);
  const bits = scratchBits[0];
  let exponent = f32((bits >>> 23) - 0x7f + 1);
  // Mantissa as a float in [0.5, 1).
  scratchBits[0] = (bits & ~0x7f800000) | 0x3f000000;
  let x = scratchF32[0];
  if (x < SQRT_HALF) {
    exponent = f32(exponent - 1);
    x = f32(f32(x - 1) + x);
  } else {
    x = f32(x - 1);
  }
  const z = f32(x * x);
  let y = LOG_P[0];
  for (let i = 1; i < LOG_P.length; i++) y = fma32(y, x, LOG_P[i]);
  y = f32(y * x);
  y = fma32(y, z, f32(exponent * LOG_Q1));
  y = f32(y - f32(z * 0.5));
  return fma32(exponent, LOG_Q2, f32(x + y));
}

const FOUR_OVER_PI = f32(1.27323954473516);
const MINUS_DP1 = f32(-0.78515625);
const MINUS_DP2 = f32(-2.418756484985352e-4);
const MINUS_DP3 = f32(-3.774894977445941e-8);
const SIN_P = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COS_P = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);

/** [sin x, cos x] of a float as sincos256_ps computes them (valid for |x| < 8192, as upstream). */
export function avxSinCos(input: number): [number, number] {
  let x = Math.abs(input);
  // j = (trunc(|x|·4/π) + 1) & ~1: the even octant index.
  const octant = (Math.trunc(f32(x * FOUR_OVER_PI)) + 1) & ~1;
  const y = octant;
  x = fma32(y, MINUS_DP1, x);
  x = fma32(y, MINUS_DP2, x);
  x = fma32(y, MINUS_DP3, x);
  const z = f32(x * x);

  let cosPoly = fma32(COS_P[0], z, COS_P[1]);
  cosPoly = fma32(cosPoly, z, COS_P[2]);
  cosPoly = f32(cosPoly * z);
  cosPoly = fma32(cosPoly, z, -f32(z * 0.5));
  cosPoly = f32(cosPoly + 1);

  let sinPoly = fma32(SIN_P[0], z, SIN_P[1]);
  sinPoly = fma32(sinPoly, z, SIN_P[2]);
  sinPoly = f32(sinPoly * z);
  sinPoly = fma32(sinPoly, x, x);

  const useSinPolyForSin = (octant & 2) === 0;
  let sin = useSinPolyForSin ? sinPoly : cosPoly;
  let cos = useSinPolyForSin ? cosPoly : sinPoly;
  if (((octant & 4) !== 0) !== input < 0) sin = -sin;
  if (((octant - 2) & 4) === 0) cos = -cos;
  return [sin, cos];
}
