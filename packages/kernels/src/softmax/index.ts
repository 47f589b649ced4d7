/** Softmax over the last dimension, with an optional scale on the logits and a causal mask. */
import type { DType, Tensor } from "@ldm/tensor";
import { assertDType } from "../common/wgsl.ts";
import { type RowStrategy, runRowKernel } from "../rowwise/kernel.ts";

export interface SoftmaxOptions {
  /** Multiplies the logits first: softmax(scale · x). Default 1. */
  scale?: number;
  /**
   * x is [..., Nq, Nk] scores: position (i, j) is masked (probability 0) when j > i, as CLIP's
   * triangular mask (and torch's is_causal, top-left aligned).
   */
  causal?: boolean;
  /** Overrides the adapter-based choice of invocations per row (tests, tuning). */
  strategy?: RowStrategy;
}

const FLOATS: readonly DType[] = ["f32", "f16"];

export function softmax(x: Tensor, options: SoftmaxOptions = {}): Tensor {
  const { scale = 1, causal = false, strategy } = options;
  assertDType("softmax", "x", x, FLOATS);
  if (x.shape.length === 0) throw new Error("softmax: x is a scalar; it needs a last dimension");
  if (causal && x.shape.length < 2) throw new Error(`softmax: a causal mask needs x [..., Nq, Nk], got ${x}`);
  const logit = "v * p.scale";
  const keep = causal ? "col <= VU(row % p.queries)" : "";
  const masked = (value: string, fill: string) => (causal ? `select(V(${fill}), ${value}, ${keep})` : value);
  return runRowKernel({
    op: causal ? "softmax-causal" : "softmax",
    x,
    reductions: [
      { kind: "max", term: masked(logit, "-3.0e38"), result: "total" },
      { kind: "sum", term: masked(`exp(${logit} - r1)`, "0.0"), result: "1.0 / total" },
    ],
    write: masked(`exp(${logit} - r1) * r2`, "0.0"),
    params: { scale },
    intParams: causal ? { queries: x.shape.at(-2)! } : {},
    strategy,
  });
}
