/**
 * SD 1.5's VAE decode (random weights) with conv2d's input fusions (group norm + SiLU and ×2 upsampling read by
 * the Winograd input transform) against the same model with them run as separate passes before each
 * convolution (Conv2d.forward's `input` applied by GroupNorm.forward and upsampleNearest2x first, as the model
 * code did before the fusions), alternated in one process: `cd benchmarks && node --import tsx
 * decode-fusion.ts [latent side, default 32] [rounds, default 2]`. Per variant: CPU seconds of lavapipe's threads
 * (workerCpuNs), median over the rounds, and the peak of live GPU memory above what was live before the decode
 * (device.memory().peakLiveBytes, the pool's peak reset first). Benchmarks are not tests: nothing here asserts a time.
 */
import { readFileSync } from "node:fs";
import { upsampleNearest2x } from "@ldm/kernels";
import { Conv2d } from "@ldm/nn";
import { Device, Tensor } from "@ldm/tensor";
import { standardConfig } from "@ldm/weights";
import { median, pseudoRandom, workerCpuNs } from "./common.ts";
import { randomFirstStage } from "./random-weights.ts";

const S = Number(process.argv[2] ?? 32);
const rounds = Number(process.argv[3] ?? 2);
const device = await Device.create({ disableF16: true });
const { vae } = await randomFirstStage(device, standardConfig("sd1").vae, "f32");
const z = Tensor.from(device, pseudoRandom(4 * S * S, 1), [1, 4, S, S]);

const fusedForward = Conv2d.prototype.forward;
type Options = Parameters<typeof fusedForward>[1];
/** Conv2d.forward with its `input` run as separate passes first. */
function unfusedForward(this: Conv2d, x: Tensor, options: Options = {}): Tensor {
  const { input, ...rest } = options;
  if (!input) return fusedForward.call(this, x, rest);
  const normed = input.norm ? input.norm.forward(x, { silu: input.silu, shift: input.shift }) : x;
  const prepared = input.upsample2x ? upsampleNearest2x(normed) : normed;
  if (normed !== x && normed !== prepared) normed.dispose();
  try {
    return fusedForward.call(this, prepared, rest);
  } finally {
    if (prepared !== x) prepared.dispose();
  }
}

const variants = { unfused: unfusedForward, fused: fusedForward };
const cpu: Record<string, number[]> = { unfused: [], fused: [] };
const peak: Record<string, number> = {};
for (let r = 0; r <= rounds; r++) {
  for (const [name, forward] of Object.entries(variants)) {
    Conv2d.prototype.forward = forward;
    device.pool.resetPeak();
    const before = device.memory().liveBytes;
    const c0 = workerCpuNs();
    vae.decode(z).dispose();
    await device.sync();
    peak[name] = device.memory().peakLiveBytes - before;
    // Round 0 compiles the kernels: not counted.
    if (r > 0) cpu[name].push((workerCpuNs() - c0) / 1e9);
  }
}
const [u, f] = [median(cpu.unfused), median(cpu.fused)];
console.log(
  `VAE decode ${8 * S}²: unfused ${cpu.unfused.map((t) => t.toFixed(1)).join(", ")} CPU-s, fused ` +
    `${cpu.fused.map((t) => t.toFixed(1)).join(", ")} CPU-s, ${(u / f).toFixed(3)}×; peak activations ` +
    `${(peak.unfused / 2 ** 20).toFixed(0)} → ${(peak.fused / 2 ** 20).toFixed(0)} MiB; load ${readFileSync("/proc/loadavg", "utf8").split(" ")[0]}`,
);
device.destroy();
process.exit(0);
