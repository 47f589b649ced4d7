import type { Command } from "commander";
import { SAMPLING_DEFAULTS } from "../../diffusion/index.ts";
import type { StableDiffusion } from "../../pipeline/stable-diffusion.ts";
import {
  addModelOptions,
  asUserError,
  integerFlag,
  loadPipeline,
  type ModelFlags,
  numberFlag,
  sizeFlag,
} from "./pipeline-flags.ts";

interface BenchFlags extends ModelFlags {
  width?: string;
  height?: string;
  steps?: string;
  cfg?: string;
  json?: boolean;
}

/** Timings in milliseconds; "first" includes compiling the kernels' pipelines, "warm" is a repeat. */
export interface BenchReport {
  device: string;
  dtype: string;
  width: number;
  height: number;
  steps: number;
  guidanceScale: number;
  loadMs: number;
  clip: { firstMs: number; warmMs: number };
  /** Per sampler step: one UNet call (batch 2 with guidance) plus the sampler's host arithmetic. */
  step: { firstMs: number; meanMs: number; minMs: number };
  vaeDecode: { firstMs: number; warmMs: number };
  /** device.memory() after the run: bytes held by live tensors at most, and by the pool at most. */
  peakLiveBytes: number;
  peakTotalBytes: number;
}

export function registerBench(program: Command): void {
  const command = program
    .command("bench")
    .description("time a generation end to end: text encoder, each UNet step, VAE decode, and the peak GPU memory")
    .option("--width <px>", "multiple of 8 (default: the model's trained size, else 512)")
    .option("--height <px>", "multiple of 8 (default: the model's trained size, else 512)")
    .option("--steps <n>", "sampling steps (default 5)")
    .option("--cfg <scale>", `guidance scale (default ${SAMPLING_DEFAULTS.guidanceScale}: UNet batch 2; 1: batch 1)`)
    .option("--json", "print the report as JSON");
  addModelOptions(command).action(async (flags: BenchFlags) => {
    const width = flags.width === undefined ? undefined : sizeFlag("--width", flags.width);
    const height = flags.height === undefined ? undefined : sizeFlag("--height", flags.height);
    const steps = flags.steps === undefined ? 5 : integerFlag("--steps", flags.steps, 1);
    const guidanceScale = flags.cfg === undefined ? SAMPLING_DEFAULTS.guidanceScale : numberFlag("--cfg", flags.cfg);
    const loadStart = performance.now();
    const pipe = await loadPipeline(flags);
    const loadMs = performance.now() - loadStart;
    try {
      const size = { width: width ?? pipe.defaultSize, height: height ?? pipe.defaultSize };
      const report = await asUserError(() => bench(pipe, { ...size, steps, guidanceScale, loadMs }));
      console.log(flags.json ? JSON.stringify(report, null, 2) : format(report));
    } finally {
      pipe.dispose();
    }
  });
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

export async function bench(
  pipe: StableDiffusion,
  run: { width: number; height: number; steps: number; guidanceScale: number; loadMs: number },
): Promise<BenchReport> {
  const { device } = pipe;
  const encode = async () => {
    const context = await pipe.encodeText(["", "a photograph of an astronaut riding a horse"]);
    await device.sync();
    context.dispose();
  };
  const clip = { firstMs: await timed(encode), warmMs: await timed(encode) };
  const stepEnds: number[] = [];
  const result = await pipe.txt2img({
    prompt: "a photograph of an astronaut riding a horse",
    width: run.width,
    height: run.height,
    steps: run.steps,
    guidanceScale: run.guidanceScale,
    sampler: "ddim",
    seed: 0,
    onProgress: (p) => {
      stepEnds.push(p.elapsedMs);
    },
  });
  const stepMs = stepEnds.map((end, i) => end - (i ? stepEnds[i - 1] : 0));
  const later = stepMs.length > 1 ? stepMs.slice(1) : stepMs;
  const warmDecode = await timed(() => pipe.decode(result.latents, result.latentShape));
  const memory = device.memory();
  return {
    device: device.describe(),
    dtype: pipe.dtype,
    width: run.width,
    height: run.height,
    steps: stepMs.length,
    guidanceScale: run.guidanceScale,
    loadMs: run.loadMs,
    clip,
    step: {
      firstMs: stepMs[0],
      meanMs: later.reduce((a, b) => a + b, 0) / later.length,
      minMs: Math.min(...later),
    },
    vaeDecode: { firstMs: result.timings.decodeMs, warmMs: warmDecode },
    peakLiveBytes: memory.peakLiveBytes,
    peakTotalBytes: memory.peakTotalBytes,
  };
}

function format(r: BenchReport): string {
  const ms = (v: number) => `${v.toFixed(1)} ms`;
  const mib = (v: number) => `${(v / 2 ** 20).toFixed(1)} MiB`;
  return [
    `${r.device}, ${r.dtype}, ${r.width}×${r.height}, ${r.steps} steps, guidance ${r.guidanceScale}`,
    `load                 ${ms(r.loadMs)}`,
    `text encoder         first ${ms(r.clip.firstMs)}, warm ${ms(r.clip.warmMs)}`,
    `sampler step (UNet)  first ${ms(r.step.firstMs)}, then mean ${ms(r.step.meanMs)}, min ${ms(r.step.minMs)}`,
    `VAE decode           first ${ms(r.vaeDecode.firstMs)}, warm ${ms(r.vaeDecode.warmMs)}`,
    `peak GPU memory      ${mib(r.peakLiveBytes)} in live tensors, ${mib(r.peakTotalBytes)} held by the pool`,
  ].join("\n");
}
