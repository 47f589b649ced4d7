/**
 * Kernel microbenchmark harness: a registry of rows, each timing one op of ours and, where it has one, the
 * same op on the peer runtime (tfjs-backend-webgpu) in the same process on the same WebGPU adapter.
 *
 * Timing, both sides: GPU timestamp queries, median of several samples (two for calls over a second)
 * after a warm-up call (which compiles pipelines). Ours: `device.timeGpu` around the recorded calls of a sample (one compute pass).
 * The peer: `tf.time(...).kernelMs`, which tfjs-backend-webgpu measures with timestamp queries too.
 * A sample repeats the call until it covers ~50 ms and reports the mean per call. A row may have a baseline of
 * ours instead of the peer (a fused op against its unfused ops), timed like ours and shown in the peer's columns.
 *
 * The benchmark files benchmarks/kernels-*.ts define their rows with `defineRows`; `registerKernelRows` imports
 * them all and registers the rows (SD 1.x shapes, or small ones for a smoke test).
 */
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { Device, DType, Tensor } from "@ldm/tensor";
import { median } from "./common.ts";
import type { ResultRow } from "./results.ts";

export type Tfjs = typeof import("@tensorflow/tfjs-core");
type TfTensor = import("@tensorflow/tfjs-core").Tensor;

/** Creates one implementation's inputs; `run` records one call and returns its output(s), which the harness disposes. */
type Setup = (device: Device) => { run: () => Tensor | Tensor[]; dispose: () => void };

export interface KernelBench {
  /** Row name, also the key in results.json, e.g. "matmul 4096×320×320". */
  name: string;
  dtype: DType;
  /** Floating-point operations of one call (GFLOP/s column). */
  flops?: number;
  /** Bytes one call must move at least (GB/s column), for memory-bound ops. */
  bytes?: number;
  ours: Setup;
  /** Another way of ours to compute the same (e.g. unfused), in place of the tfjs peer. */
  baseline?: { name: string; ours: Setup };
  /** The same op on tfjs; `run` returns its output, which the harness disposes. */
  peer?(tf: Tfjs): { run: () => TfTensor; dispose: () => void };
  /** How the peer's op differs from ours (layout etc.), printed under the table. */
  peerNote?: string;
}

export interface BenchResult {
  name: string;
  dtype: DType;
  ours_ms: number;
  peer: string | null;
  peer_ms: number | null;
  /** peer_ms / ours_ms: above 1, ours (than the peer or the baseline) is faster. */
  ratio: number | null;
  gflops: number | null;
  gbps: number | null;
  peer_gflops: number | null;
}

const rows: KernelBench[] = [];
/** Each benchmarks/kernels-*.ts defines its rows as a function of the size set, called by registerKernelRows. */
const definers: ((quick: boolean) => void)[] = [];

/** Registers the rows of a benchmark file: `define(quick)` calls registerBench for SD 1.x shapes, or small ones. */
export function defineRows(define: (quick: boolean) => void): void {
  definers.push(define);
}

/**
 * Imports every benchmarks/kernels-*.ts beside this file (a bundle imports them statically instead, and finds
 * none here) and registers their rows at the chosen sizes: `quick` = small shapes, a smoke test of the benchmark.
 */
export async function registerKernelRows(quick: boolean): Promise<void> {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const file of readdirSync(here)
    .filter((f) => /^kernels-.+\.ts$/.test(f))
    .sort()) {
    await import(pathToFileURL(join(here, file)).href);
  }
  for (const define of definers.splice(0)) define(quick);
}

/** A `dispose` for a row's inputs. */
export function disposer(...tensors: Tensor[]): () => void {
  return () => {
    for (const t of tensors) t.dispose();
  };
}

export function registerBench(row: KernelBench): void {
  if (rows.some((r) => r.name === row.name && r.dtype === row.dtype)) {
    throw new Error(`benchmark row '${row.name}' (${row.dtype}) is registered twice`);
  }
  rows.push(row);
}

export function registeredBenches(): readonly KernelBench[] {
  return rows;
}

const SAMPLE_MS = 50;
/** Calls slower than this get fewer samples, to keep the whole run within a few minutes. */
const SLOW_MS = 1000;

/** Mean GPU ms per call over samples of `reps` calls, median over samples. */
async function timeSamples(once: (reps: number) => Promise<number>, samples: number): Promise<number> {
  const first = await once(1);
  const reps = Math.max(1, Math.min(20, Math.ceil(SAMPLE_MS / Math.max(first, 1e-3))));
  const count = first > SLOW_MS ? Math.min(samples, 2) : samples;
  const times = [first];
  for (let s = 1; s < count; s++) times.push(await once(reps));
  return median(times);
}

