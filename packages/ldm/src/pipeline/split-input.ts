/**
 * The UNet on overlapping latent crops, blended: upstream LatentDiffusion.apply_model with `split_input_params`,
 * which ldm/notebook_helpers.py sets for super-resolution of large images (crops of 128 latent cells, stride 64),
 * so the UNet's memory is that of one crop whatever the image's size. Every crop's prediction is weighted by
 * get_weighting — delta_border, the distance to the crop's nearest edge as a fraction of its size (0 at the edge,
 * 0.5 in the middle), clipped to [0.01, 0.5] — and the weighted sum divided by the sum of the weights (upstream's
 * fold / normalization), so each cell is a pyramid-weighted mean of the crops over it.
 *
 * Upstream places crops at 0, stride, 2·stride … while they fit ((h − ks) // stride + 1 of them) and leaves any
 * rest uncovered; here one more crop, flush with the far edge, covers it. A crop larger than the latent shrinks to
 * it (as upstream's decode_first_stage reduces its kernel), so a latent within one crop is the untiled call.
 */
import { Tensor } from "@ldm/tensor";
import type { DiffusionModel } from "../diffusion/index.ts";
import type { UNetModel } from "../models/index.ts";

/** Crops of the latent, in latent cells (upstream's split_input_params ks and stride, square). */
export interface SplitInput {
  size: number;
  stride: number;
}

/** The notebook's: 128-cell crops (512 pixels of a VQ-f4 model's output), half overlapping. */
export const NOTEBOOK_SPLIT_INPUT: SplitInput = { size: 128, stride: 64 };

export function checkSplitInput(split: SplitInput): void {
  const { size, stride } = split;
  if (!Number.isInteger(size) || size < 1 || !Number.isInteger(stride) || stride < 1 || stride > size) {
    throw new RangeError(
      `UNet tiles: size ${size} and stride ${stride} must be integers with 1 ≤ stride ≤ size (latent cells)`,
    );
  }
}

/** Crop starts along an axis of `length` cells: every `stride` while a crop fits, then one flush with the end. */
export function cropStarts(length: number, size: number, stride: number): number[] {
  if (length <= size) return [0];
  const starts: number[] = [];
  for (let at = 0; at + size <= length; at += stride) starts.push(at);
  if (starts[starts.length - 1] + size < length) starts.push(length - size);
  return starts;
}

/** get_weighting without tie_braker: delta_border of an h × w crop clipped to [0.01, 0.5], row-major. */
export function cropWeights(h: number, w: number): Float32Array {
  const out = new Float32Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const fy = h > 1 ? y / (h - 1) : 0;
      const fx = w > 1 ? x / (w - 1) : 0;
      const edge = Math.min(fy, fx, 1 - fy, 1 - fx);
      out[y * w + x] = Math.min(0.5, Math.max(0.01, edge));
    }
  }
  return out;
}

/** [n, c, h, w] host values → the [n, c, kh, kw] crop at (y, x). */
function crop(data: Float32Array, shape: readonly number[], y: number, x: number, kh: number, kw: number) {
  const [n, c, h, w] = shape;
  const out = new Float32Array(n * c * kh * kw);
  for (let plane = 0; plane < n * c; plane++) {
    for (let row = 0; row < kh; row++) {
      const from = (plane * h + y + row) * w + x;
      out.set(data.subarray(from, from + kw), (plane * kh + row) * kw);
    }
  }
  return out;
}

/**
 * A DiffusionModel over [rows, C, h, w] latents that runs the UNet crop by crop. `cConcat` (host,
 * [rows, c, h, w]) is cropped with the latent, as upstream unfolds LR_image and segmentation; the context rows
 * go to every crop whole.
 */
export function splitInputDenoiser(
  unet: UNetModel,
  context: Tensor | undefined,
  cConcat: Float32Array | undefined,
  latentShape: readonly number[],
  split: SplitInput,
): DiffusionModel {
  checkSplitInput(split);
  const device = unet.vb.device;
  const [rows, channels, h, w] = latentShape;
  const [kh, kw] = [Math.min(split.size, h), Math.min(split.size, w)];
  const weights = cropWeights(kh, kw);
  const crops = cropStarts(h, kh, split.stride).flatMap((y) => cropStarts(w, kw, split.stride).map((x) => ({ y, x })));
  const normalization = new Float32Array(h * w);
  for (const { y, x } of crops) {
    for (let r = 0; r < kh; r++) for (let c = 0; c < kw; c++) normalization[(y + r) * w + x + c] += weights[r * kw + c];
  }
  const concatShape = cConcat && [rows, cConcat.length / (rows * h * w), h, w];
  return async (latents, t) => {
    const sum = new Float32Array(latents.length);
    for (const { y, x } of crops) {
      const out = device.tidy(() =>
        unet.forward({
          x: Tensor.from(device, crop(latents, latentShape, y, x, kh, kw), [rows, channels, kh, kw]),
          timesteps: Tensor.from(device, new Float32Array(rows).fill(t), [rows]),
          context,
          cConcat:
            cConcat &&
            concatShape &&
            Tensor.from(device, crop(cConcat, concatShape, y, x, kh, kw), [rows, concatShape[1], kh, kw]),
        }),
      );
      let eps: Float32Array;
      try {
        eps = await out.toFloat32();
      } finally {
        out.dispose();
      }
      for (let plane = 0; plane < rows * channels; plane++) {
        for (let r = 0; r < kh; r++) {
          for (let c = 0; c < kw; c++) {
            sum[(plane * h + y + r) * w + x + c] += weights[r * kw + c] * eps[(plane * kh + r) * kw + c];
          }
        }
      }
    }
    for (let plane = 0; plane < rows * channels; plane++) {
      for (let cell = 0; cell < h * w; cell++) sum[plane * h * w + cell] /= normalization[cell];
    }
    return sum;
  };
}
