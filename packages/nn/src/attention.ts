import { attention } from "@ldm/kernels";
import type { Tensor } from "@ldm/tensor";
import { Linear } from "./linear.ts";
import type { VarBuilder } from "./var-builder.ts";

export interface CrossAttentionConfig {
  queryDim: number;
  /** Width of the context; the query's width when absent (self-attention). */
  contextDim?: number;
  heads: number;
  dimHead: number;
  /**
   * Where the output projection is stored: "to_out.0" (CompVis's CrossAttention, whose to_out is a Sequential
   * with a Dropout; the default) or "to_out" (x-transformers' Attention, a plain Linear).
   */
  outputName?: "to_out.0" | "to_out";
}

/** A context's keys and values, [B, L, heads · dimHead] each (CrossAttention.projectContext). */
export interface ContextKeysValues {
  k: Tensor;
  v: Tensor;
}

/**
 * CompVis `ldm.modules.attention.CrossAttention`: to_q/to_k/to_v without bias, to_out.0 with bias,
 * softmax(q·kᵀ / √dim_head)·v per head. Attends to `context` when given, else to x itself.
 */
export class CrossAttention {
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  readonly to_out: Linear;

  constructor(
    vb: VarBuilder,
    readonly cfg: CrossAttentionConfig,
  ) {
    const inner = cfg.heads * cfg.dimHead;
    const contextDim = cfg.contextDim ?? cfg.queryDim;
    this.to_q = new Linear(vb.pp("to_q"), { inFeatures: cfg.queryDim, outFeatures: inner, bias: false });
    this.to_k = new Linear(vb.pp("to_k"), { inFeatures: contextDim, outFeatures: inner, bias: false });
    this.to_v = new Linear(vb.pp("to_v"), { inFeatures: contextDim, outFeatures: inner, bias: false });
    const out = cfg.outputName === "to_out" ? vb.pp("to_out") : vb.pp("to_out").pp(0);
    this.to_out = new Linear(out, { inFeatures: inner, outFeatures: cfg.queryDim });
  }

  /**
   * The keys and values of `context` [B, L, contextDim]: what forward computes from it, for a caller that attends
   * to one context many times (a sampling run's steps) to compute once and pass as `kv`.
   */
  projectContext(context: Tensor): ContextKeysValues {
    return { k: this.to_k.forward(context), v: this.to_v.forward(context) };
  }

  /**
   * x [B, N, queryDim], context [B, L, contextDim] (or its projections `kv`) → [B, N, queryDim] (+ residual,
   * fused into to_out).
   */
  forward(x: Tensor, options: { context?: Tensor; kv?: ContextKeysValues; residual?: Tensor } = {}): Tensor {
    if (options.kv && options.context) throw new Error("CrossAttention: pass the context or its kv, not both");
    return x.device.tidy(() => {
      const { k, v } = options.kv ?? this.projectContext(options.context ?? x);
      const q = this.to_q.forward(x);
      const heads = attention(q, k, v, { heads: this.cfg.heads });
      return this.to_out.forward(heads, { residual: options.residual });
    });
  }
}
