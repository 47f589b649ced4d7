/**
 * Tensors larger than one storage binding (128 MiB on lavapipe): an SD VAE decoder at 512×512 has
 * [1, 128, 512, 512] f32 activations of exactly 128 MiB and its upsamples produce more. Each op here runs on
 * a tensor over the device's maxStorageBufferBindingSize, so it must split its dispatches.
 */
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { add } from "../elementwise/index.ts";
import { broadcastBinaryRef } from "../elementwise/reference.ts";
import { groupNorm } from "../groupnorm/index.ts";
import { groupNormRef } from "../groupnorm/reference.ts";
import { concat, upsampleNearest2x } from "../layout/index.ts";
import { concatRef, upsampleNearest2xRef } from "../layout/reference.ts";
import { assertClose, randomArray } from "../testing.ts";

const device = await useDevice();
let limit: number;
beforeAll(async () => {
  limit = device.limits.maxStorageBufferBindingSize;
});
afterAll(() => device?.destroy());

/** Channels of 512×512 f32 that make a tensor just over one binding. */
const channelsOver = (bytes: number) => Math.floor(bytes / (512 * 512 * 4)) + 8;

describe("tensors over maxStorageBufferBindingSize", () => {
  it("groupNorm + SiLU and a broadcast add on [1, C, 512, 512] f32 over the limit", async () => {
    const c = channelsOver(limit);
    const shape = [1, c, 512, 512];
    const x = randomArray(c * 512 * 512, 101, 2);
    const tx = Tensor.from(device, x, shape);
    expect(tx.byteLength).toBeGreaterThan(limit);
    const gamma = randomArray(c, 102);
    const beta = randomArray(c, 103);
    const groups = c / 8;
    const gn = groupNorm(tx, Tensor.from(device, gamma, [c]), Tensor.from(device, beta, [c]), {
      groups,
      eps: 1e-6,
      silu: true,
    });
    // Same bounds as groupnorm.test.ts (tree-reduced f32 statistics over 2M-element groups).
    assertClose(await gn.toFloat32(), groupNormRef(x, shape, gamma, beta, groups, 1e-6, true), {
      atol: 1e-5,
      rtol: 1e-5,
    });
    gn.dispose();

    const bias = randomArray(c, 104);
    const sum = add(tx, Tensor.from(device, bias, [1, c, 1, 1]));
    // One f32 addition on both sides: equal to the bit (the reference rounds its float64 sum to f32 once).
    assertClose(await sum.toFloat32(), broadcastBinaryRef(x, shape, bias, [1, c, 1, 1], (a, b) => a + b).data, {
      atol: 0,
    });
    sum.dispose();
    tx.dispose();
  });

  it("nearest upsampling to, and concatenation into, outputs over the limit", async () => {
    const c = channelsOver(limit / 4);
    const shape = [1, c, 512, 512];
    const x = randomArray(c * 512 * 512, 105);
    const tx = Tensor.from(device, x, shape);
    const up = upsampleNearest2x(tx);
    expect(up.byteLength).toBeGreaterThan(limit);
    // Copies: exact (compared with assertClose, which, unlike toEqual, stays cheap on 40M elements).
    assertClose(await up.toFloat32(), upsampleNearest2xRef(x, shape), { atol: 0 });
    up.dispose();

    const parts = [tx, tx, tx, tx, tx];
    const cat = concat(parts, 1);
    expect(cat.byteLength).toBeGreaterThan(limit);
    assertClose(
      await cat.toFloat32(),
      concatRef(
        parts.map(() => ({ data: x, shape })),
        1,
      ),
      { atol: 0 },
    );
    cat.dispose();
    tx.dispose();
  });
});
