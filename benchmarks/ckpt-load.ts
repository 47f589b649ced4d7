/**
 * The PyTorch checkpoint reader at full size: writes a synthetic zip64 `.ckpt` (SD 1.5's keys and shapes in
 * float32 as Lightning's `{"state_dict": …}`, plus a 128 MiB optimizer tensor the loader must never read: 4.4 GB,
 * past zip's 4 GiB limit) and, as its peer, the same state dict as `.safetensors`; then loads each through
 * benchmarks/weights-load.ts (a fresh process per load; peak RSS growth beyond the GPU buffers, which on lavapipe
 * live in the process).
 *
 *   npx tsx benchmarks/ckpt-load.ts [--dir /tmp] [--dtype f16|f32|both] [--small]
 *
 * --small writes a 4 MiB-per-tensor-capped version (to check the writer: `torch.load` it with PyTorch).
 * The files stay in --dir (4.4 + 4.3 GB; never committed) and are reused.
 */
import { execFileSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { modelParamShapes, standardConfig, type TensorToWrite } from "@ldm/weights";
import { writeSafetensors } from "@ldm/weights/node";
import { writeTorchCheckpoint, xorshift } from "@ldm/weights/testing";

const MiB = 2 ** 20;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** 16 MiB of random normal float32 values in ±[2^-6, 2^2), repeated to fill any tensor (contents do not matter here). */
const PATTERN = (() => {
  const next = xorshift(7);
  const bits = new Uint32Array(4 * MiB);
  for (let i = 0; i < bits.length; i++) {
    const r = next();
    bits[i] = (r & 0x807fffff) | ((121 + ((r >>> 23) & 7)) << 23);
  }
  return new Uint8Array(bits.buffer);
})();

function tensorBytes(size: number): Uint8Array {
  const out = new Uint8Array(size * 4);
  for (let at = 0; at < out.length; at += PATTERN.length) out.set(PATTERN.subarray(0, out.length - at), at);
  return out;
}

async function generate(ckpt: string, safetensors: string, small: boolean): Promise<void> {
  const tensors: Record<string, TensorToWrite> = {};
  for (const [key, full] of modelParamShapes(standardConfig("sd1"))) {
    const shape = small ? full.map((d, i) => (i === 0 ? Math.min(d, 8) : d)) : [...full];
    tensors[key] = { dtype: "F32", shape, data: () => tensorBytes(shape.reduce((a, b) => a * b, 1)) };
  }
  const optimizer: TensorToWrite = {
    dtype: "F32",
    shape: [small ? 1024 : 32 * MiB],
    data: () => tensorBytes(small ? 1024 : 32 * MiB),
  };
  const scalars = { epoch: 0, global_step: 470000 };
  await writeTorchCheckpoint(ckpt, { tensors, wrap: "state_dict", scalars, optimizer });
  await writeSafetensors(safetensors, tensors, { format: "pt" });
}

async function main(): Promise<void> {
  const small = process.argv.includes("--small");
  const dir = arg("dir", tmpdir());
  const base = join(dir, small ? "ldm-bench-ckpt-small" : "ldm-bench-sd15-f32-zip64");
  const [ckpt, safetensors] = [`${base}.ckpt`, `${base}.safetensors`];
  if (!existsSync(ckpt) || !existsSync(safetensors)) {
    const started = performance.now();
    await generate(ckpt, safetensors, small);
    console.log(
      `wrote ${ckpt} (${(statSync(ckpt).size / 1e9).toFixed(2)} GB) and ${safetensors} (${(statSync(safetensors).size / 1e9).toFixed(2)} GB) in ${((performance.now() - started) / 1000).toFixed(0)} s`,
    );
  }
  if (small) return;
  const here = new URL(".", import.meta.url).pathname;
  for (const path of [ckpt, safetensors]) {
    console.log(`\n${path}:`);
    execFileSync(
      process.execPath,
      [...process.execArgv, join(here, "weights-load.ts"), "--checkpoint", path, "--dtype", arg("dtype", "f16")],
      { stdio: "inherit" },
    );
  }
}

await main();
