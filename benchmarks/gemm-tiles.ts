/**
 * GEMM workgroup tiles at the SD 1.5 UNet's GEMM shapes (batch 2, 64×64 latent): each candidate config's GPU
 * time per call, the heuristic's choice marked, and each candidate's output checked against the first one's.
 * Part `tiles` of gpu.ts (`bash benchmarks/gpu.sh --only tiles`), for choosing chooseTiles' rule on GPUs.
 */

import {
  deviceTiles,
  type GemmGeometry,
  gemm,
  stagingVariants,
  tileKey,
  timeCall,
  type WorkgroupTiles,
} from "@ldm/kernels";
import { randomArray } from "@ldm/kernels/testing";
import { type Device, Tensor } from "@ldm/tensor";
import { median } from "./common.ts";

interface Shape extends Pick<GemmGeometry, "batch" | "M" | "N" | "K" | "transposeA" | "transposeB"> {
  what: string;
  /** Calls per UNet step. */
  calls: number;
  gated: boolean;
  bias: "m" | "n" | null;
}

/** Token counts (batch 2) and channels of the UNet's levels: 64×64, 32×32, 16×16 and the 8×8 middle. */
const LEVELS = [
  { tokens: 8192, channels: 320, blocks: 5, pixels: 4096 },
  { tokens: 2048, channels: 640, blocks: 5, pixels: 1024 },
  { tokens: 512, channels: 1280, blocks: 5, pixels: 256 },
  { tokens: 128, channels: 1280, blocks: 1, pixels: 64 },
];

function unetShapes(): Shape[] {
  const shapes: Shape[] = [];
  for (const { tokens: M, channels: C, blocks, pixels } of LEVELS) {
    const linear = (what: string, calls: number, N: number, K: number, gated = false): Shape => ({
      what,
      calls,
      batch: 1,
      M,
      N,
      K,
      transposeA: false,
      transposeB: true,
      gated,
      bias: what === "q/k/v" ? null : "n",
    });
    shapes.push(linear("q/k/v", 4 * blocks, C, C));
    shapes.push(linear("attn out", 2 * blocks, C, C));
    shapes.push(linear("ff geglu", blocks, 8 * C, C, true));
    shapes.push(linear("ff out", blocks, C, 4 * C));
    // proj_in / proj_out: 1×1 convolutions between image and tokens, per image (kernels/conv2d/tokens.ts):
    // tokens = xᵀ · Wᵀ [pixels, C], and image = W · tokensᵀ [C, pixels].
    const image = { calls: blocks, batch: 2, K: C, gated: false };
    shapes.push({ ...image, what: "proj_in", M: pixels, N: C, transposeA: true, transposeB: true, bias: "n" });
    shapes.push({ ...image, what: "proj_out", M: C, N: pixels, transposeA: false, transposeB: true, bias: "m" });
  }
  return shapes;
}

const WG64: WorkgroupTiles = { kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 4, threadN: 4 };
const WG64_8X4: WorkgroupTiles = { ...WG64, threadM: 8 };

/**
 * The workgroup configs timed against each other; the two 64 × 64 tiles also with vec4 global loads ("v" in
 * the key), double-buffered staging ("d") and both.
 */
export const SWEEP_TILES: WorkgroupTiles[] = [
  WG64,
  ...stagingVariants(WG64),
  WG64_8X4,
  ...stagingVariants(WG64_8X4),
  { kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 8, threadN: 8 },
  { kind: "workgroup", tileM: 128, tileN: 64, tileK: 8, threadM: 8, threadN: 4 },
  { kind: "workgroup", tileM: 128, tileN: 64, tileK: 16, threadM: 8, threadN: 8 },
  { kind: "workgroup", tileM: 64, tileN: 128, tileK: 16, threadM: 8, threadN: 8 },
  { kind: "workgroup", tileM: 128, tileN: 128, tileK: 8, threadM: 8, threadN: 8 },
  { kind: "workgroup", tileM: 128, tileN: 128, tileK: 16, threadM: 8, threadN: 8 },
  { kind: "workgroup", tileM: 32, tileN: 64, tileK: 16, threadM: 4, threadN: 4 },
  { kind: "workgroup", tileM: 32, tileN: 32, tileK: 16, threadM: 4, threadN: 4 },
];

