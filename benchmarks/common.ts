/** Small helpers the benchmark scripts share. */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { isTileConfig, type TileConfig } from "@ldm/kernels";
import { type Device, Tensor } from "@ldm/tensor";
import { InvalidArgumentError } from "commander";

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * CPU time (ns) of every thread of this process but the main one, from /proc/self/task/<tid>/schedstat: on
 * lavapipe, the GPU work — which a shared machine's other load does not inflate the way it does wall time.
 * Linux only.
 */
export function workerCpuNs(): number {
  let total = 0;
  for (const tid of readdirSync("/proc/self/task")) {
    if (Number(tid) === process.pid) continue;
    // A thread that ended since the listing has no file left: it counts as 0.
    const file = `/proc/self/task/${tid}/schedstat`;
    if (existsSync(file)) total += Number(readFileSync(file, "utf8").split(" ")[0]);
  }
  return total;
}

/** A commander argument parser for positive integer flags. */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`must be a positive integer, got '${value}'`);
  return n;
}

/** The Python modules the PyTorch peers (reference/bench_*.py, reference/full_size.py) import. */
const PEER_MODULES = ["torch", "regex", "yaml", "numpy", "PIL"];

/**
 * Exits with one line naming the command that installs the PyTorch peer's packages when Debian's
 * /usr/bin/python3 cannot import them (a fresh machine: they are an opt-in part of the setup script).
 */
export function requirePythonPeer(what: string): void {
  const probe = spawnSync("/usr/bin/python3", ["-c", `import ${PEER_MODULES.join(", ")}`], { encoding: "utf8" });
  if (probe.status === 0) return;
  const reason = probe.error ? "there is no /usr/bin/python3" : (probe.stderr.trim().split("\n").at(-1) ?? "");
  console.error(
    `${what} needs Debian's python3-torch, python3-regex, python3-yaml, python3-numpy and python3-pil (${reason}): ` +
      "install them with `pnpm setup:bench` (bash scripts/setup-system.sh --bench-peers)",
  );
  process.exit(1);
}

/** Wall-clock ms of one call of `record`: its GPU work recorded, then awaited. */
export async function wallMs(device: Device, record: () => Tensor): Promise<number> {
  const start = performance.now();
  const out = record();
  await device.sync();
  out.dispose();
  return performance.now() - start;
}

/** Median wall-clock ms (wallMs) of `record`, after one warm-up call. */
export async function medianMs(device: Device, repeats: number, record: () => Tensor): Promise<number> {
  await wallMs(device, record);
  const times: number[] = [];
  for (let r = 0; r < repeats; r++) times.push(await wallMs(device, record));
  return median(times);
}

/** Deterministic inputs in [-1, 1) (values do not change the work done; seeded so runs are alike). */
export function pseudoRandom(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = ((state >>> 0) / 2 ** 32) * 2 - 1;
  }
  return out;
}

/**
 * Variants of one computation of `flops` FLOPs, taking turns for `rounds` rounds: per variant the medians of FLOPs per
 * second of CPU time of lavapipe's threads (workerCpuNs; what a shared machine does not disturb) and per second of
 * GPU time (timestamps, else wall time), in GFLOP.
 */
export async function interleavedRates(
  variants: readonly { device: Device; run: () => void }[],
  flops: number,
  rounds: number,
): Promise<{ cpu: number; gpu: number }[]> {
  const cpu = variants.map(() => [] as number[]);
  const gpu = variants.map(() => [] as number[]);
  for (let round = 0; round < rounds; round++) {
    for (const [i, v] of variants.entries()) {
      const c0 = workerCpuNs();
      const t0 = performance.now();
      const ms = await v.device.timeGpu(v.run);
      cpu[i].push(flops / (workerCpuNs() - c0));
      gpu[i].push(flops / 1e6 / (ms ?? performance.now() - t0));
    }
  }
  return variants.map((_, i) => ({ cpu: median(cpu[i]), gpu: median(gpu[i]) }));
}

/** x [B, Cin, S, S] and a 3×3 weight [Cout, Cin, 3, 3] of smooth deterministic values, for convolution benchmarks. */
export function convOperands(device: Device, B: number, cin: number, cout: number, S: number): [Tensor, Tensor] {
  const x = Tensor.from(
    device,
    Float32Array.from({ length: B * cin * S * S }, (_, i) => Math.sin(i)),
    [B, cin, S, S],
  );
  const w = Tensor.from(
    device,
    Float32Array.from({ length: cout * cin * 9 }, (_, i) => Math.cos(i) * 0.05),
    [cout, cin, 3, 3],
  );
  return [x, w];
}

/** A GEMM tile from tiles.ts's tileKey form for subgroup tiles (sg<lanes>x<subgroups>r<rows><m|n>c<cols>[u]). */
export function parseGemmTiles(key: string): TileConfig {
  const m = /^sg(\d+)x(\d+)r(\d+)([mn])c(\d+)(u?)$/.exec(key);
  if (!m) throw new Error(`--tiles ${key} is not a subgroup tile key like sg8x4r24nc1u`);
  const [lanes, subgroups, rows, cols] = [1, 2, 3, 5].map((i) => Number(m[i]));
  const laneOwns = m[4] as "m" | "n";
  const tiles = { kind: "subgroup" as const, lanes, subgroups, rows, laneOwns, cols, uniformB: m[6] === "u" };
  if (!isTileConfig(tiles)) throw new Error(`--tiles ${key} is not a config the GEMM kernels can run`);
  return tiles;
}
