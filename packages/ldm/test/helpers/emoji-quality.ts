/**
 * Issue 7's quality check of the built-in model, as reference/default_model/quality.py scores it: generated
 * images and the emoji dataset, both RGB in [0, 1], area-averaged to 16×16; a caption passes when its image is
 * strictly closer (Euclidean, over the 768 values) to its own emoji than to at least 90% of the other emojis.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const REPO = join(import.meta.dirname, "..", "..", "..", "..");
/** Built by `bash scripts/setup-system.sh` (reference/data/make_emoji_dataset.py), git-ignored. */
export const EMOJI_DATASET = process.env.LDM_EMOJI_DATASET ?? join(REPO, "reference", "out", "emoji", "emoji-64");
const DISTANCE_SIZE = 16;
export const PASS_FRACTION = 0.9;

export interface QualityItem {
  /** Row of the dataset. */
  index: number;
  codepoints: string;
  caption: string;
}

export interface EmojiDataset {
  /** [N, 3·16·16], RGB in [0, 1], area-averaged. */
  thumbnails: Float64Array[];
  codepoints: string[];
}

/** The dataset's images (uint8 [N, S, S, 3] .npy) as thumbnails, with each row's code points (.json). */
export function loadEmojiDataset(stem = EMOJI_DATASET): EmojiDataset {
  if (!existsSync(`${stem}.npy`) || !existsSync(`${stem}.json`)) {
    throw new Error(
      `the emoji dataset ${stem}.{npy,json} is missing: run bash scripts/setup-system.sh, or /usr/bin/python3 reference/data/make_emoji_dataset.py`,
    );
  }
  const { shape, data } = readUint8Npy(`${stem}.npy`);
  const [count, size, width, channels] = shape;
  if (shape.length !== 4 || size !== width || channels !== 3) {
    throw new Error(`${stem}.npy has shape [${shape}], expected [N, S, S, 3]`);
  }
  const items = (JSON.parse(readFileSync(`${stem}.json`, "utf8")) as { items: { codepoints: string }[] }).items;
  if (items.length !== count) throw new Error(`${stem}.json lists ${items.length} items, the .npy holds ${count}`);
  const plane = size * size * 3;
  const thumbnails = Array.from({ length: count }, (_, n) =>
    thumbnail((c, y, x) => data[n * plane + (y * size + x) * 3 + c] / 255, size),
  );
  return { thumbnails, codepoints: items.map((item) => item.codepoints) };
}

/** Raw decoder outputs [B, 3, S, S] (nominally [−1, 1]) → thumbnails of the clamped images in [0, 1]. */
export function generatedThumbnails(image: Float32Array, shape: readonly number[]): Float64Array[] {
  const [batch, , size] = shape;
  const plane = size * size;
  return Array.from({ length: batch }, (_, b) =>
    thumbnail((c, y, x) => (Math.min(1, Math.max(-1, image[(b * 3 + c) * plane + y * size + x])) + 1) / 2, size),
  );
}

/** Per caption: the fraction of the other emojis that are strictly farther from its image than its own emoji. */
export function qualityFractions(
  generated: readonly Float64Array[],
  items: readonly QualityItem[],
  dataset: EmojiDataset,
): number[] {
  return items.map((item, row) => {
    if (dataset.codepoints[item.index] !== item.codepoints) {
      throw new Error(
        `dataset row ${item.index} is ${dataset.codepoints[item.index]}, the quality run's is ${item.codepoints}: rebuild the dataset`,
      );
    }
    const distances = dataset.thumbnails.map((t) => distance(generated[row], t));
    const own = distances[item.index];
    const farther = distances.filter((d, i) => i !== item.index && d > own).length;
    return farther / (distances.length - 1);
  });
}

function thumbnail(pixel: (c: number, y: number, x: number) => number, size: number): Float64Array {
  const cell = size / DISTANCE_SIZE;
  if (!Number.isInteger(cell)) throw new Error(`images of ${size} px do not average evenly to ${DISTANCE_SIZE}`);
  const out = new Float64Array(3 * DISTANCE_SIZE * DISTANCE_SIZE);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const at = (c * DISTANCE_SIZE + Math.floor(y / cell)) * DISTANCE_SIZE + Math.floor(x / cell);
        out[at] += pixel(c, y, x) / (cell * cell);
      }
    }
  }
  return out;
}

function distance(a: Float64Array, b: Float64Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += (a[i] - b[i]) ** 2;
  return Math.sqrt(sum);
}

/** A C-order uint8 array in NumPy's .npy format (versions 1–3). */
function readUint8Npy(path: string): { shape: number[]; data: Uint8Array } {
  const bytes = readFileSync(path);
  if (bytes.subarray(0, 6).toString("latin1") !== "\x93NUMPY") throw new Error(`${path} is not a .npy file`);
  const major = bytes[6];
  const lengthBytes = major === 1 ? 2 : 4;
  const headerLength = lengthBytes === 2 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = 8 + lengthBytes;
  const header = bytes.subarray(start, start + headerLength).toString("latin1");
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr !== "|u1" || fortran !== "False" || shape === undefined) {
    throw new Error(`${path}: expected a C-order uint8 array, header ${header.trim()}`);
  }
  const dims = shape
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  const data = new Uint8Array(bytes.buffer, bytes.byteOffset + start + headerLength);
  if (data.length !== dims.reduce((a, b) => a * b, 1)) throw new Error(`${path}: data does not match [${dims}]`);
  return { shape: dims, data };
}
