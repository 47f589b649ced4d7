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
  /** The text chunks (tEXt, and uncompressed iTXt), keyword → text. */
  text: Record<string, string>;
}

/**
 * Encodes 8-bit RGBA as PNG with text chunks placed right after IHDR, before the image data, where readers that
 * stop at the first IDAT (PIL's Image.open, so AUTOMATIC1111's PNG Info) find them: tEXt for Latin-1 text, iTXt
 * (UTF-8, uncompressed) for anything else, as PIL writes them.
 */
export function encodePng(image: RgbaImage, text: Record<string, string> = {}): Uint8Array<ArrayBuffer> {
  checkImage(image);
  const png = encode({ width: image.width, height: image.height, data: image.data, depth: 8, channels: 4 });
  const chunks = Object.entries(text).map(([keyword, value]) => textChunk(keyword, value));
  const afterHeader = 8 + 8 + 13 + 4;
  const size = chunks.reduce((n, c) => n + c.length, png.length);
  const out = new Uint8Array(size);
  out.set(png.subarray(0, afterHeader));
  let at = afterHeader;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  out.set(png.subarray(afterHeader), at);
  return out;
}

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A tEXt chunk (Latin-1 text) or an uncompressed iTXt chunk (UTF-8), as PIL's PngInfo.add_text writes them. */
function textChunk(keyword: string, text: string): Uint8Array {
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword)) throw new RangeError(`PNG text keyword "${keyword}" is not valid`);
  const latin1 = [...text].every((c) => c.charCodeAt(0) <= 0xff);
  const key = Uint8Array.from(keyword, (c) => c.charCodeAt(0));
  const body = latin1
    ? Uint8Array.from(text, (c) => c.charCodeAt(0))
    : new Uint8Array([0, 0, 0, 0, ...new TextEncoder().encode(text)]);
  const data = new Uint8Array(key.length + 1 + body.length);
  data.set(key);
  data.set(body, key.length + 1);
  const chunk = new Uint8Array(12 + data.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, data.length);
  chunk.set(
    Uint8Array.from(latin1 ? "tEXt" : "iTXt", (c) => c.charCodeAt(0)),
    4,
  );
  chunk.set(data, 8);
  view.setUint32(8 + data.length, crc32(chunk.subarray(4, 8 + data.length)));
  return chunk;
}

/** Uncompressed iTXt chunks (fast-png reads only tEXt), keyword → UTF-8 text. */
function internationalText(bytes: Uint8Array): Record<string, string> {
  const text: Record<string, string> = {};
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 8; at + 12 <= bytes.length; ) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (type === "IEND" || at + 12 + length > bytes.length) break;
    if (type === "iTXt") {
      const data = bytes.subarray(at + 8, at + 8 + length);
      const keywordEnd = data.indexOf(0);
      const compressed = data[keywordEnd + 1];
      const languageEnd = data.indexOf(0, keywordEnd + 3);
      const translatedEnd = data.indexOf(0, languageEnd + 1);
      if (keywordEnd > 0 && !compressed && languageEnd > 0 && translatedEnd > 0) {
        const keyword = String.fromCharCode(...data.subarray(0, keywordEnd));
        text[keyword] = new TextDecoder().decode(data.subarray(translatedEnd + 1));
      }
    }
    at += 12 + length;
  }
  return text;
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
  return { width, height, data, text: { ...(png.text ?? {}), ...internationalText(bytes) } };
}

/** A class id per pixel, row-major: a segmentation map. */
export interface LabelMap {
  width: number;
  height: number;
  labels: Uint8Array | Uint16Array;
}

/**
 * A segmentation map from an index PNG: greyscale (1–16 bits), each pixel's value its class id, as upstream's
 * SegmentationBase reads its mode "L" maps; or a palette PNG, each pixel's palette index its class id (what PIL's
 * np.array gives for mode "P"; the palette's colours are ignored). Colour and alpha PNGs are refused: a colour
 * names no class without the dataset's table.
 */
export function decodeLabelPng(bytes: Uint8Array, what: string): LabelMap {
  if (!hasPngSignature(bytes)) throw new Error(`${what} is not a PNG; a segmentation map is an index or palette PNG`);
  let png: ReturnType<typeof decode>;
  try {
    png = decode(bytes);
  } catch (e) {
    throw new Error(`${what}: unreadable PNG (${(e as Error).message})`);
  }
  const { width, height, depth } = png;
  if (png.channels !== 1) {
    const kind = png.channels === 2 ? "a greyscale+alpha" : png.channels === 3 ? "an RGB" : "an RGBA";
    throw new Error(
      `${what} is ${kind} PNG: a segmentation map is an index PNG (greyscale, pixel value = class id) or a palette PNG (palette index = class id)`,
    );
  }
  if (depth === 16) return { width, height, labels: Uint16Array.from(png.data as Uint16Array) };
  const samples = depth < 8 ? unpackRows(png.data as Uint8Array, width, height, depth) : (png.data as Uint8Array);
  return { width, height, labels: Uint8Array.from(samples.subarray(0, width * height)) };
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
