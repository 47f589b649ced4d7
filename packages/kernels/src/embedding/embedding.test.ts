import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { randomArray } from "../testing.ts";
import { assertIdsInRange, embedding } from "./index.ts";

const device = await useDevice();

/** Reference: rows of the table picked by id (NaN rows for ids outside the table, as documented). */
function embeddingRef(table: Float32Array, dim: number, ids: ArrayLike<number>): Float32Array {
  const vocab = table.length / dim;
  const out = new Float32Array(ids.length * dim);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    for (let j = 0; j < dim; j++) out[i * dim + j] = id >= 0 && id < vocab ? table[id * dim + j] : Number.NaN;
  }
  return out;
}

describe("embedding", () => {
  for (const [vocab, dim, idsShape] of [
    [11, 8, [2, 5]], // vectorised rows
    [7, 3, [1, 4]], // odd width
    [5, 1, [3]],
    [49, 12, [1, 77]],
  ] as const) {
    it(`table [${vocab}, ${dim}], ids ${JSON.stringify(idsShape)}: rows copied exactly`, async () => {
      const table = randomArray(vocab * dim, 91);
      const n = idsShape.reduce((a: number, b: number) => a * b, 1);
      const ids = Int32Array.from({ length: n }, (_, i) => (i * 7 + 3) % vocab);
      const out = embedding(Tensor.from(device, table, [vocab, dim]), Tensor.from(device, ids, idsShape, "i32"));
      expect(out.shape).toEqual([...idsShape, dim]);
      expect(await out.toFloat32()).toEqual(embeddingRef(table, dim, ids));
    });
  }

  it.skipIf(!device.features.shaderF16)("f16 tables give f16 rows", async () => {
    const bits = Uint16Array.from({ length: 6 * 4 }, (_, i) => 0x3c00 + i);
    const out = embedding(Tensor.from(device, bits, [6, 4], "f16"), Tensor.from(device, [5, 0], [2], "i32"));
    expect(Array.from(await out.read())).toEqual([...bits.slice(20, 24), ...bits.slice(0, 4)]);
  });

  it("turns out-of-range GPU ids into NaN rows, never into another row", async () => {
    const table = randomArray(4 * 4, 92);
    const ids = [3, -1, 4, 0];
    const out = await embedding(Tensor.from(device, table, [4, 4]), Tensor.from(device, ids, [4], "i32")).toFloat32();
    expect(out).toEqual(embeddingRef(table, 4, ids));
    expect(Number.isNaN(out[4])).toBe(true);
  });

  it("looks up a table larger than one storage binding (bound in row ranges)", async () => {
    // Just over maxStorageBufferBindingSize of f32 rows of 1000 (SD1's CLIP token table is 152 MB).
    const dim = 1000;
    const vocab = Math.floor(device.limits.maxStorageBufferBindingSize / (4 * dim)) + 3;
    const table = new Float32Array(vocab * dim);
    for (let r = 0; r < vocab; r++) table.fill(r, r * dim, (r + 1) * dim);
    const ids = [0, vocab - 1, 17, vocab - 2, vocab, 1];
    const t = Tensor.from(device, table, [vocab, dim]);
    const out = await embedding(t, Tensor.from(device, ids, [6], "i32")).toFloat32();
    expect(out).toEqual(embeddingRef(table, dim, ids));
    t.dispose();
  });

  it("checks host ids, naming the bad one", () => {
    expect(() => assertIdsInRange([1, 2, 49408], 49408)).toThrow(
      /id 49408 at position 2 is outside the table of 49408 rows/,
    );
    expect(() => assertIdsInRange([0, 1.5], 10)).toThrow(/id 1.5 at position 1/);
    expect(() => assertIdsInRange([0, 9], 10)).not.toThrow();
  });
});
