/**
 * GEMM variants on a CPU adapter, interleaved in one process: `cd benchmarks && node --import tsx gemm-cpu.ts
 * [MxNxK[t|g],…] [--tiles key,key…] [--rounds n] [--pack-cache]`. A shape ending in `t` has B transposed (a Linear),
 * one ending in `g` is a GEGLU linear (B transposed, the gated product: N/2 outputs). Variants are the heuristic's
 * tile and any `--tiles` given (tileKey form, e.g. sg8x4r24nc1u); `--pack-cache` runs them again on a second
 * device that keeps B's packed windows across calls (setPackCacheBudget). Per call: the FLOPs per second of
 * CPU time of lavapipe's threads (every thread but the main one, /proc/self/task/<tid>/schedstat), which a
 * shared machine does not disturb, and the GPU time; medians over the rounds. Benchmarks are not tests: nothing
 * here asserts a time. Linux only.
 */

import { readFileSync } from "node:fs";
import { deviceTiles, gemm, isTileConfig, setPackCacheBudget, type TileConfig, tileKey } from "@ldm/kernels";
import { Device, Tensor } from "@ldm/tensor";
import { interleavedRates } from "./common.ts";

/** sg<lanes>x<subgroups>r<rows><m|n>: the subgroup tiles of tiles.ts's tileKey. */
function parseTiles(key: string): TileConfig {
  const m = /^sg(\d+)x(\d+)r(\d+)([mn])c(\d+)(u?)$/.exec(key);
  if (!m) throw new Error(`gemm-cpu: --tiles ${key} is not a subgroup tile key like sg8x4r24nc1u`);
  const [lanes, subgroups, rows, cols] = [1, 2, 3, 5].map((i) => Number(m[i]));
  const laneOwns = m[4] as "m" | "n";
  const tiles = { kind: "subgroup" as const, lanes, subgroups, rows, laneOwns, cols, uniformB: m[6] === "u" };
  if (!isTileConfig(tiles)) throw new Error(`gemm-cpu: --tiles ${key} is not a config the GEMM kernels can run`);
  return tiles;
}

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args.splice(i, 2)[1];
};
const extra = (flag("--tiles") ?? "").split(",").filter(Boolean).map(parseTiles);
const rounds = Number(flag("--rounds") ?? 3);
const shapes = (args[0] ?? "1024x1024x1024,8192x320x320t,2048x640x640t,512x1280x1280t").split(",");
const devices = [await Device.create({ disableF16: true })];
/** What each device's variants are called after their tile. */
const names = [""];
// --robustness: the same variants again on a device with Dawn's disable_robustness toggle (no index clamps).
if (args.includes("--robustness")) {
  args.splice(args.indexOf("--robustness"), 1);
  devices.push(await Device.create({ disableF16: true, dawnFlags: ["enable-dawn-features=disable_robustness"] }));
  names.push(" no-robustness");
}
// --pack-cache: the same variants again on a device that packs B's windows once (weights: the same every call).
if (args.includes("--pack-cache")) {
  args.splice(args.indexOf("--pack-cache"), 1);
  const cached = await Device.create({ disableF16: true });
  setPackCacheBudget(cached, 2 ** 31);
  devices.push(cached);
  names.push(" pack-cache");
}
const load = () => readFileSync("/proc/loadavg", "utf8").split(" ")[0];

for (const s of shapes) {
  const gated = s.endsWith("g");
  const transposeB = gated || s.endsWith("t");
  const [M, N, K] = s.replace(/[tg]$/, "").split("x").map(Number);
  const problem = { M, N, K, transposeA: false, transposeB };
  const runs = devices.flatMap((device, d) => {
    const a = Tensor.from(
      device,
      Float32Array.from({ length: M * K }, (_, i) => Math.sin(i)),
      [M, K],
    );
    const bShape = transposeB ? [N, K] : [K, N];
    const b = Tensor.from(
      device,
      Float32Array.from({ length: N * K }, (_, i) => Math.cos(i)),
      bShape,
    );
    const out = Tensor.empty(device, [M, gated ? N / 2 : N], "f32");
    const call = { op: "matmul", a, b, out, batch: 1, ...problem, aBatchStride: 0, bBatchStride: 0, gated };
    return [deviceTiles(device, problem), ...extra].map((tiles, i) => ({
      name: `${tileKey(tiles)}${i === 0 ? " (heuristic)" : ""}${names[d]}`,
      device,
      run: () => gemm({ ...call, activation: "none", alpha: 1, tiles }),
      dispose: () => {
        for (const t of [a, b, out]) t.dispose();
      },
    }));
  });
  for (const r of runs) {
    r.run();
    await r.device.sync();
  }
  const load0 = load();
  const rates = await interleavedRates(runs, 2 * M * N * K, rounds);
  for (const [i, r] of runs.entries()) {
    console.log(
      `${s} ${r.name}: ${rates[i].cpu.toFixed(1)} GFLOP/CPU-s, ${rates[i].gpu.toFixed(1)} GFLOP/s; load ${load0} → ${load()}`,
    );
  }
  for (const r of runs.filter((_, i) => i % (extra.length + 1) === 0)) r.dispose();
}
for (const device of devices) device.destroy();
process.exit(0);
