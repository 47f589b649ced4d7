/**
 * The GPU benchmark, for sessions lent a real GPU: `bash benchmarks/gpu.sh [--quick] [--only parts] [--out file]`.
 *
 * 0. check: every subgroup-matrix (tensor-core) kernel against its CPU reference (matrix-check.ts), natively
 *    where the adapter has subgroup matrices, emulated elsewhere; a WRONG row makes the script exit 1 at the end.
 * 1. kernels: the kernel table (every benchmarks/kernels-*.ts row, and f16 attention as the adapter runs it against
 *    the present fused kernel) against tfjs-backend-webgpu on the same adapter.
 * 2. unet: SD 1.5's UNet forward at batch 2 (classifier-free guidance) on a 64×64 latent (a 512×512 image), f32
 *    and, where the adapter has shader-f16, f16: random weights made here (benchmarks/random-weights.ts), so no
 *    checkpoint is needed. Wall clock to a device.sync() after one warm-up call (which compiles the pipelines),
 *    median of --repeats; peak GPU bytes = device.memory().peakTotalBytes (what the buffer pool holds: weights,
 *    live activations and free buffers kept for reuse, as torch's max_memory_reserved), one fresh
 *    Device per dtype. Its peer, in the same run: reference/bench_torch.py --random on PyTorch CUDA (the
 *    interpreter of --torch, `python3` by default: the one with CUDA on a lent GPU machine): float32 (TF32
 *    convolutions, PyTorch's default) for the f32 row, float16 under autocast with scaled_dot_product_attention
 *    for the f16 row.
 * 3. e2e: txt2img at 512² with 50 DDIM steps and guidance 7.5, text encoder to pixels (SD 1.5, random weights,
 *    the adapter's default dtype: f16 on GPUs with shader-f16), after a 2-step warm-up; peak GPU bytes of the run
 *    (held by the pool, as for the UNet; the table also gives the bytes live at most).
 * 4. Only with `--only tiles`: GEMM workgroup tiles timed against each other at the UNet's GEMM shapes
 *    (gemm-tiles.ts), printed, not stored.
 *
 * Rows carry the device they ran on and merge into benchmarks/results-gpu.json (or --out). --quick: small kernel
 * shapes, a small UNet of SD 1.5's layout on an 8×8 latent (with a 2-layer text encoder for e2e, 2 steps), to
 * check the script runs. Benchmarks are not tests: nothing here asserts a time.
 */
import { execFileSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { enableAutotune, isTileConfig, MemoryTuneStore, tileKey } from "@ldm/kernels";
import { StableDiffusion } from "@ldm/ldm";
import { loadClipTokenizer } from "@ldm/ldm/node";
import { Device, defaultDtype, type KernelTime, type ParamDType, Tensor } from "@ldm/tensor";
import { type ModelConfig, standardConfig } from "@ldm/weights";
import { Command, InvalidArgumentError } from "commander";
import { median, positiveInt } from "./common.ts";
import { runTileSweep } from "./gemm-tiles.ts";
import { loadPeer, registerKernelRows, runBenches, TABLE_HEADER, toResultRow } from "./harness.ts";
import { registerAttentionF16Rows } from "./kernels-ops.ts";
import { checkMatrixKernels, printMatrixChecks } from "./matrix-check.ts";
import { randomNetworks } from "./random-weights.ts";
import { DEVICE_ROW_KEYS, type DeviceRow, makeRow, writeResults } from "./results.ts";

const here = dirname(fileURLToPath(import.meta.url));
const PARTS = ["check", "kernels", "unet", "e2e", "tiles"] as const;
/** What runs without --only: the tile sweep is for choosing tiles, not a result row. */
const DEFAULT_PARTS: readonly Part[] = ["check", "kernels", "unet", "e2e"];
type Part = (typeof PARTS)[number];
const CLIP_TOKENS = 77;
/** The checkout: gpu.sh names it, since a bundled gpu.mjs does not sit in benchmarks/. */
const root = process.env.LDM_REPO_ROOT ?? join(here, "..");

function parts(value: string): Part[] {
  const list = value.split(",").map((p) => p.trim());
  const unknown = list.filter((p) => !(PARTS as readonly string[]).includes(p));
  if (unknown.length) throw new InvalidArgumentError(`unknown part ${unknown.join(", ")}; parts: ${PARTS.join(", ")}`);
  return list as Part[];
}

/** The adapter, without the feature and limit list: what the rows say they ran on. */
function deviceName(device: Device): string {
  return device.describe().split("; features")[0];
}

/** SD 1.5, or for --quick the same layout shrunk (fewer channels, two levels), small enough for a CPU adapter. */
function unetConfig(quick: boolean): ModelConfig {
  const config = standardConfig("sd1");
  if (quick) {
    config.unet = {
      ...config.unet,
      model_channels: 32,
      channel_mult: [1, 2],
      attention_resolutions: [1, 2],
      context_dim: 64,
    };
  }
  return config;
}

/** A tuned config in a log line: a GEMM tile key, or the config's JSON. */
function candidateName(candidate: unknown): string {
  return isTileConfig(candidate) ? tileKey(candidate) : JSON.stringify(candidate);
}

async function timeUnet(
  dtype: ParamDType,
  config: ModelConfig,
  latent: number,
  repeats: number,
  autotune: boolean,
  profile: boolean,
  matrices = true,
): Promise<{
  ms: number;
  recordMs: number;
  gpuMs: number | null;
  peakBytes: number;
  device: string;
  nonFinite: number;
  kernels: KernelTime[] | null;
}> {
  const device = await Device.create({ disableF16: dtype !== "f16", disableSubgroupMatrix: !matrices });
  if (!matrices && device.features.subgroupMatrix) throw new Error("internal: subgroup matrices were not turned off");
  // In memory: a run measures its own tuning, never an earlier run's cache.
  const tuner = autotune ? enableAutotune(device, { store: new MemoryTuneStore() }) : null;
  try {
    const { unet, dispose } = await randomNetworks(device, config, dtype, ["unet"]);
    if (!unet) throw new Error("internal: no UNet was built");
    const contextDim = config.unet.context_dim;
    const x = Tensor.from(device, new Float32Array(2 * 4 * latent * latent).fill(0.5), [2, 4, latent, latent]);
    const timesteps = Tensor.from(device, [500, 500], [2]);
    const context = Tensor.from(device, new Float32Array(2 * CLIP_TOKENS * contextDim).fill(0.1), [
      2,
      CLIP_TOKENS,
      contextDim,
    ]);
    // Wall time of a call, and the part of it the host spends recording (the GPU starts on the first submits
    // meanwhile), so the gap between the wall and the GPU's own time can be put on the host or not.
    const once = async () => {
      const start = performance.now();
      const out = unet.forward({ x, timesteps, context });
      const recorded = performance.now();
      await device.sync();
      out.dispose();
      return { wall: performance.now() - start, record: recorded - start };
    };
    if (tuner) {
      unet.forward({ x, timesteps, context }).dispose();
      for (const outcome of await tuner.tunePending()) {
        const times = outcome.times.map((t) => `${candidateName(t.candidate)} ${t.ms.toFixed(3)}`).join(", ");
        console.log(`  autotune ${outcome.key}: ${candidateName(outcome.chosen)} (${times} ms)`);
      }
    }
    const first = unet.forward({ x, timesteps, context });
    const nonFinite = (await first.toFloat32()).filter((v) => !Number.isFinite(v)).length;
    first.dispose();
    const times: { wall: number; record: number }[] = [];
    for (let r = 0; r < repeats; r++) times.push(await once());
    const peakBytes = device.memory().peakTotalBytes;
    const gpuMs = await device.timeGpu(() => unet.forward({ x, timesteps, context }).dispose());
    const kernels = profile ? await device.profileGpu(() => unet.forward({ x, timesteps, context }).dispose()) : null;
    for (const t of [x, timesteps, context]) t.dispose();
    dispose();
    return {
      ms: median(times.map((t) => t.wall)),
      recordMs: median(times.map((t) => t.record)),
      gpuMs,
      peakBytes,
      device: deviceName(device),
      nonFinite,
      kernels,
    };
  } finally {
    device.destroy();
  }
}

/**
 * One text-to-image run from the prompt to pixels (CLIP, the sampling loop with guidance, the VAE decode) on
 * random weights, after a 2-step warm-up run that compiles the pipelines; peak = the bytes the pool held at most
 * over the timed run (weights included), and of them the bytes live at most. --quick shrinks the UNet as unetConfig does.
 */
async function timeEndToEnd(
  dtype: ParamDType,
  quick: boolean,
  side: number,
  steps: number,
): Promise<{ ms: number; peakBytes: number; peakLiveBytes: number; device: string }> {
  // Releasing memory as on a GPU, also on a CPU adapter (off by default there), so lavapipe measures what a GPU holds.
  const device = await Device.create({ disableF16: dtype !== "f16", releaseMemory: true });
  try {
    const config = unetConfig(quick);
    if (quick)
      config.text = {
        ...config.text,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 2,
      };
    const { unet, vae, clip, dispose } = await randomNetworks(device, config, dtype, ["unet", "vae", "clip"]);
    if (!unet || !vae) throw new Error("internal: randomNetworks built no UNet or VAE");
    // From the checkout: a bundled gpu.mjs does not sit beside @ldm/ldm's shipped files.
    const { tokenizer } = loadClipTokenizer({
      vocab: join(root, "packages/ldm/vocab/clip/bpe_simple_vocab_16e6.txt.gz"),
    });
    const pipe = StableDiffusion.fromNetworks({ config, unet, vae, clip }, tokenizer, "random SD 1.5");
    const run = (n: number) =>
      pipe.txt2img({
        prompt: "a photograph of an astronaut riding a horse",
        steps: n,
        width: side,
        height: side,
        seed: 1,
      });
    await run(2);
    device.pool.resetPeak();
    const start = performance.now();
    await run(steps);
    const ms = performance.now() - start;
    const { peakTotalBytes: peakBytes, peakLiveBytes } = device.memory();
    dispose();
    return { ms, peakBytes, peakLiveBytes, device: deviceName(device) };
  } finally {
    device.destroy();
  }
}

/** The kernels of a profiled UNet call: the slowest (labels cut at 100 characters), then the time by kernel
 * family (the label's first field). */
function printProfile(kernels: KernelTime[], top = 25): void {
  const total = kernels.reduce((sum, k) => sum + k.ms, 0);
  const share = (ms: number) => `${((100 * ms) / total).toFixed(1)}%`;
  console.log(`\nGPU time per kernel, one call, each dispatch in its own pass: ${total.toFixed(1)} ms in all`);
  console.log("| kernel | dispatches | ms | share |\n|---|---|---|---|");
  for (const k of kernels.slice(0, top)) {
    console.log(`| ${k.label.slice(0, 100)} | ${k.dispatches} | ${k.ms.toFixed(2)} | ${share(k.ms)} |`);
  }
  const families = new Map<string, { dispatches: number; ms: number }>();
  for (const k of kernels) {
    const family = k.label.split(/[:|]/)[0];
    const f = families.get(family) ?? { dispatches: 0, ms: 0 };
    families.set(family, { dispatches: f.dispatches + k.dispatches, ms: f.ms + k.ms });
  }
  console.log("\n| kernel family | dispatches | ms | share |\n|---|---|---|---|");
  for (const [family, f] of [...families].sort((a, b) => b[1].ms - a[1].ms)) {
    console.log(`| ${family} | ${f.dispatches} | ${f.ms.toFixed(2)} | ${share(f.ms)} |`);
  }
}

interface TorchPeer {
  peer: string;
  unet_ms: number;
}

/**
 * SD 1.5's UNet on PyTorch CUDA, or the reason there is none (no such interpreter, no CUDA): float32 (TF32
 * convolutions, PyTorch's default) for our f32 row, float16 with scaled_dot_product_attention for our f16 row.
 */
function torchPeer(python: string, latent: number, repeats: number, dtype: ParamDType): TorchPeer | string {
  const script = join(root, "reference", "bench_torch.py");
  const args = [script, "--random", "--device", "cuda", "--latent", String(latent), "--repeats", String(repeats)];
  if (dtype === "f16") args.push("--half", "--sdpa");
  try {
    const stdout = execFileSync(python, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    return JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as TorchPeer;
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim().split("\n").at(-1);
    return stderr || (error as Error).message;
  }
}

const program = new Command()
  .option("--only <parts>", `comma-separated subset of ${PARTS.join(", ")}`, parts, [...DEFAULT_PARTS])
  .option("--quick", "small sizes: checks that the script runs (e.g. on lavapipe), not a measurement")
  .option("--repeats <n>", "timed UNet calls after the warm-up, median reported", positiveInt, 3)
  .option("--latent <S>", "UNet latent side (default 64, a 512×512 image; 8 with --quick)", positiveInt)
  .option("--steps <n>", "e2e: DDIM steps of the timed run (default 50; 2 with --quick)", positiveInt)
  .option("--e2e-f16", "e2e: f16 wherever the adapter has shader-f16, CPU adapters too (to measure f16 memory there)")
  .option("--autotune", "time the UNet with autotuned GEMM/conv tiles (tuned in the warm-up, in memory)")
  .option("--profile", "after timing, print the GPU time per kernel of one UNet call (needs timestamp-query)")
  .option("--no-peer", "no peers: kernels without tfjs, the UNet without PyTorch")
  .option("--torch <python>", "the Python whose torch (with CUDA) times the UNet's peer", "python3")
  .option("--out <file>", "results file the rows merge into", join(here, "results-gpu.json"));
program.parse();
const opts = program.opts<{
  only: Part[];
  quick?: boolean;
  repeats: number;
  latent?: number;
  steps?: number;
  e2eF16?: boolean;
  autotune?: boolean;
  profile?: boolean;
  peer: boolean;
  torch: string;
  out: string;
}>();
const quick = opts.quick ?? false;
const out = resolve(process.env.INIT_CWD ?? process.cwd(), opts.out);
const rows: DeviceRow[] = [];
let adapter = "";
let wrong = false;

if (opts.only.includes("check")) {
  const device = await Device.create();
  adapter = device.describe();
  console.log(`adapter: ${adapter}`);
  wrong = !printMatrixChecks(await checkMatrixKernels(device, quick));
  if (wrong) console.error("\nWRONG NUMBERS: a subgroup-matrix kernel differs from the CPU reference (table above)");
  device.destroy();
}

if (opts.only.includes("kernels")) {
  await registerKernelRows(quick);
  registerAttentionF16Rows(quick);
  const device = await Device.create();
  adapter = device.describe();
  console.log(`adapter: ${adapter}\n${TABLE_HEADER}`);
  const tf = opts.peer ? await loadPeer(device) : null;
  const results = await runBenches(device, tf);
  rows.push(...results.map((r) => ({ ...toResultRow(r), device: deviceName(device) })));
  device.destroy();
}

if (opts.only.includes("unet")) {
  const config = unetConfig(quick);
  const latent = opts.latent ?? (quick ? 8 : 64);
  const probe = await Device.create();
  // With f16 subgroup matrices, the f16 UNet also without them: what the tensor-core kernels moved, same run.
  const f16Matrices = probe.subgroupMatrixConfigs.some((c) => c.componentType === "f16");
  const variants: { dtype: ParamDType; matrices: boolean }[] = [
    { dtype: "f32", matrices: true },
    ...(probe.features.shaderF16 ? [{ dtype: "f16" as const, matrices: true }] : []),
    ...(f16Matrices ? [{ dtype: "f16" as const, matrices: false }] : []),
  ];
  adapter ||= probe.describe();
  probe.destroy();
  const model = quick ? "small UNet of SD 1.5's layout" : "SD 1.5 UNet";
  console.log(`\n${model}, random weights, batch 2 @ ${latent}×${latent} latent`);
  console.log(`\n| part | ms | peak GPU MiB | peer | peer ms | ratio |\n|---|---|---|---|---|---|`);
  for (const { dtype, matrices } of variants) {
    const repeats = quick ? 1 : opts.repeats;
    const result = await timeUnet(
      dtype,
      config,
      latent,
      repeats,
      opts.autotune ?? false,
      opts.profile ?? false,
      matrices,
    );
    if (result.nonFinite) console.warn(`warning: the ${dtype} UNet output has ${result.nonFinite} NaN/Inf values`);
    // The peer builds SD 1.5 itself, so --quick's shrunk UNet has none.
    const peer = opts.peer && !quick && matrices ? torchPeer(opts.torch, latent, repeats, dtype) : null;
    if (typeof peer === "string") console.warn(`no PyTorch peer for ${dtype}: ${peer}`);
    const timedPeer = typeof peer === "string" ? null : peer;
    const row = makeRow({
      name: `${model} (random weights) batch 2 @ ${latent}×${latent} latent (${dtype}${matrices ? "" : ", subgroup matrices off"}${opts.autotune ? ", autotuned" : ""})`,
      oursMs: result.ms,
      peakBytes: result.peakBytes,
      peer: timedPeer?.peer,
      peerMs: timedPeer?.unet_ms,
    });
    rows.push({ ...row, device: result.device });
    const mib = (result.peakBytes / 2 ** 20).toFixed(0);
    console.log(
      `| ${row.name} | ${row.ours_ms} | ${mib} | ${row.peer ?? "–"} | ${row.peer_ms ?? "–"} | ${row.ratio ?? "–"} |`,
    );
    const gpu = result.gpuMs === null ? "no timestamp-query" : `${result.gpuMs.toFixed(1)} ms`;
    console.log(
      `  ${dtype}: the host records a call in ${result.recordMs.toFixed(1)} ms (median); GPU time of a call recorded as one submit: ${gpu}`,
    );
    if (opts.profile) {
      if (result.kernels) printProfile(result.kernels);
      else console.warn("--profile: the adapter has no timestamp-query");
    }
  }
}

if (opts.only.includes("tiles")) {
  const device = await Device.create();
  adapter ||= device.describe();
  await runTileSweep(device, quick);
  device.destroy();
}

if (opts.only.includes("e2e")) {
  const latent = quick ? 8 : 64;
  const steps = opts.steps ?? (quick ? 2 : 50);
  const probe = await Device.create();
  const f16 = probe.features.shaderF16;
  if (opts.e2eF16 && !f16) throw new Error("--e2e-f16: this adapter has no shader-f16");
  const dtype = opts.e2eF16 ? "f16" : defaultDtype({ isCpu: probe.info.isCpu, shaderF16: f16 });
  adapter ||= probe.describe();
  probe.destroy();
  const result = await timeEndToEnd(dtype, quick, latent * 8, steps);
  const row = makeRow({
    name: `${quick ? "small model of SD 1.5's layout" : "SD 1.5"} (random weights) txt2img ${latent * 8}×${latent * 8}, ${steps} DDIM steps, guidance 7.5, text encoder to pixels (${dtype})`,
    oursMs: result.ms,
    peakBytes: result.peakBytes,
  });
  rows.push({ ...row, device: result.device });
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);
  console.log(`\n| end to end | ms | peak GPU MiB held | of it live at most |\n|---|---|---|---|`);
  console.log(`| ${row.name} | ${row.ours_ms} | ${mib(result.peakBytes)} | ${mib(result.peakLiveBytes)} |`);
}

writeResults(out, rows, adapter, DEVICE_ROW_KEYS);
console.log(`wrote ${rows.length} rows to ${out}`);
process.exit(wrong ? 1 : 0);
