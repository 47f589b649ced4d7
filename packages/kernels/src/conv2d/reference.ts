/** Plain TypeScript reference for conv2d (NCHW, float64 accumulation, stored as float32). */
import { type Activation, activationRef } from "../matmul/activation.ts";

export interface Conv2dRefOptions {
  stride?: number | readonly [number, number];
  /** One value for every side, or [top, bottom, left, right]. */
  padding?: number | readonly [number, number, number, number];
  bias?: ArrayLike<number>;
  residual?: ArrayLike<number>;
  activation?: Activation;
}

export function conv2dRef(
  x: ArrayLike<number>,
  [B, Cin, H, W]: readonly number[],
  w: ArrayLike<number>,
  [Cout, , kh, kw]: readonly number[],
  opts: Conv2dRefOptions = {},
): Float32Array {
  const [sh, sw] =
    typeof opts.stride === "number" || opts.stride === undefined ? [opts.stride ?? 1, opts.stride ?? 1] : opts.stride;
  const pad = opts.padding ?? 0;
  const [pt, pb, pl, pr] = typeof pad === "number" ? [pad, pad, pad, pad] : pad;
  const Ho = Math.floor((H + pt + pb - kh) / sh) + 1;
  const Wo = Math.floor((W + pl + pr - kw) / sw) + 1;
  const act = activationRef(opts.activation ?? "none");
  const out = new Float32Array(B * Cout * Ho * Wo);
  for (let b = 0; b < B; b++) {
    for (let co = 0; co < Cout; co++) {
      for (let oh = 0; oh < Ho; oh++) {
        for (let ow = 0; ow < Wo; ow++) {
          let acc = 0;
          for (let ci = 0; ci < Cin; ci++) {
            for (let dy = 0; dy < kh; dy++) {
              const ih = oh * sh + dy - pt;
              if (ih < 0 || ih >= H) continue;
              for (let dx = 0; dx < kw; dx++) {
                const iw = ow * sw + dx - pl;
                if (iw < 0 || iw >= W) continue;
                acc += x[((b * Cin + ci) * H + ih) * W + iw] * w[((co * Cin + ci) * kh + dy) * kw + dx];
              }
            }
          }
          const o = ((b * Cout + co) * Ho + oh) * Wo + ow;
          out[o] = act(acc + (opts.bias ? opts.bias[co] : 0)) + (opts.residual ? opts.residual[o] : 0);
        }
      }
    }
  }
  return out;
}
