/**
 * Peak GPU memory with and without the low-memory options, on SD 1.5's networks with random weights:
 * `pnpm bench:memory [--latent S] [--tile T] [--overlap O] [--dtype f16|f32] [--out file]`.
 *
 * - UNet at batch 2 (classifier-free guidance) on an S×S latent: one call of batch 2, then sequential CFG (two
 *   calls of batch 1) — both through the pipeline's unetDenoiser, as sampling runs it.
 * - VAE decode of one S×S latent: whole, then tiled (tiles of T latent cells overlapping by O) — both through
 *   AutoencoderKL.decodeToHost, as the pipeline decodes.
 * Peak = device.memory().peakLiveBytes over the call (the pool's peak reset before it): weights plus the
 * activations alive at once; the table also shows the activations alone (peak minus the bytes live before).
 * Each row merges into the results file (benchmarks/results.json by default) as soon as it is measured.
 * Benchmarks are not tests.
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { unetDenoiser } from "@ldm/ldm";
import { Device, type ParamDType, Tensor } from "@ldm/tensor";
import { standardConfig } from "@ldm/weights";
import { Command, Option } from "commander";
import { positiveInt } from "./common.ts";
import { randomNetworks } from "./random-weights.ts";
import { makeRow, writeResults } from "./results.ts";

const here = dirname(fileURLToPath(import.meta.url));
const CLIP_TOKENS = 77;

const program = new Command()
  .option("--latent <S>", "latent side (64 = a 512×512 image)", positiveInt, 32)
  .option("--tile <T>", "VAE tile side in latent cells (default S/2)", positiveInt)
  .option("--overlap <O>", "VAE tile overlap in latent cells (default T/4)", positiveInt)
  .addOption(new Option("--dtype <dtype>", "parameter and activation dtype").choices(["f16", "f32"]).default("f16"))
  .option("--out <file>", "results file the rows merge into", join(here, "results.json"));
program.parse();
const opts = program.opts<{ latent: number; tile?: number; overlap?: number; dtype: ParamDType; out: string }>();
const S = opts.latent;
const tileSize = opts.tile ?? Math.max(1, Math.floor(S / 2));
const overlap = opts.overlap ?? Math.floor(tileSize / 4);

const device = await Device.create({ disableF16: opts.dtype !== "f16" });
if (opts.dtype === "f16" && !device.features.shaderF16) throw new Error("--dtype f16: this adapter has no shader-f16");
const config = standardConfig("sd1");
const { unet, vae, dispose } = await randomNetworks(device, config, opts.dtype, ["unet", "vae"]);
if (!unet || !vae) throw new Error("internal: the UNet or the VAE was not built");

/** Wall ms and peak live bytes of one awaited call; `before` = bytes live when it started. */
async function measure(call: () => Promise<unknown>): Promise<{ ms: number; peak: number; before: number }> {
  await device.sync();
  device.pool.resetPeak();
  const before = device.memory().liveBytes;
  const start = performance.now();
  await call();
  await device.sync();
  return { ms: performance.now() - start, peak: device.memory().peakLiveBytes, before };
}

const file = resolve(process.env.INIT_CWD ?? process.cwd(), opts.out);
const MiB = (b: number) => (b / 2 ** 20).toFixed(0);
/** Prints a row and merges it into the results file at once: a long run stopped midway keeps what it measured. */
function record(name: string, m: { ms: number; peak: number; before: number }) {
  const row = makeRow({ name: `${name} (${opts.dtype})`, oursMs: m.ms, peakBytes: m.peak });
  writeResults(file, [row], device.describe());
  console.log(`| ${row.name} | ${row.ours_ms} | ${MiB(m.peak)} | ${MiB(m.peak - m.before)} |`);
}

console.log(`adapter: ${device.describe()}\n`);
console.log("| call | ms | peak GPU MiB | activations MiB |\n|---|---|---|---|");
const contextDim = config.unet.context_dim;
const context = Tensor.from(
  device,
  Float32Array.from({ length: 2 * CLIP_TOKENS * contextDim }, (_, i) => Math.sin(i) * 0.5),
  [2, CLIP_TOKENS, contextDim],
);
const x = Float32Array.from({ length: 2 * 4 * S * S }, (_, i) => Math.cos(i));
const latentShape = [2, 4, S, S];
// Warm-up at the smallest size that compiles the same pipelines: an 8×8 latent.
await unetDenoiser(unet, context, undefined, [2, 4, 8, 8])(new Float32Array(2 * 4 * 64), 500);
const unetName = `SD 1.5 UNet (random weights) batch 2 @ ${S}×${S} latent`;
record(`${unetName}, one call`, await measure(() => unetDenoiser(unet, context, undefined, latentShape)(x, 500)));
record(
  `${unetName}, sequential CFG (2 calls of batch 1)`,
  await measure(() => unetDenoiser(unet, context, undefined, latentShape, 2)(x, 500)),
);
context.dispose();

const z = Float32Array.from({ length: 4 * S * S }, (_, i) => Math.sin(i * 0.37));
const vaeName = `SD 1.5 VAE decode (random weights) @ ${S}×${S} latent`;
record(`${vaeName}, whole`, await measure(() => vae.decodeToHost(z, [1, 4, S, S])));
record(
  `${vaeName}, tiled ${tileSize}/${overlap}`,
  await measure(() => vae.decodeToHost(z, [1, 4, S, S], { tileSize, overlap })),
);

dispose();
console.log(`rows merged into ${file}`);
device.destroy();
process.exit(0);
