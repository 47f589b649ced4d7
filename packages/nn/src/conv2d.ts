import { conv1x1FromTokens, conv1x1ToTokens, conv2d } from "@ldm/kernels";
import type { Tensor } from "@ldm/tensor";
import type { Epilogue } from "./linear.ts";
import type { GroupNorm } from "./norm.ts";
import type { VarBuilder } from "./var-builder.ts";

export interface Conv2dConfig {
  inChannels: number;
  outChannels: number;
  kernelSize: number;
  stride?: number;
  /** Zero padding on every side (torch's `padding`). */
  padding?: number;
}

/**
 * What x goes through before the convolution, in upstream's order: `norm` (with SiLU and the timestep `shift`
 * as GroupNorm.forward takes them), then nearest ×2 upsampling. conv2d reads x through them where its kernel
 * can (the Winograd path), so neither the normalised nor the upsampled tensor is stored; elsewhere it runs
 * them first.
 */
export interface ConvPrelude {
  norm?: GroupNorm;
  silu?: boolean;
  shift?: Tensor;
  upsample2x?: boolean;
  /** x may be overwritten (conv2d's ConvInput.inPlace). */
  inPlace?: boolean;
}

/** torch.nn.Conv2d on NCHW, weight [out, in, k, k] and a bias. */
export class Conv2d {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(
    vb: VarBuilder,
    readonly cfg: Conv2dConfig,
  ) {
    const k = cfg.kernelSize;
    this.weight = vb.get("weight", [cfg.outChannels, cfg.inChannels, k, k]);
    this.bias = vb.get("bias", [cfg.outChannels]);
  }

  /**
   * `padding` overrides the configured symmetric padding, as [top, bottom, left, right]; `input` is applied to
   * x first (ConvPrelude).
   */
  forward(
    x: Tensor,
    epilogue: Epilogue & { padding?: readonly [number, number, number, number]; input?: ConvPrelude } = {},
  ): Tensor {
    const p = this.cfg.padding ?? 0;
    const { padding = [p, p, p, p], input = {}, ...fused } = epilogue;
    const { norm, silu, shift, upsample2x, inPlace } = input;
    if (!norm && (silu || shift)) throw new Error("Conv2d.forward: input.silu and input.shift need input.norm");
    const groupNorm = norm && {
      gamma: norm.weight,
      beta: norm.bias,
      groups: norm.cfg.groups,
      eps: norm.cfg.eps,
      silu,
      shift,
    };
    const stride = this.cfg.stride ?? 1;
    return conv2d(x, this.weight, {
      bias: this.bias,
      stride,
      padding,
      input: { groupNorm, upsample2x, inPlace },
      ...fused,
    });
  }

  /** A 1×1 convolution's output as tokens: `rearrange(forward(x), "b c h w -> b (h w) c")` in one kernel. */
  forwardToTokens(x: Tensor): Tensor {
    this.assertPointwise("forwardToTokens");
    return conv1x1ToTokens(x, this.weight, { bias: this.bias });
  }

  /**
   * A 1×1 convolution of tokens [B, H·W, C]: `forward(rearrange(tokens, "b (h w) c -> b c h w"))` + residual,
   * in one kernel.
   */
  forwardFromTokens(tokens: Tensor, size: readonly [number, number], epilogue: { residual?: Tensor } = {}): Tensor {
    this.assertPointwise("forwardFromTokens");
    return conv1x1FromTokens(tokens, this.weight, size, { bias: this.bias, residual: epilogue.residual });
  }

  /** The token forms compute a plain 1×1 product: a stride or padding would be silently dropped. */
  private assertPointwise(method: string): void {
    const { kernelSize, stride = 1, padding = 0 } = this.cfg;
    if (kernelSize !== 1 || stride !== 1 || padding !== 0) {
      throw new Error(
        `Conv2d.${method} needs a 1×1 convolution with stride 1 and no padding (kernel ${kernelSize}, stride ${stride}, padding ${padding})`,
      );
    }
  }
}
