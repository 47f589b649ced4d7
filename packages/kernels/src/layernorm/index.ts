/** LayerNorm over the last dimension, as torch.nn.LayerNorm (biased variance, two-pass, f32 statistics). */
import type { DType, Tensor } from "@ldm/tensor";
import { assertDType } from "../common/wgsl.ts";
import { type RowStrategy, runRowKernel } from "../rowwise/kernel.ts";

const FLOATS: readonly DType[] = ["f32", "f16"];

export interface LayerNormOptions {
  /** 1e-5 in CLIP and the SpatialTransformer (torch's default). */
  eps: number;
  /** Overrides the adapter-based choice of invocations per row (tests, tuning). */
  strategy?: RowStrategy;
}

/**
 * (x − mean) / √(var + eps) · gamma + beta over the last dimension D of x [..., D]; gamma and beta are [D].
 */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, options: LayerNormOptions): Tensor {
  const { eps, strategy } = options;
  const d = x.shape.at(-1);
  if (d === undefined) throw new Error(`layerNorm: x ${x} has no dimension to normalise`);
  assertDType("layerNorm", "x", x, FLOATS);
  for (const [name, t] of [
    ["gamma", gamma],
    ["beta", beta],
  ] as const) {
    assertDType("layerNorm", name, t, FLOATS);
    if (t.shape.length !== 1 || t.size !== d)
      throw new Error(`layerNorm: ${name} ${t} must be [${d}] (the last dimension of x ${x})`);
  }
  if (!(eps >= 0)) throw new Error(`layerNorm: eps must be a non-negative number, got ${eps}`);
  return runRowKernel({
    op: "layerNorm",
    x,
    extras: { gamma, beta },
    reductions: [
      { kind: "sum", term: "v", result: "total * p.invLen" },
      { kind: "sum", term: "(v - r1) * (v - r1)", result: "inverseSqrt(total * p.invLen + p.eps)" },
    ],
    write: "(v - r1) * r2 * load_gamma(j) + load_beta(j)",
    params: { invLen: 1 / d, eps },
    strategy,
  });
}
