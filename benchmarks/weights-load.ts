/**
 * Loads a synthetic checkpoint with the exact keys and shapes of SD 1.5 (random fp16, ~2.1 GB) onto the GPU
 * through @ldm/weights, and measures load time and peak RSS growth beyond the GPU copies.
 *
 *   npx tsx benchmarks/weights-load.ts [--dir /tmp] [--dtype f16|f32|both] [--chunk-mib 16] [--checkpoint file]
 *
 * The checkpoint is generated once into --dir (never committed) and reused; --checkpoint loads another file
 * instead (e.g. a float32 one, to time the f32 → f16 conversion). Each load runs in a fresh child
 * process so the generator's memory does not count. Peak RSS comes from the kernel (VmHWM, reset through
 * /proc/self/clear_refs just before the load). On lavapipe the "GPU" buffers live in this process, so their
 * bytes are subtracted: what is left is what the loader itself holds (file chunks, conversion buffers, upload
 * staging), the number the < 300 MB target is about.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Device, type ParamDType, Tensor } from "@ldm/tensor";
import { modelParamShapes, SD_SCHEDULE, standardConfig, type TensorToWrite } from "@ldm/weights";
import { openCheckpoint, writeSafetensors } from "@ldm/weights/node";
import { xorshift } from "@ldm/weights/testing";

const MiB = 2 ** 20;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** Random half-precision values in ±[2^-6, 2^2): finite, normal, and cheap to make in bulk. */
function randomHalves(count: number, seed: number): Uint16Array {
  const next = xorshift(seed);
  const out = new Uint16Array(count);
  for (let i = 0; i < count; i++) {
    const bits = next();
    out[i] = (bits & 0x83ff) | ((9 + ((bits >>> 10) & 7)) << 10);
  }
  return out;
}

/** SD 1.5's single-file checkpoint, as v1-5-pruned-emaonly.safetensors stores it (fp16 weights, f32 schedule). */
async function generate(path: string): Promise<void> {
  const tensors: Record<string, TensorToWrite> = {};
  let seed = 1;
  for (const [key, shape] of modelParamShapes(standardConfig("sd1"))) {
    const size = shape.reduce((a, b) => a * b, 1);
    const s = seed++;
    tensors[key] = { dtype: "F16", shape, data: () => randomHalves(size, s) };
  }
  const t = SD_SCHEDULE.timesteps;
  const [a, b] = [Math.sqrt(SD_SCHEDULE.linear_start), Math.sqrt(SD_SCHEDULE.linear_end)];
  const betas = Float32Array.from({ length: t }, (_, i) => (a + ((b - a) * i) / (t - 1)) ** 2);
  tensors.betas = { dtype: "F32", shape: [t], data: betas };
  await writeSafetensors(path, tensors, { format: "pt", note: "synthetic: SD 1.5 keys and shapes, random values" });
}

function peakRssBytes(): number {
  const status = readFileSync("/proc/self/status", "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

interface LoadResult {
  dtype: ParamDType;
  tensors: number;
  tensorBytes: number;
  gpuBytes: number;
  seconds: number;
  baselineRss: number;
  peakRss: number;
}

/** In the child: allocate every parameter, reset the peak, load, report. */
async function load(path: string, dtype: ParamDType, chunkMiB: number): Promise<LoadResult> {
  const device = await Device.create();
  const checkpoint = await openCheckpoint(path, { chunkBytes: chunkMiB * MiB });
  const requests = [...checkpoint.source.keys()].map((key) => ({
    key,
    tensor: Tensor.empty(device, checkpoint.source.describe(key)!.shape, dtype),
  }));
  await device.sync();
  const tensorBytes = requests.reduce((n, r) => n + r.tensor.byteLength, 0);
  // What the pool allocated (size classes round up); Dawn zero-fills a buffer on first write, so all of it
  // becomes resident, not just the tensors' bytes.
  const gpuBytes = device.memory().liveBytes;
  global.gc?.();
  writeFileSync("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
  const baselineRss = process.memoryUsage.rss();
  const started = performance.now();
  await checkpoint.source.load(requests);
  const seconds = (performance.now() - started) / 1000;
  const peakRss = peakRssBytes();
  await checkpoint.close();
  device.destroy();
  return { dtype, tensors: requests.length, tensorBytes, gpuBytes, seconds, baselineRss, peakRss };
}

async function main(): Promise<void> {
  const child = process.argv.indexOf("--child");
  if (child >= 0) {
    const result = await load(
      process.argv[child + 1],
      process.argv[child + 2] as ParamDType,
      Number(arg("chunk-mib", "16")),
    );
    console.log(JSON.stringify(result));
    return;
  }
  const path = arg("checkpoint", join(arg("dir", tmpdir()), "ldm-bench-sd15-synthetic.safetensors"));
  if (!existsSync(path)) {
    console.log(`generating ${path} …`);
    const started = performance.now();
    await generate(path);
    console.log(
      `  ${(statSync(path).size / 1e9).toFixed(2)} GB in ${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
  }
  const fileBytes = statSync(path).size;
  // A warm page cache makes the numbers about the loader rather than the disk.
  execFileSync("cat", [path], { stdio: ["ignore", "ignore", "inherit"] });
  const dtypes = arg("dtype", "both") === "both" ? ["f16", "f32"] : [arg("dtype", "f16")];
  console.log(
    "| target dtype | tensors | tensor bytes | GPU buffers | load time | file read rate | RSS before | peak RSS | growth beyond GPU buffers |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const dtype of dtypes) {
    const out = execFileSync(
      process.execPath,
      // The same loader flags tsx started this process with.
      [
        ...process.execArgv,
        "--expose-gc",
        process.argv[1],
        "--child",
        path,
        dtype,
        "--chunk-mib",
        arg("chunk-mib", "16"),
      ],
      { env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? "/tmp" }, encoding: "utf8" },
    );
    const r: LoadResult = JSON.parse(out.trim().split("\n").at(-1)!);
    const growth = r.peakRss - r.baselineRss - r.gpuBytes;
    console.log(
      `| ${r.dtype} | ${r.tensors} | ${(r.tensorBytes / MiB).toFixed(0)} MiB | ${(r.gpuBytes / MiB).toFixed(0)} MiB | ${r.seconds.toFixed(1)} s | ${(fileBytes / MiB / r.seconds).toFixed(0)} MiB/s | ${(r.baselineRss / MiB).toFixed(0)} MiB | ${(r.peakRss / MiB).toFixed(0)} MiB | ${(growth / MiB).toFixed(0)} MiB |`,
    );
  }
}

await main();
