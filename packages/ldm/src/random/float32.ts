// Single-precision arithmetic in JavaScript doubles. A double holds the exact product of two floats and rounds
// sums, products, quotients and square roots of floats so that a second rounding to float is still exact
// (53 ≥ 2·24 + 2), so `fround(a op b)` is IEEE float arithmetic. Fused multiply-add needs more care: see fma32.

export const f32 = Math.fround;

const scratchF32 = new Float32Array(1);
const scratchBits = new Uint32Array(scratchF32.buffer);

/** The float adjacent to the float `x` in the direction of `towards`. */
function adjacentFloat(x: number, towards: number): number {
  scratchF32[0] = x;
  const up = towards > x;
  if (x === 0) scratchBits[0] = up ? 1 : 0x80000001;
  else if (x > 0 === up) scratchBits[0]++;
  else scratchBits[0]--;
  return scratchF32[0];
}

/**
 * IEEE single-precision fused multiply-add, a·b + c rounded once (what vfmadd…ps computes) for floats a, b, c.
 * The product is exact in a double; the double sum may be rounded, and that rounding only matters when it lands
 * exactly on the midpoint between two floats, where the sign of the lost remainder decides.
 */
export function fma32(a: number, b: number, c: number): number {
  const product = a * b;
  const sum = product + c;
  const rounded = f32(sum);
  if (rounded === sum || !Number.isFinite(sum)) return rounded;
  const sumMinusC = sum - product;
  const remainder = product - (sum - sumMinusC) + (c - sumMinusC);
  if (remainder === 0) return rounded;
  const other = adjacentFloat(rounded, sum);
  if ((rounded + other) / 2 !== sum) return rounded;
  // Ties are broken by the remainder: the exact value lies on its side of the midpoint.
  const exactAbove = remainder > 0;
  return rounded > sum === exactAbove ? rounded : other;
}
