/**
 * The kernels at 16-lane subgroups (DeviceOptions.cpuLanes, `--cpu-lanes 16`). The rest of the suite runs at
 * lavapipe's own 8 lanes, and at 16 every kernel compiles 2–3 times as long (packages/kernels and nn from an empty
 * shader cache: 612 s against 258 s), so here each kernel family runs the tiles that 16 lanes choose, against its
 * CPU reference, with the tolerances of its own test file. lavapipe only: other adapters ignore cpuLanes.
 */
import { Device, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { attention } from "./attention/index.ts";
import { attentionRef } from "./attention/reference.ts";
import { attentionTiling } from "./attention/tiling.ts";
import { conv2d } from "./conv2d/index.ts";
import { conv2dRef } from "./conv2d/reference.ts";
import { groupNorm } from "./groupnorm/index.ts";
import { groupNormRef } from "./groupnorm/reference.ts";
import { fixedSubgroupSize, matmul } from "./matmul/index.ts";
import { matmulRef } from "./matmul/reference.ts";
import { assertClose, f32Tol, randomArray, winogradTol } from "./testing.ts";

const probe = await Device.create();
const lavapipe = probe.info.isCpu && /llvmpipe/.test(probe.describe());
probe.destroy();
const device = await useDevice(lavapipe ? { cpuLanes: 16 } : {});

const tensor = (shape: number[], seed: number, scale = 1) =>
  Tensor.from(
    device,
    randomArray(
      shape.reduce((p, q) => p * q),
      seed,
      scale,
    ),
    shape,
  );

describe.skipIf(!lavapipe)("kernels on 16-lane subgroups", () => {
  it("run on a device with 16-lane subgroups", () => {
    expect(fixedSubgroupSize(device)).toBe(16);
  });

  it("gemm: the device's tiles on odd and aligned shapes, with the epilogue", async () => {
    for (const [M, N, K, transposeB] of [
      [33, 17, 13, false],
      [200, 256, 19, true],
      [130, 320, 320, true],
    ] as const) {
      const a = tensor([M, K], 1);
      const b = tensor(transposeB ? [N, K] : [K, N], 2);
      const bias = tensor([N], 3);
      const residual = tensor([M, N], 4);
      const out = matmul(a, b, { transposeB, bias, residual, activation: "silu" });
      const want = matmulRef(await a.toFloat32(), await b.toFloat32(), {
        batch: 1,
        M,
        N,
        K,
        transposeB,
        bias: await bias.toFloat32(),
        residual: await residual.toFloat32(),
        activation: "silu",
      });
      assertClose(await out.toFloat32(), want, f32Tol(K), `${M}×${N}×${K}`);
      for (const t of [a, b, bias, residual, out]) t.dispose();
    }
  });

  it("conv2d: direct and Winograd kernels, odd shapes, strides and the epilogue", async () => {
    for (const [c, algorithm] of [
      [{ x: [1, 3, 5, 9], w: [20, 3, 3, 3], stride: 1, padding: 1 }, "direct"],
      [{ x: [2, 5, 9, 11], w: [7, 5, 3, 3], stride: 2, padding: 1 }, "direct"],
      [{ x: [1, 24, 13, 10], w: [40, 24, 3, 3], stride: 1, padding: 1 }, "winograd"],
      [{ x: [2, 64, 16, 16], w: [64, 64, 3, 3], stride: 1, padding: 1 }, "winograd"],
    ] as const) {
      const x = tensor([...c.x], 5);
      const w = tensor([...c.w], 6, 0.5);
      const bias = tensor([c.w[0]], 7);
      const opts = { stride: c.stride, padding: c.padding, activation: "silu" } as const;
      const out = conv2d(x, w, { ...opts, bias }, { algorithm });
      const want = conv2dRef(await x.toFloat32(), [...c.x], await w.toFloat32(), [...c.w], {
        ...opts,
        bias: await bias.toFloat32(),
      });
      const terms = c.w[1] * 9;
      const tol = algorithm === "winograd" ? winogradTol(terms) : f32Tol(terms);
      assertClose(await out.toFloat32(), want, tol, `${algorithm} ${c.x} * ${c.w}`);
      for (const t of [x, w, bias, out]) t.dispose();
    }
  });

  // The window kernel as SD 1.5's widest level takes it (4 rows per lane) and the fused kernel: each compiles
  // for tens of seconds at 16 lanes, so the other head widths are left to attention.test.ts at 8.
  it("attention: the window and fused kernels at SD 1.5's head width 40", async () => {
    for (const [batch, nq, nk, heads, d, kind] of [
      [1, 4096, 77, 1, 40, "window"],
      [2, 33, 77, 3, 40, "subgroup"],
    ] as const) {
      const dims = { batch, nq, nk, heads, d };
      const q = tensor([batch, nq, heads * d], 8);
      const k = tensor([batch, nk, heads * d], 9);
      const v = tensor([batch, nk, heads * d], 10);
      const tiling = attentionTiling({ isCpu: true, subgroupSize: 16 }, d, nq, nk, { heads, causal: false });
      expect(tiling).toMatchObject({ kind, rowsPerInvocation: 4 });
      const out = attention(q, k, v, { heads, tiling });
      const rows = [0, 1, 17, nq - 1];
      const [qv, kv, vv] = [await q.toFloat32(), await k.toFloat32(), await v.toFloat32()];
      const want = attentionRef(qv, kv, vv, dims, { rows });
      const got = await out.toFloat32();
      const width = heads * d;
      const pick = (a: ArrayLike<number>) =>
        Array.from({ length: batch }, (_, b) =>
          rows.flatMap((r) => Array.from(a).slice((b * nq + r) * width, (b * nq + r + 1) * width)),
        ).flat();
      // attention.test.ts's f32 tolerance.
      assertClose(pick(got), pick(want), { atol: 1e-5 }, `${tiling.kind} ${nq}×${nk}×${heads}×${d}`);
      for (const t of [q, k, v, out]) t.dispose();
    }
  });

  it("group norm with SiLU", async () => {
    const shape = [2, 64, 9, 7];
    const x = tensor(shape, 11);
    const gamma = tensor([64], 12);
    const beta = tensor([64], 13);
    const out = groupNorm(x, gamma, beta, { groups: 32, eps: 1e-6, silu: true });
    const want = groupNormRef(
      await x.toFloat32(),
      shape,
      await gamma.toFloat32(),
      await beta.toFloat32(),
      32,
      1e-6,
      true,
    );
    // groupnorm.test.ts's f32 tolerance.
    assertClose(await out.toFloat32(), want, { atol: 1e-5, rtol: 1e-5 }, "group norm");
    for (const t of [x, gamma, beta, out]) t.dispose();
  });
});
