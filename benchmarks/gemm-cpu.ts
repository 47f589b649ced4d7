/**
 * GEMM variants on a CPU adapter, interleaved in one process: `cd benchmarks && node --import tsx gemm-cpu.ts
 * [MxNxK[T][t|g][@batch],…] [--tiles key,key…] [--rounds n] [--pack-cache]`. A shape with `t` has B transposed (a
 * Linear), with `g` it is a GEGLU linear (B transposed, the gated product: N/2 outputs), with `T` A is transposed
 * ([K, M]: a 1×1 convolution's NCHW input read as tokens), and `@batch` gives each of that many items its own A.
 * Variants are the heuristic's tile and any `--tiles` given (tileKey form, e.g. sg8x4r24nc1u); `--pack-cache` runs
 * them again on a second device that keeps B's packed windows across calls (setPackCacheBudget). Per call: the
 * FLOPs per second of CPU time of lavapipe's threads (every thread but the main one, /proc/self/task/<tid>/schedstat),
 * which a shared machine does not disturb, and the GPU time; medians over the rounds. Benchmarks are not tests: nothing
 * here asserts a time. Linux only.
 */

import { readFileSync } from "node:fs";
import { deviceTiles, gemm, setPackCacheBudget, tileKey } from "@ldm/kernels";
import { Device, Tensor } from "@ldm/tensor";
import { interleavedRates, parseGemmTiles } from "./common.ts";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args.splice(i, 2)[1];
};
const extra = (flag("--tiles") ?? "").split(",").filter(Boolean).map(parseGemmTiles);
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
  const m = /^(\d+)x(\d+)x(\d+)(T?)([tg]?)(?:@(\d+))?$/.exec(s);
  if (!m) throw new Error(`gemm-cpu: shape ${s} is not MxNxK[T][t|g][@batch]`);
  const [M, N, K] = [1, 2, 3].map((i) => Number(m[i]));
  const gated = m[5] === "g";
  const transposeB = gated || m[5] === "t";
  const batch = Number(m[6] ?? 1);
  const problem = { M, N, K, transposeA: m[4] === "T", transposeB, batch };
  const runs = devices.flatMap((device, d) => {
    const a = Tensor.from(
      device,
      Float32Array.from({ length: batch * M * K }, (_, i) => Math.sin(i)),
      [batch, ...(problem.transposeA ? [K, M] : [M, K])],
    );
    const bShape = transposeB ? [N, K] : [K, N];
    const b = Tensor.from(
      device,
      Float32Array.from({ length: N * K }, (_, i) => Math.cos(i)),
      bShape,
    );
    const out = Tensor.empty(device, [batch, M, gated ? N / 2 : N], "f32");
    const call = { op: "matmul", a, b, out, ...problem, aBatchStride: batch > 1 ? M * K : 0, bBatchStride: 0, gated };
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
  const rates = await interleavedRates(runs, 2 * batch * M * N * K, rounds);
  for (const [i, r] of runs.entries()) {
    console.log(
      `${s} ${r.name}: ${rates[i].cpu.toFixed(1)} GFLOP/CPU-s, ${rates[i].gpu.toFixed(1)} GFLOP/s; load ${load0} → ${load()}`,
    );
  }
  for (const r of runs.filter((_, i) => i % (extra.length + 1) === 0)) r.dispose();
}
for (const device of devices) device.destroy();
process.exit(0);
