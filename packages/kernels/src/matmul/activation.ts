/**
 * Activations fused into GEMM epilogues (matmul, conv2d), as WGSL over the alias `V` and as float64
 * references. Same formulas as the standalone elementwise ops.
 */
import { ERF_WGSL } from "../elementwise/erf.ts";
import { geluRef, geluTanhRef, quickGeluRef, siluRef } from "../elementwise/reference.ts";

export type Activation = "none" | "silu" | "gelu" | "gelu_tanh" | "quick_gelu";

export const ACTIVATIONS: readonly Activation[] = ["none", "silu", "gelu", "gelu_tanh", "quick_gelu"];

/** WGSL: `fn activate(x: V) -> V`, plus whatever it calls. */
export function activationWgsl(activation: Activation): string {
  switch (activation) {
    case "none":
      return "fn activate(x: V) -> V { return x; }";
    case "silu":
      return "fn activate(x: V) -> V { return x / (V(1.0) + exp(-x)); }";
    case "gelu":
      return `${ERF_WGSL}\nfn activate(x: V) -> V { return gelu_erf(x); }`;
    case "gelu_tanh":
      // tanh of |u| ≥ 15 is ±1 in f32; the clamp keeps an exp-based tanh from computing inf/inf.
      return "fn activate(x: V) -> V { return 0.5 * x * (V(1.0) + tanh(clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), V(-15.0), V(15.0)))); }";
    case "quick_gelu":
      return "fn activate(x: V) -> V { return x / (V(1.0) + exp(-1.702 * x)); }";
  }
}

export function activationRef(activation: Activation): (x: number) => number {
  switch (activation) {
    case "none":
      return (x) => x;
    case "silu":
      return siluRef;
    case "gelu":
      return geluRef;
    case "gelu_tanh":
      return geluTanhRef;
    case "quick_gelu":
      return quickGeluRef;
  }
}

export function assertActivation(op: string, activation: string): asserts activation is Activation {
  if (!(ACTIVATIONS as readonly string[]).includes(activation)) {
    throw new Error(`${op}: unknown activation '${activation}'; expected one of ${ACTIVATIONS.join(", ")}`);
  }
}
