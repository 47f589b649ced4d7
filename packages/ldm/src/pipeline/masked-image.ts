/**
 * The paper's big inpainting model (models/ldm/inpainting_big: cond stage `__is_first_stage__` on `masked_image`,
 * concat) as scripts/inpaint.py runs it: its make_batch turns image, mask (binarised at 0.5) and masked_image =
 * (1 − mask)·image into [−1, 1] by ·2 − 1, so masked pixels are −1 and the mask is in {−1, 1}; c_concat is the
 * first stage's encoding of the masked image with the mask resized nearest to the latent behind it; the result is
 * the prediction pasted into the image where the mask is 1.
 */
import { Tensor } from "@ldm/tensor";
import { resizeNearest } from "../image/pixels.ts";
import type { RgbaImage } from "../image/png.ts";
import { type AutoencoderKL, VQModel } from "../models/autoencoder.ts";

interface HostTensor {
  data: Float32Array;
  shape: readonly number[];
}

/**
 * c_concat [B, C + 1, h, w]: `cond_stage_model.encode(masked_image)` (get_learned_conditioning: a VQ first stage's
 * h, unquantized and unscaled; a KL one's mode), then `interpolate(mask, size=c.shape[-2:])` (nearest).
 * maskedImage [B, 3, H, W] in [−1, 1]; mask [B, 1, H, W] in {−1, 1}.
 */
export async function maskedImageConcat(
  vae: AutoencoderKL,
  maskedImage: HostTensor,
  mask: HostTensor,
): Promise<HostTensor> {
  const [b, , height, width] = maskedImage.shape;
  if (mask.shape.length !== 4 || mask.shape[0] !== b || mask.shape[1] !== 1) {
    throw new RangeError(
      `mask [${mask.shape.join(", ")}] must be [${b}, 1, H, W] for masked_image [${maskedImage.shape.join(", ")}]`,
    );
  }
  if (mask.shape[2] !== height || mask.shape[3] !== width) {
    throw new RangeError(
      `the mask is ${mask.shape[3]}×${mask.shape[2]}, the masked image ${width}×${height}: they must match`,
    );
  }
  const input = Tensor.from(vae.vb.device, maskedImage.data, maskedImage.shape);
  let encoded: Float32Array;
  try {
    encoded = vae instanceof VQModel ? await vae.encodeLatent(input) : (await vae.encode(input)).mode();
  } finally {
    input.dispose();
  }
  const f = vae.downscale;
  const [h, w, c] = [height / f, width / f, encoded.length / (b * (height / f) * (width / f))];
  const plane = h * w;
  const out = new Float32Array(b * (c + 1) * plane);
  for (let i = 0; i < b; i++) {
    out.set(encoded.subarray(i * c * plane, (i + 1) * c * plane), i * (c + 1) * plane);
    const full = mask.data.subarray(i * height * width, (i + 1) * height * width);
    out.set(resizeNearest(full, height, width, h, w), (i * (c + 1) + c) * plane);
  }
  return { data: out, shape: [b, c + 1, h, w] };
}

/**
 * scripts/inpaint.py's `inpainted` before ·255: (1 − mask)·image + mask·predicted, each clamped to [0, 1] after
 * (x + 1)/2. image and predicted [B, 3, H, W] in [−1, 1], mask [B, 1, H, W] in {−1, 1}; result in [0, 1].
 */
export function inpaintedPixels(image: HostTensor, mask: HostTensor, predicted: HostTensor): HostTensor {
  const [b, c, height, width] = image.shape;
  const plane = height * width;
  const unit = (v: number) => Math.min(Math.max((v + 1) / 2, 0), 1);
  const out = new Float32Array(image.data.length);
  for (let i = 0; i < b * c; i++) {
    const m = mask.data.subarray(Math.floor(i / c) * plane, (Math.floor(i / c) + 1) * plane);
    for (let p = 0; p < plane; p++) {
      const keep = 1 - unit(m[p]);
      out[i * plane + p] = keep * unit(image.data[i * plane + p]) + (1 - keep) * unit(predicted.data[i * plane + p]);
    }
  }
  return { data: out, shape: image.shape };
}

/**
 * The same paste on 8-bit images: where `repaint` (one 0/1 value per pixel) is 1 the prediction, else the image's
 * own pixel (which (x + 1)/2 of its [−1, 1] value gives back exactly).
 */
export function pasteRepainted(predicted: RgbaImage, image: RgbaImage, repaint: Float32Array): RgbaImage {
  const data = new Uint8ClampedArray(predicted.data);
  for (let p = 0; p < repaint.length; p++) {
    if (repaint[p] < 0.5) {
      data.set(image.data.subarray(4 * p, 4 * p + 3), 4 * p);
      data[4 * p + 3] = 255;
    }
  }
  return { width: predicted.width, height: predicted.height, data };
}
