import { STORED_DTYPE_BYTES, type StoredDType } from "./dtype.ts";
import type { TensorFile } from "./tensor-file.ts";

/**
 * Stored elements that are NaN or ±Inf, read from their bits (every exponent bit set; F8_E4M3 has only NaN,
 * S.1111.111), without converting; integer and boolean tensors hold none. `bytes` must be aligned for the dtype.
 */
export function countNonFiniteStored(dtype: StoredDType, bytes: Uint8Array, count: number): number {
  const { buffer, byteOffset } = bytes;
  const scan = (values: Uint8Array | Uint16Array | Uint32Array, mask: number, step = 1, first = 0) => {
    let found = 0;
    for (let i = first; i < values.length; i += step) if ((values[i] & mask) === mask) found++;
    return found;
  };
  switch (dtype) {
    case "F64": // little-endian: the exponent is in each odd (high) word
      return scan(new Uint32Array(buffer, byteOffset, 2 * count), 0x7ff00000, 2, 1);
    case "F32":
      return scan(new Uint32Array(buffer, byteOffset, count), 0x7f800000);
    case "F16":
      return scan(new Uint16Array(buffer, byteOffset, count), 0x7c00);
    case "BF16":
      return scan(new Uint16Array(buffer, byteOffset, count), 0x7f80);
    case "F8_E5M2":
      return scan(new Uint8Array(buffer, byteOffset, count), 0x7c);
    case "F8_E4M3":
      return scan(new Uint8Array(buffer, byteOffset, count), 0x7f);
    default:
      return 0;
  }
}

export interface NonFiniteTensor {
  file: string;
  name: string;
  /** NaN and ±Inf values. */
  count: number;
  /** All its values. */
  size: number;
}

export interface FiniteCheck {
  tensors: number;
  values: number;
  /** Tensors holding NaN or ±Inf, in file order. */
  found: NonFiniteTensor[];
}

/** Reads every tensor of `files` in chunks of at most `chunkBytes` and finds those with NaN or ±Inf values. */
export async function findNonFinite(files: readonly TensorFile[], chunkBytes = 16 * 1024 * 1024): Promise<FiniteCheck> {
  const buffer = new Uint8Array(Math.max(chunkBytes, 8));
  const result: FiniteCheck = { tensors: 0, values: 0, found: [] };
  for (const file of files) {
    const entries = [...file.tensors.values()].sort((a, b) => a.begin - b.begin);
    for (const entry of entries) {
      const width = STORED_DTYPE_BYTES[entry.dtype];
      const perChunk = Math.max(1, Math.floor(chunkBytes / width));
      let count = 0;
      for (let first = 0; first < entry.size; first += perChunk) {
        const n = Math.min(perChunk, entry.size - first);
        const bytes = buffer.subarray(0, n * width);
        await file.reader.readInto(entry.begin + first * width, bytes);
        count += countNonFiniteStored(entry.dtype, bytes, n);
      }
      result.tensors++;
      result.values += entry.size;
      if (count) result.found.push({ file: file.name, name: entry.name, count, size: entry.size });
    }
  }
  return result;
}
