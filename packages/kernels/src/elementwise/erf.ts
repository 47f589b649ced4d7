/**
 * erf in WGSL (which has none), for the exact GELU. Written over the alias `V` (f32 or vec4<f32>).
 * Coefficients from packages/kernels/scripts/fit-erf.py (least squares in float64); its float32 evaluation
 * stays within 1.4e-7 of erf, about one ulp of the result.
 */
const SMALL = [
  7.882501813583076e-5, -0.0008018860244192183, 0.0051893130876123905, -0.02685433067381382, 0.11283597350120544,
  -0.3761262595653534, 1.1283791065216064,
];
const LARGE = [
  -4.269437283710431e-7, 1.6718429378670407e-6, -3.7443769542733207e-6, 1.4353454389492981e-5, -5.9529640566324815e-5,
  0.00021297244529705495, -0.0007331466185860336, 0.0024659819900989532, -0.008001696318387985, 0.024938203394412994,
  -0.07434733957052231, 0.21080635488033295,
];

function horner(coefficients: readonly number[], variable: string): string {
  return coefficients.reduce((acc, c) => (acc ? `(${acc}) * ${variable} + V(${c})` : `V(${c})`), "");
}

export const ERF_WGSL = `
fn erf_approx(x: V) -> V {
  let ax = abs(x);
  let small = ax * (${horner(SMALL, "(ax * ax)")});
  // 1 - erf(4) is under half an ulp of 1 in float32: clamping there changes nothing.
  let xc = min(ax, V(4.0));
  let large = V(1.0) - exp(-xc * xc) * (${horner(LARGE, "(xc - V(2.5))")});
  return sign(x) * select(large, small, ax < V(1.0));
}
fn gelu_erf(x: V) -> V {
  return 0.5 * x * (V(1.0) + erf_approx(x * 0.7071067811865476));
}
`;
