/**
 * End-to-end benchmark: `pnpm bench:e2e <checkpoint.safetensors> [config.yaml] [--latent S] [--repeats N] [--threads N] [--out file]`.
 *
 * Loads a single-file checkpoint (made for SD 1.5) through @ldm/ldm's loadModel and times, in f32 and (where the adapter has
 * shader-f16) f16: the UNet forward at batch 2 (classifier-free guidance) on an S×S latent, the VAE decode
 * of one S×S latent, and the CLIP text encoder on batch 2. The peer, reference/bench_torch.py (PyTorch CPU,
 * our reference port), runs the same three in a child process first, so the two never share the cores.
 * Times are wall clock to a device.sync() after one warm-up call (which compiles the pipelines), median of
 * the repeats — the same clock the peer uses. Each dtype gets a fresh Device, so its peak GPU bytes
 * (device.memory().peakLiveBytes: weights plus activations) are its own. Rows merge into the results file
 * (benchmarks/results.json by default).
 * Benchmarks are not tests: nothing here asserts a time.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadModel } from "@ldm/ldm/node";
import { Device, type ParamDType, Tensor } from "@ldm/tensor";
import { isTextToImage } from "@ldm/weights";
import { Command } from "commander";
import { medianMs, positiveInt, pseudoRandom, requirePythonPeer } from "./common.ts";
import { makeRow, type ResultRow, writeResults } from "./results.ts";

const here = dirname(fileURLToPath(import.meta.url));
const CLIP_TOKENS = 77;
const PEER_SCRIPT = join(here, "..", "reference", "bench_torch.py");
const MAKE_CHECKPOINT = "/usr/bin/python3 reference/full_size.py";

interface Timings {
  unet_ms: number;
  vae_decode_ms: number;
  clip_ms: number;
}

interface PeerReport extends Timings {
  peer: string;
  latent: number;
  load_ms: number;
}

async function timeOurs(
  checkpoint: string,
  config: string | undefined,
  dtype: ParamDType,
  latent: number,
  repeats: number,
): Promise<{ timings: Timings; peakBytes: number; adapter: string }> {
  const device = await Device.create();
  const model = await loadModel(checkpoint, { device, dtype, config });
  try {
    const { unet, vae, clip, config: modelConfig } = model;
    if (!unet || !vae || !clip || !isTextToImage(modelConfig)) {
      throw new Error(`${checkpoint}: not a text-to-image checkpoint with a unet, vae and clip`);
    }
    const contextDim = modelConfig.unet.context_dim;
    const x = Tensor.from(device, pseudoRandom(2 * 4 * latent * latent, 1), [2, 4, latent, latent]);
    const timesteps = Tensor.from(device, [500, 500], [2]);
    const context = Tensor.from(device, pseudoRandom(2 * CLIP_TOKENS * contextDim, 2), [2, CLIP_TOKENS, contextDim]);
    const z = Tensor.from(device, pseudoRandom(4 * latent * latent, 3), [1, 4, latent, latent]);
    const ids = Tensor.from(
      device,
      Int32Array.from({ length: 2 * CLIP_TOKENS }, (_, i) => (i * 7919) % modelConfig.text.vocab_size),
      [2, CLIP_TOKENS],
      "i32",
    );
    const timings: Timings = {
      unet_ms: await medianMs(device, repeats, () => unet.forward({ x, timesteps, context })),
      vae_decode_ms: await medianMs(device, repeats, () => vae.decode(z)),
      clip_ms: await medianMs(device, repeats, () => {
        const out = clip.forward(ids, { last: true }).lastHiddenState;
        if (!out) throw new Error("CLIP returned no last hidden state");
        return out;
      }),
    };
    for (const t of [x, timesteps, context, z, ids]) t.dispose();
    return { timings, peakBytes: device.memory().peakLiveBytes, adapter: device.describe() };
  } finally {
    model.dispose();
    device.destroy();
  }
}

function runPeer(checkpoint: string, config: string, latent: number, repeats: number, threads: number): PeerReport {
  const stdout = execFileSync(
    "/usr/bin/python3",
    [
      PEER_SCRIPT,
      checkpoint,
      config,
      "--latent",
      String(latent),
      "--repeats",
      String(repeats),
      "--threads",
      String(threads),
    ],
    { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] },
  );
  return JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as PeerReport;
}

const program = new Command()
  .argument("<checkpoint>", "SD 1.5 single-file .safetensors checkpoint")
  .argument("[config]", "its original-style YAML config (default: the checkpoint's path with .yaml)")
  .option("--latent <S>", "latent side (64 = a 512×512 image)", positiveInt, 16)
  .option("--repeats <n>", "timed runs after the warm-up, median reported", positiveInt, 2)
  .option("--threads <n>", "torch CPU threads for the peer", positiveInt, 2)
  .option("--no-f16", "skip the f16 rows")
  .option("--out <file>", "results file the rows merge into", join(here, "results.json"));
program.parse();
const [checkpointArg, configArg] = program.args;
const { latent, repeats, threads, f16, out } = program.opts<{
  latent: number;
  repeats: number;
  threads: number;
  f16: boolean;
  out: string;
}>();
// `pnpm bench:e2e` runs from benchmarks/: paths are relative to where pnpm was started.
const cwd = process.env.INIT_CWD ?? process.cwd();
const checkpoint = resolve(cwd, checkpointArg);
const config = configArg ? resolve(cwd, configArg) : checkpoint.replace(/\.safetensors$/, ".yaml");
const modelName = basename(checkpoint, ".safetensors");
for (const path of [checkpoint, config]) {
  if (!existsSync(path)) {
    console.error(`${path} does not exist. The random-weight SD 1.5 checkpoint is made by \`${MAKE_CHECKPOINT}\``);
    process.exit(1);
  }
}

requirePythonPeer(`the peer, ${PEER_SCRIPT},`);
let peer: PeerReport;
try {
  peer = runPeer(checkpoint, config, latent, repeats, threads);
} catch {
  console.error(`the peer, ${PEER_SCRIPT}, failed: its error is above`);
  process.exit(1);
}
console.log(`peer: ${peer.peer}, load ${(peer.load_ms / 1000).toFixed(1)} s`);

const rows: ResultRow[] = [];
const probe = await Device.create();
const dtypes: ParamDType[] = f16 && probe.features.shaderF16 ? ["f32", "f16"] : ["f32"];
probe.destroy();
let adapter = "";
for (const dtype of dtypes) {
  const ours = await timeOurs(checkpoint, config, dtype, latent, repeats);
  adapter = ours.adapter;
  const parts: [keyof Timings, string][] = [
    ["unet_ms", `${modelName} UNet batch 2 @ ${latent}×${latent} latent`],
    ["vae_decode_ms", `${modelName} VAE decode @ ${latent}×${latent} latent`],
    ["clip_ms", `${modelName} CLIP text encoder batch 2`],
  ];
  for (const [key, name] of parts) {
    rows.push(
      makeRow({
        name: `${name} (${dtype})`,
        oursMs: ours.timings[key],
        peer: peer.peer,
        peerMs: peer[key],
        peakBytes: ours.peakBytes,
      }),
    );
  }
}

console.log(`\nadapter: ${adapter}\n`);
console.log("| part (dtype) | ours ms | torch ms | ratio (torch / ours) | our peak GPU MiB |\n|---|---|---|---|---|");
for (const r of rows) {
  console.log(
    `| ${r.name} | ${r.ours_ms} | ${r.peer_ms} | ${r.ratio}× | ${((r.peak_bytes ?? 0) / 2 ** 20).toFixed(0)} |`,
  );
}

const file = resolve(cwd, out);
writeResults(file, rows, adapter);
console.log(`wrote ${rows.length} rows to ${file}`);
process.exit(0);