async function timeOurs(device: Device, setup: Setup, samples: number): Promise<number> {
  const { run, dispose } = setup(device);
  const disposeAll = (out: Tensor | Tensor[]) => {
    for (const t of Array.isArray(out) ? out : [out]) t.dispose();
  };
  try {
    disposeAll(run()); // warm-up: compiles the pipelines
    await device.sync();
    return await timeSamples(async (reps) => {
      const ms = await device.timeGpu(() => {
        for (let r = 0; r < reps; r++) disposeAll(run());
      });
      if (ms === null) throw new Error("this adapter has no timestamp-query feature: GPU times are unavailable");
      return ms / reps;
    }, samples);
  } finally {
    dispose();
  }
}

async function timePeer(tf: Tfjs, row: KernelBench, samples: number): Promise<number> {
  const peer = row.peer?.(tf);
  if (!peer) throw new Error(`row '${row.name}' has no peer`);
  try {
    const warm = peer.run();
    await warm.data();
    warm.dispose();
    return await timeSamples(async (reps) => {
      const info = await tf.time(() => {
        for (let r = 0; r < reps; r++) peer.run().dispose();
      });
      if (typeof info.kernelMs !== "number") throw new Error(`tfjs reported no kernel time: ${JSON.stringify(info)}`);
      return info.kernelMs / reps;
    }, samples);
  } finally {
    peer.dispose();
  }
}

/** Loads tfjs with the WebGPU backend on our device's GPU object (it creates its own GPUDevice from it). */
export async function loadPeer(device: Device): Promise<Tfjs> {
  (globalThis as { navigator?: unknown }).navigator = { gpu: device.gpu };
  const tf = await import("@tensorflow/tfjs-core");
  await import("@tensorflow/tfjs-backend-webgpu");
  if (!(await tf.setBackend("webgpu"))) throw new Error("tfjs could not start its WebGPU backend");
  await tf.ready();
  return tf;
}

export interface RunOptions {
  samples?: number;
  peerSamples?: number;
  /** Only rows whose name contains one of these. */
  filter?: string[];
  log?: (line: string) => void;
}

export async function runBenches(device: Device, tf: Tfjs | null, opts: RunOptions = {}): Promise<BenchResult[]> {
  const { samples = 5, peerSamples = 3, filter, log = console.log } = opts;
  const selected = rows.filter((r) => !filter?.length || filter.some((f) => r.name.includes(f)));
  const results: BenchResult[] = [];
  for (const row of selected) {
    if (row.dtype === "f16" && !device.features.shaderF16) {
      log(`| ${row.name} | f16 | skipped: the adapter has no shader-f16 | | | | |`);
      continue;
    }
    const oursMs = await timeOurs(device, row.ours, samples);
    const peerMs = row.baseline
      ? await timeOurs(device, row.baseline.ours, samples)
      : tf && row.peer
        ? await timePeer(tf, row, peerSamples)
        : null;
    const result: BenchResult = {
      name: row.name,
      dtype: row.dtype,
      ours_ms: round(oursMs),
      peer: peerMs === null ? null : (row.baseline?.name ?? TFJS),
      peer_ms: peerMs === null ? null : round(peerMs),
      ratio: peerMs === null ? null : round(peerMs / oursMs),
      gflops: row.flops ? round(row.flops / oursMs / 1e6) : null,
      gbps: row.bytes ? round(row.bytes / oursMs / 1e6) : null,
      peer_gflops: row.flops && peerMs !== null ? round(row.flops / peerMs / 1e6) : null,
    };
    results.push(result);
    log(formatRow(result));
  }
  return results;
}

function round(x: number): number {
  return Number(x.toPrecision(4));
}

/** The results.json row of a kernel result: the dtype goes into the name, GB/s and the peer's GFLOP/s stay in the table. */
export function toResultRow(r: BenchResult): ResultRow {
  const { ours_ms, peer, peer_ms, ratio, gflops } = r;
  return { name: `${r.name} (${r.dtype})`, ours_ms, peer, peer_ms, ratio, gflops, peak_bytes: null };
}

const TFJS = "tfjs-backend-webgpu";

export const TABLE_HEADER =
  "| op | dtype | ours ms | GFLOP/s or GB/s | tfjs ms | tfjs GFLOP/s | speed-up (tfjs / ours) |\n|---|---|---|---|---|---|---|";

export function formatRow(r: BenchResult): string {
  const rate = r.gflops !== null ? `${r.gflops} GFLOP/s` : r.gbps !== null ? `${r.gbps} GB/s` : "";
  const peer = r.peer_ms === null ? "—" : r.peer === TFJS ? String(r.peer_ms) : `${r.peer_ms} (${r.peer})`;
  const peerRate = r.peer_gflops === null ? "—" : String(r.peer_gflops);
  const ratio = r.ratio === null ? "—" : `${r.ratio}×`;
  return `| ${r.name} | ${r.dtype} | ${r.ours_ms} | ${rate} | ${peer} | ${peerRate} | ${ratio} |`;
}
