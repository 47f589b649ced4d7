/**
 * 1×1 convolutions between the image layout [B, C, H, W] and the token layout [B, H·W, C]: a SpatialTransformer's
 * proj_in and proj_out (CompVis attention.py: `rearrange(proj_in(x), "b c h w -> b (h w) c")` and
 * `proj_out(rearrange(x, "b (h w) c -> b c h w"))`), each as one GEMM that reads or writes the other layout
 * directly instead of a convolution and a permute. Same products summed over Cin in the same order, so the same
 * bits as the two-step version (tested), a third of the memory traffic, one dispatch instead of two (times:
 * benchmarks/RESULTS.md, "Built-in model").
 */
import { formatShape, shapesEqual, Tensor } from "@ldm/tensor";
import { gemm } from "../matmul/index.ts";
import type { TileConfig } from "../matmul/tiles.ts";

/** Strategy override for tests. */
export interface TokenConvInternals {
  gemmTiles?: TileConfig;
}

/** [Cout, Cin] of a 1×1 convolution weight [Cout, Cin, 1, 1]. dtypes and devices are checked by gemm. */
function pointwiseWeight(op: string, w: Tensor): [number, number] {
  const [cout, cin, kh, kw] = w.shape;
  if (w.shape.length !== 4 || kh !== 1 || kw !== 1) {
    throw new Error(`${op}: weight ${w} must be a 1×1 convolution weight [Cout, Cin, 1, 1]`);
  }
  return [cout, cin];
}

function checkBias(op: string, bias: Tensor | undefined, cout: number): void {
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== cout)) {
    throw new Error(`${op}: bias ${bias} must be [${cout}]`);
  }
}

/** x [B, Cin, H, W], w [Cout, Cin, 1, 1] → [B, H·W, Cout]: the convolution's output as tokens. */
export function conv1x1ToTokens(
  x: Tensor,
  w: Tensor,
  options: { bias?: Tensor } = {},
  internals: TokenConvInternals = {},
): Tensor {
  const op = "conv1x1ToTokens";
  const { bias } = options;
  const [cout, cin] = pointwiseWeight(op, w);
  if (x.shape.length !== 4 || x.shape[1] !== cin) throw new Error(`${op}: x ${x} must be [B, ${cin}, H, W]`);
  checkBias(op, bias, cout);
  const [batch, , h, width] = x.shape;
  const pixels = h * width;
  const out = Tensor.empty(x.device, [batch, pixels, cout], x.dtype);
  // tokens = xᵀ · Wᵀ per batch item: x [Cin, H·W] read transposed, the weight [Cout, Cin] too.
  gemm({
    op,
    a: x,
    b: w,
    out,
    batch,
    M: pixels,
    N: cout,
    K: cin,
    transposeA: true,
    transposeB: true,
    aBatchStride: cin * pixels,
    bBatchStride: 0,
    bias: bias ? { tensor: bias, axis: "n" } : undefined,
    activation: "none",
    alpha: 1,
    tiles: internals.gemmTiles,
  });
  return out;
}

/**
 * tokens [B, H·W, Cin], w [Cout, Cin, 1, 1] → [B, Cout, H, W]: the convolution of the tokens laid out as an
 * image of `size` [H, W], plus `residual` [B, Cout, H, W].
 */
export function conv1x1FromTokens(
  tokens: Tensor,
  w: Tensor,
  size: readonly [number, number],
  options: { bias?: Tensor; residual?: Tensor } = {},
  internals: TokenConvInternals = {},
): Tensor {
  const op = "conv1x1FromTokens";
  const { bias, residual } = options;
  const [cout, cin] = pointwiseWeight(op, w);
  const [h, width] = size;
  const pixels = h * width;
  if (tokens.shape.length !== 3 || tokens.shape[1] !== pixels || tokens.shape[2] !== cin) {
    throw new Error(`${op}: tokens ${tokens} must be [B, ${pixels}, ${cin}] (${h}×${width} pixels, ${cin} channels)`);
  }
  const batch = tokens.shape[0];
  const outShape = [batch, cout, h, width];
  checkBias(op, bias, cout);
  if (residual && !shapesEqual(residual.shape, outShape)) {
    throw new Error(`${op}: residual ${residual} must be ${formatShape(outShape)}`);
  }
  const out = Tensor.empty(tokens.device, outShape, tokens.dtype);
  // image = W · tokensᵀ per batch item: the tokens [H·W, Cin] read transposed; the bias runs along the rows.
  gemm({
    op,
    a: w,
    b: tokens,
    out,
    batch,
    M: cout,
    N: pixels,
    K: cin,
    transposeA: false,
    transposeB: true,
    aBatchStride: 0,
    bBatchStride: pixels * cin,
    bias: bias ? { tensor: bias, axis: "m" } : undefined,
    residual,
    activation: "none",
    alpha: 1,
    tiles: internals.gemmTiles,
  });
  return out;
}
