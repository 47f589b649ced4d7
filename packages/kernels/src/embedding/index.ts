/**
 * Embedding lookup (torch.nn.Embedding): out[..., :] = table[ids[...], :].
 *
 * Ids on the GPU cannot be checked on the host without a readback, so an out-of-range id (negative or
 * ≥ V) yields a row of NaN: visible downstream, never a silent read of another row. Ids that come from the
 * host (the tokenizer) should be checked there first with `assertIdsInRange`, which names the bad id.
 *
 * Tables over one storage binding (SD1's CLIP token table is 49408×768 f32 = 152 MB) are bound in row
 * ranges, one pass each; a pass writes the ids that fall in its range.
 */
import { DTYPE_BYTES, type DType, Tensor } from "@ldm/tensor";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { assertBindable, assertDType } from "../common/wgsl.ts";
import { splitForBindings } from "../strided/plan.ts";

/** One element (or vec4) of an output row per item; a pass writes the ids whose rows its table binding holds. */
const EMBEDDING: KernelDecl<{ dtype: DType; width: number }> = {
  name: "embedding",
  params: {
    rowItems: "u32",
    firstRow: "u32",
    endRow: "u32",
    vocab: "u32",
    tableOffset: "u32",
    writesInvalid: "u32",
    nanBits: "u32",
  },
  bindings: ({ dtype, width }) => {
    const stored = width === 4 ? `vec4<${dtype}>` : dtype;
    return [
      { name: "ids", type: "i32" },
      { name: "table", type: stored },
      { name: "out", type: stored, access: "read_write" },
    ];
  },
  workgroupSize: 256,
  main: ({ dtype, width }) => `
  let position = item / p.rowItems;
  let column = item % p.rowItems;
  let id = ids[position];
  if (id < 0 || u32(id) >= p.vocab) {
    if (p.writesInvalid == 1u) { out[item] = ${width === 4 ? `vec4<${dtype}>` : dtype}(${dtype}(bitcast<f32>(p.nanBits))); }
    return;
  }
  let row = u32(id);
  if (row >= p.firstRow && row < p.endRow) {
    out[item] = table[p.tableOffset + (row - p.firstRow) * p.rowItems + column];
  }`,
};

/** Throws, naming the first offending position and value, unless every id is an integer in [0, vocab). */
export function assertIdsInRange(ids: ArrayLike<number>, vocab: number, what = "token ids"): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocab) {
      throw new Error(`${what}: id ${id} at position ${i} is outside the table of ${vocab} rows`);
    }
  }
}

/** table [V, D] (f32 or f16), ids i32 of any shape → [...ids.shape, D] in the table's dtype. */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  assertDType("embedding", "table", table, ["f32", "f16"]);
  assertDType("embedding", "ids", ids, ["i32"]);
  if (table.shape.length !== 2) throw new Error(`embedding: table ${table} must be [rows, dim]`);
  const [vocab, dim] = table.shape;
  const device = table.device;
  const out = Tensor.empty(device, [...ids.shape, dim], table.dtype);
  assertBindable("embedding", { ids, out });
  if (out.size === 0) return out;
  if (vocab === 0) throw new Error(`embedding: table ${table} has no rows to look up`);

  const width = dim % 4 === 0 ? 4 : 1;
  const pieces = splitForBindings(
    "embedding",
    [vocab, dim],
    [{ name: "table", strides: [dim, 1], offset: 0, bytesPerElement: DTYPE_BYTES[table.dtype] }],
    dim,
    {
      maxBindingBytes: device.limits.maxStorageBufferBindingSize,
      offsetAlignment: device.limits.minStorageBufferOffsetAlignment,
    },
  );
  const items = out.size / width;
  for (const [i, piece] of pieces.entries()) {
    const binding = piece.bindings[0];
    runKernel(
      device,
      EMBEDDING,
      { dtype: table.dtype, width },
      {
        count: items,
        params: {
          rowItems: dim / width,
          firstRow: piece.start / dim,
          endRow: piece.end / dim,
          vocab,
          tableOffset: (piece.start - binding.baseElement) / width,
          writesInvalid: i === 0 ? 1 : 0,
          // A NaN written as a constant would be folded at compile time, which WGSL rejects.
          nanBits: 0x7fc00000,
        },
        buffers: {
          ids: ids.slice(),
          table: { buffer: table.buffer, offset: binding.byteOffset, size: binding.byteSize },
          out: out.slice(),
        },
      },
    );
  }
  return out;
}
