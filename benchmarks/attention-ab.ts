/**
 * Attention tilings side by side, interleaved in one process:
 * `cd benchmarks && node --import tsx attention-ab.ts [NqxNkxHxd[xB],…] [variant;variant…]` (default: SD 1.5's
 * UNet shapes at 64×64 latent, batch 2, and the VAE's mid-block head). A variant is `default` (the adapter's
 * own tiling), `fused` (the fused kernel's tiling, fusedTiling) or a JSON object merged onto the default, or with a
leading `fused` onto the fused one, e.g. `{"rowsPerInvocation":4}`, `fused{"rowsPerInvocation":2}`. Per call: GPU ms (timestamps)
 * and, what a shared machine cannot disturb, FLOPs (4·B·H·Nq·Nk·d) per second of CPU time of lavapipe's
 * threads (every thread but the main one, from /proc/self/task/<tid>/schedstat), median of the rounds.
 * DTYPE=f16 runs f16 tensors (f32 by default). Linux only. Benchmarks are not tests: nothing here asserts a time.
 */

import { readFileSync } from "node:fs";
import { type AttentionTiling, adapterTraits, attention, attentionTiling, fusedTiling } from "@ldm/kernels";
import { Device, Tensor } from "@ldm/tensor";
import { workerCpuNs } from "./common.ts";

const dtype = process.env.DTYPE === "f16" ? "f16" : "f32";
const device = await Device.create({ disableF16: dtype === "f32" });
const shapes = (process.argv[2] ?? "4096x4096x8x40,1024x1024x8x80,256x256x8x160,4096x77x8x40,4096x4096x1x512x1").split(
  ",",
);
const variants = (process.argv[3] ?? "default").split(";");
const rounds = Number(process.env.ROUNDS ?? 3);
const load = () => readFileSync("/proc/loadavg", "utf8").split(" ")[0];
for (const s of shapes) {
  const [nq, nk, heads, d, batch = 2] = s.split("x").map(Number);
  const fill = (n: number, f: (i: number) => number) =>
    Tensor.from(
      device,
      Float32Array.from({ length: batch * n * heads * d }, (_, i) => f(i)),
      [batch, n, heads * d],
      dtype,
    );
  const q = fill(nq, (i) => Math.sin(i));
  const k = fill(nk, (i) => Math.cos(i * 0.7));
  const v = fill(nk, (i) => Math.sin(i * 1.3));
  const flops = 4 * batch * heads * nq * nk * d;
  const base = attentionTiling(adapterTraits(device), d, nq, nk, { heads, causal: false });
  const fused = fusedTiling(adapterTraits(device), d, nq);
  const tilings: AttentionTiling[] = variants.map((t) => {
    if (t === "default") return base;
    if (t.startsWith("fused")) return { ...fused, ...JSON.parse(t.slice(5) || "{}") } as AttentionTiling;
    return { ...base, ...JSON.parse(t) } as AttentionTiling;
  });
  const cpu: number[][] = tilings.map(() => []);
  const gpu: number[][] = tilings.map(() => []);
  const load0 = load();
  for (const tiling of tilings) {
    // First use compiles the pipeline (seconds on lavapipe); it is not timed.
    const t0 = performance.now();
    attention(q, k, v, { heads, tiling }).dispose();
    await device.sync();
    console.log(`  warm-up ${JSON.stringify(tiling)}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < tilings.length; i++) {
      const c0 = workerCpuNs();
      const t0 = performance.now();
      const ms = await device.timeGpu(() => attention(q, k, v, { heads, tiling: tilings[i] }).dispose());
      cpu[i].push(flops / (workerCpuNs() - c0));
      gpu[i].push(ms ?? performance.now() - t0);
    }
  }
  const med = (a: number[]) => [...a].sort((p, r) => p - r)[Math.floor(a.length / 2)];
  console.log(`attention ${batch}×${nq}×${nk}, ${heads} heads × ${d}, ${dtype} (load ${load0} → ${load()}):`);
  for (const [i, name] of variants.entries()) {
    const rates = cpu[i].map((x) => x.toFixed(2)).join(", ");
    console.log(`  ${name}: ${med(cpu[i]).toFixed(2)} GFLOP/CPU-s [${rates}], gpu ${med(gpu[i]).toFixed(0)} ms`);
  }
  for (const t of [q, k, v]) t.dispose();
}
device.destroy();
process.exit(0);
