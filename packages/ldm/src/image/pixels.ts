/** Conversions between 8-bit RGBA images and the VAE's float pixels, and inpainting masks. */
import type { RgbaImage } from "./png.ts";

/**
 * RGB of each image as float32 [N, 3, H, W] in [−1, 1]: 2·(v/255) − 1 in float32, as diffusers' and the original
 * scripts' `np.array(image).astype(np.float32) / 255` then `2 * x − 1`. Alpha is dropped (PIL's convert("RGB")).
 */
export function rgbaToPixels(images: readonly RgbaImage[]): Float32Array {
  const { width, height } = images[0];
  const plane = width * height;
  const out = new Float32Array(images.length * 3 * plane);
  images.forEach((image, n) => {
    if (image.width !== width || image.height !== height) {
      throw new RangeError(`image ${n} is ${image.width}×${image.height}, the first ${width}×${height}`);
    }
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) {
        out[(n * 3 + c) * plane + p] = 2 * Math.fround(image.data[4 * p + c] / 255) - 1;
      }
    }
  });
  return out;
}

/**
 * Float pixels [N, 3, H, W] (the VAE's output, nominally [−1, 1]) to opaque RGBA: clamp((x + 1)/2, 0, 1)·255
 * rounded, as diffusers' numpy_to_pil (the original txt2img.py truncates instead; we round).
 */
export function pixelsToRgba(pixels: Float32Array, shape: readonly number[]): RgbaImage[] {
  const [n, c, height, width] = shape;
  if (c !== 3 || pixels.length !== n * 3 * height * width) {
    throw new RangeError(`pixels [${shape.join(", ")}] (${pixels.length} values) must be [N, 3, H, W]`);
  }
  const plane = width * height;
  return Array.from({ length: n }, (_, i) => {
    const data = new Uint8ClampedArray(plane * 4);
    for (let p = 0; p < plane; p++) {
      for (let ch = 0; ch < 3; ch++) {
        const v = (pixels[(i * 3 + ch) * plane + p] + 1) / 2;
        data[4 * p + ch] = Math.round(Math.min(Math.max(v, 0), 1) * 255);
      }
      data[4 * p + 3] = 255;
    }
    return { width, height, data };
  });
}

/**
 * An inpainting mask from an image: its luma as PIL's convert("L") computes it (ITU-R 601-2 weights in 16-bit
 * fixed point, rounded), binarised as diffusers and Stability's inpainting scripts do (L/255 ≥ 0.5 → 1).
 * 1 = repaint, 0 = keep. One value per pixel, row-major.
 */
export function maskFromImage(image: RgbaImage): Float32Array {
  const { width, height, data } = image;
  const out = new Float32Array(width * height);
  for (let p = 0; p < out.length; p++) {
    const luma = (data[4 * p] * 19595 + data[4 * p + 1] * 38470 + data[4 * p + 2] * 7471 + 0x8000) >> 16;
    out[p] = luma / 255 >= 0.5 ? 1 : 0;
  }
  return out;
}

/**
 * torch.nn.functional.interpolate(mode="nearest") of one plane [H, W] to [h, w]: source index
 * floor(i · H/h), the scale in float32 as torch computes it.
 */
export function resizeNearest(plane: Float32Array, height: number, width: number, h: number, w: number): Float32Array {
  if (plane.length !== height * width) {
    throw new RangeError(`plane of ${plane.length} values is not ${height}×${width}`);
  }
  const scaleY = Math.fround(height / h);
  const scaleX = Math.fround(width / w);
  const out = new Float32Array(h * w);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(Math.floor(Math.fround(y * scaleY)), height - 1);
    for (let x = 0; x < w; x++) {
      out[y * w + x] = plane[sy * width + Math.min(Math.floor(Math.fround(x * scaleX)), width - 1)];
    }
  }
  return out;
}

/** Images of one size tiled into one: `rows[r][c]` at row r, column c; a short row leaves its end white. */
export function gridImage(rows: readonly (readonly RgbaImage[])[]): RgbaImage {
  const first = rows[0]?.[0];
  if (!first) throw new RangeError("a grid needs at least one image");
  const { width, height } = first;
  const columns = Math.max(...rows.map((row) => row.length));
  const gridWidth = width * columns;
  const data = new Uint8ClampedArray(gridWidth * height * rows.length * 4).fill(255);
  rows.forEach((row, r) => {
    row.forEach((image, c) => {
      if (image.width !== width || image.height !== height) {
        throw new RangeError(`grid image [${r}][${c}] is ${image.width}×${image.height}, the first ${width}×${height}`);
      }
      for (let y = 0; y < height; y++) {
        const from = image.data.subarray(y * width * 4, (y + 1) * width * 4);
        data.set(from, ((r * height + y) * gridWidth + c * width) * 4);
      }
    });
  });
  return { width: gridWidth, height: height * rows.length, data };
}
