import { linearGeglu } from "@ldm/kernels";
import type { Tensor } from "@ldm/tensor";
import { Linear } from "./linear.ts";
import type { VarBuilder } from "./var-builder.ts";

/**
 * CompVis GEGLU: proj to 2·dimOut, then value · gelu(gate) with the value in the first half, in one GEMM whose
 * epilogue gates (the 2·dimOut-wide projection is never stored).
 */
export class GEGLU {
  readonly proj: Linear;

  constructor(vb: VarBuilder, cfg: { dimIn: number; dimOut: number }) {
    this.proj = new Linear(vb.pp("proj"), { inFeatures: cfg.dimIn, outFeatures: cfg.dimOut * 2 });
  }

  forward(x: Tensor): Tensor {
    return linearGeglu(x, this.proj.weight, this.proj.bias);
  }
}

export interface FeedForwardConfig {
  dim: number;
  /** Hidden width = dim · mult (4 in every SD transformer). */
  mult?: number;
}

/** CompVis `FeedForward(dim, glu=True)`: net.0 = GEGLU, net.1 = dropout (identity here), net.2 = Linear. */
export class FeedForward {
  readonly project_in: GEGLU;
  readonly project_out: Linear;

  constructor(vb: VarBuilder, cfg: FeedForwardConfig) {
    const inner = cfg.dim * (cfg.mult ?? 4);
    this.project_in = new GEGLU(vb.pp("net").pp(0), { dimIn: cfg.dim, dimOut: inner });
    this.project_out = new Linear(vb.pp("net").pp(2), { inFeatures: inner, outFeatures: cfg.dim });
  }

  forward(x: Tensor, options: { residual?: Tensor } = {}): Tensor {
    return x.device.tidy(() => this.project_out.forward(this.project_in.forward(x), options));
  }
}