/**
 * GPU ms per call: the median of 5 autotune samples (timeCall: a short call repeated to fill ~10 ms in one
 * recording), after an untimed call. A first run of the sweep timed bursts of 2 calls with JavaScript between
 * them and read a 2048×640×640 product at 0.65 ms, 0.126 with ~10 ms samples (an idle GPU clocks down).
 */
async function timePerCall(device: Device, run: () => void): Promise<number> {
  run();
  const times: number[] = [];
  for (let r = 0; r < 5; r++) times.push(await timeCall(device, run));
  return median(times);
}

export async function runTileSweep(device: Device, quick: boolean): Promise<void> {
  if (!device.features.timestampQuery) throw new Error("the tile sweep needs timestamp-query (GPU times)");
  const shapes = quick
    ? unetShapes().map((s) => ({ ...s, M: Math.ceil(s.M / 16), N: Math.ceil(s.N / 8) }))
    : unetShapes();
  const names = SWEEP_TILES.map(tileKey);
  console.log(
    `\nGEMM tiles at the SD 1.5 UNet's shapes: GPU ms per call (* = chooseTiles' choice; ! = output differs)`,
  );
  console.log(`| shape | calls/step | ${names.join(" | ")} |\n|---|---|${names.map(() => "---|").join("")}`);
  const totals = SWEEP_TILES.map(() => 0);
  let chosenTotal = 0;
  let bestTotal = 0;
  for (const s of shapes) {
    const a = Tensor.from(device, randomArray(s.batch * s.M * s.K, 1), [
      s.batch,
      ...(s.transposeA ? [s.K, s.M] : [s.M, s.K]),
    ]);
    const b = Tensor.from(device, randomArray(s.K * s.N, 2), s.transposeB ? [s.N, s.K] : [s.K, s.N]);
    const bias = s.bias
      ? Tensor.from(device, randomArray(s.bias === "m" ? s.M : s.N, 3), [s.bias === "m" ? s.M : s.N])
      : null;
    const out = Tensor.empty(device, [s.batch, s.M, s.gated ? s.N / 2 : s.N]);
    const problem = { M: s.M, N: s.N, K: s.K, transposeA: s.transposeA, transposeB: s.transposeB };
    const chosen = tileKey(deviceTiles(device, problem));
    const call = (tiles: WorkgroupTiles) => () =>
      gemm({
        op: "sweep",
        a,
        b,
        out,
        batch: s.batch,
        ...problem,
        aBatchStride: s.M * s.K,
        bBatchStride: 0,
        gated: s.gated,
        bias: bias && s.bias ? { tensor: bias, axis: s.bias } : undefined,
        activation: "none",
        alpha: 1,
        tiles,
      });
    let first: Float32Array | null = null;
    const cells: string[] = [];
    const times: number[] = [];
    for (const [i, tiles] of SWEEP_TILES.entries()) {
      const ms = await timePerCall(device, call(tiles));
      call(tiles)();
      const values = await out.toFloat32();
      first ??= values;
      let diff = 0;
      for (let j = 0; j < values.length; j++) diff = Math.max(diff, Math.abs(values[j] - first[j]));
      const scale = Math.sqrt(s.K) * 1e-5;
      times.push(ms);
      totals[i] += ms * s.calls;
      if (names[i] === chosen) chosenTotal += ms * s.calls;
      cells.push(
        `${ms.toFixed(4)}${names[i] === chosen ? "*" : ""}${diff > scale ? `!(${diff.toExponential(1)})` : ""}`,
      );
    }
    bestTotal += Math.min(...times) * s.calls;
    const best = times.indexOf(Math.min(...times));
    cells[best] = `**${cells[best]}**`;
    const label = `${s.what} ${s.batch > 1 ? `${s.batch}×` : ""}${s.M}×${s.N}×${s.K}${s.gated ? " gated" : ""}`;
    console.log(`| ${label} | ${s.calls} | ${cells.join(" | ")} |`);
    for (const t of [a, b, bias, out]) t?.dispose();
  }
  console.log(`| total per step (ms × calls) | | ${totals.map((t) => t.toFixed(2)).join(" | ")} |`);
  console.log(
    `chooseTiles' choices: ${chosenTotal.toFixed(2)} ms per step; the best per shape: ${bestTotal.toFixed(2)} ms`,
  );
}
