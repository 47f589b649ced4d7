/**
 * A 3×3 convolution reading its input through a group norm + SiLU or a nearest ×2 upsampling (conv2d's `input`,
 * applied by the Winograd input transform) against the unfused passes — groupNorm / upsampleNearest2x, then the
 * same convolution — interleaved in one process: `cd benchmarks && node --import tsx conv-input.ts
 * [norm|up:C@S,…]` (default: the SD VAE decoder's shapes at 512²; S is the convolution's side, the upsampled
 * one for `up`). Per variant: CPU seconds of lavapipe's threads (workerCpuNs), median of 3 rounds, and GPU ms
 * of one call (timestamps). With `--profile`, each variant's GPU time per kernel (Device.profileGpu).
 * Benchmarks are not tests: nothing here asserts a time.
 */
import { readFileSync } from "node:fs";
import { type ConvInput, conv2d, groupNorm, upsampleNearest2x } from "@ldm/kernels";
import { Device, Tensor } from "@ldm/tensor";
import { median, pseudoRandom, workerCpuNs } from "./common.ts";

const args = process.argv.slice(2);
const profile = args.includes("--profile");
const list =
  args.find((a) => !a.startsWith("--")) ??
  "norm:128@512,norm:256@256,norm:512@128,norm:512@64,up:512@128,up:512@256,up:256@512";
const device = await Device.create({ disableF16: true });
const load = () => readFileSync("/proc/loadavg", "utf8").split(" ")[0];

for (const item of list.split(",")) {
  const [kind, shape] = item.split(":");
  if (kind !== "norm" && kind !== "up") throw new Error(`conv-input: unknown case '${kind}' (norm or up)`);
  const [C, S] = shape.split("@").map(Number);
  const side = kind === "up" ? S / 2 : S;
  const x = Tensor.from(device, pseudoRandom(C * side * side, 1), [1, C, side, side]);
  const w = Tensor.from(
    device,
    pseudoRandom(C * C * 9, 2).map((v) => v * 0.05),
    [C, C, 3, 3],
  );
  const bias = Tensor.from(device, pseudoRandom(C, 3), [C]);
  const gamma = Tensor.from(device, pseudoRandom(C, 4), [C]);
  const beta = Tensor.from(device, pseudoRandom(C, 5), [C]);
  const norm = { gamma, beta, groups: 32, eps: 1e-6, silu: true };
  const input: ConvInput = kind === "norm" ? { groupNorm: norm } : { upsample2x: true };
  const variants: Record<string, () => void> = {
    unfused: () => {
      const prepared = kind === "norm" ? groupNorm(x, gamma, beta, norm) : upsampleNearest2x(x);
      conv2d(prepared, w, { padding: 1, bias }).dispose();
      prepared.dispose();
    },
    fused: () => conv2d(x, w, { padding: 1, bias, input }).dispose(),
  };
  const cpu: Record<string, number[]> = { unfused: [], fused: [] };
  const gpu: Record<string, number> = {};
  for (const [name, run] of Object.entries(variants)) {
    run();
    await device.sync();
    gpu[name] = (await device.timeGpu(run)) ?? Number.NaN;
  }
  for (let r = 0; r < 3; r++) {
    for (const [name, run] of Object.entries(variants)) {
      const c0 = workerCpuNs();
      run();
      await device.sync();
      cpu[name].push((workerCpuNs() - c0) / 1e9);
    }
  }
  const label = kind === "norm" ? `groupNorm+SiLU → conv ${C}→${C} @ ${S}²` : `up ×2 → conv ${C}→${C} @ ${S}²`;
  const [u, f] = [median(cpu.unfused), median(cpu.fused)];
  console.log(
    `${label}: unfused ${u.toFixed(2)} CPU-s (gpu ${gpu.unfused.toFixed(0)} ms), fused ${f.toFixed(2)} CPU-s ` +
      `(gpu ${gpu.fused.toFixed(0)} ms), ${(u / f).toFixed(2)}×; load ${load()}`,
  );
  if (profile) {
    for (const [name, run] of Object.entries(variants)) {
      const kernels = (await device.profileGpu(run)) ?? [];
      const rows = kernels.map((k) => `${k.label.split(":")[0]} ×${k.dispatches} ${k.ms.toFixed(0)} ms`);
      console.log(`  ${name}: ${rows.join(", ")}`);
    }
  }
  for (const t of [x, w, bias, gamma, beta]) t.dispose();
}
device.destroy();
process.exit(0);
