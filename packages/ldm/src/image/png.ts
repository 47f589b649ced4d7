/**
 * PNG in and out through fast-png, as 8-bit RGBA images (the layout of the browser's ImageData), with text
 * chunks carried through.
 */
import { convertIndexedToRgb, decode, encode, hasPngSignature } from "fast-png";

/** 8-bit RGBA pixels, row-major, 4 bytes per pixel. */
export interface RgbaImage {
  width: number;
  height: number;
  data: Uint8ClampedArray;
}

export interface DecodedImage extends RgbaImage {
  /** The tEXt chunks, keyword → text. */
  text: Record<string, string>;
}

/** Encodes 8-bit RGBA as PNG with tEXt chunks. tEXt holds Latin-1 only: escape other text first (see parameters). */
export function encodePng(image: RgbaImage, text: Record<string, string> = {}): Uint8Array<ArrayBuffer> {
  checkImage(image);
  const png = encode({ width: image.width, height: image.height, data: image.data, depth: 8, channels: 4, text });
  // fast-png writes into ArrayBuffers it allocates (never shared ones); typed as such, the bytes go straight into
  // a Blob or a Response, which TypeScript's DOM types refuse for a Uint8Array<ArrayBufferLike>.
  return png as Uint8Array<ArrayBuffer>;
}

/**
 * Decodes any PNG (grey, grey+alpha, RGB, RGBA, palette; 1–16 bits) to 8-bit RGBA. 16-bit samples are rounded
 * to 8 bits; missing alpha is opaque. `what` names the image in errors ("init image photo.png").
 */
export function decodePng(bytes: Uint8Array, what: string): DecodedImage {
  if (!hasPngSignature(bytes)) {
    const jpeg = bytes[0] === 0xff && bytes[1] === 0xd8;
    throw new Error(`${what} is not a PNG${jpeg ? " (it looks like a JPEG)" : ""}; only PNG images are read`);
  }
  let png: ReturnType<typeof decode>;
  try {
    png = decode(bytes);
  } catch (e) {
    throw new Error(`${what}: unreadable PNG (${(e as Error).message})`);
  }
  const { width, height } = png;
  const pixels = width * height;
  let samples: ArrayLike<number> = png.data;
  let channels = png.channels;
  let depth: number = png.depth;
  if (png.palette) {
    samples = convertIndexedToRgb(png);
    channels = png.palette[0]?.length ?? 3;
    depth = 8;
  } else if (depth < 8) {
    samples = unpackRows(png.data as Uint8Array, width, height, depth);
  }
  if (samples.length < pixels * channels) {
    throw new Error(`${what}: PNG data holds ${samples.length} samples, ${width}×${height}×${channels} expected`);
  }
  const max = 2 ** depth - 1;
  const to8 = (v: number) => (depth === 8 ? v : Math.round((v * 255) / max));
  const data = new Uint8ClampedArray(pixels * 4);
  for (let p = 0; p < pixels; p++) {
    const at = p * channels;
    const grey = channels < 3;
    const r = to8(samples[at]);
    data[4 * p] = r;
    data[4 * p + 1] = grey ? r : to8(samples[at + 1]);
    data[4 * p + 2] = grey ? r : to8(samples[at + 2]);
    data[4 * p + 3] = channels === 2 || channels === 4 ? to8(samples[at + channels - 1]) : 255;
  }
  return { width, height, data, text: png.text ?? {} };
}

/** Greyscale samples of 1, 2 or 4 bits, packed from the high bits with every row starting on a byte. */
function unpackRows(packed: Uint8Array, width: number, height: number, depth: number): Uint8Array {
  const out = new Uint8Array(width * height);
  const rowBytes = Math.ceil((width * depth) / 8);
  const mask = 2 ** depth - 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const bit = x * depth;
      out[y * width + x] = (packed[y * rowBytes + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

function checkImage(image: RgbaImage): void {
  const { width, height, data } = image;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`image size ${width}×${height} must be positive integers`);
  }
  if (data.length !== width * height * 4) {
    throw new RangeError(`image ${width}×${height} needs ${width * height * 4} RGBA bytes, got ${data.length}`);
  }
}
