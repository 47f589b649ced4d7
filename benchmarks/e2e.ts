/**
 * End-to-end benchmark: `pnpm bench:e2e <checkpoint.safetensors> [config.yaml] [--latent S] [--repeats N] [--threads N] [--no-f16] [--cpu-lanes N] [--out file]`.
 *
 * Loads a single-file checkpoint (made for SD 1.5) through @ldm/ldm's loadModel and times, in f32 and (where the adapter has
 * shader-f16) f16: the UNet forward at batch 2 (classifier-free guidance) on an S×S latent, the VAE decode
 * of one S×S latent, and the CLIP text encoder on batch 2. The peer, reference/bench_torch.py --serve (PyTorch
 * CPU f32, our reference port, for the f16 rows too), stays loaded in a child process and times one call per
 * request. The two take turns, call by call, never running at once: per part one warm-up call each (ours
 * compiles its pipelines), then --repeats rounds of one peer call and one of ours, the first of the two
 * alternating round by round. A shared machine's speed drifts by tens of percent over minutes; paired calls
 * see the same minutes, so the ratio of the medians holds where times from runs minutes apart would not. The
 * per-round ratios are printed to show the spread. Times are wall clock, ours to a device.sync(). Both models
 * stay resident throughout, so the machine must hold both (at a 64×64 latent ≈ 4.3 GB for PyTorch's f32 SD 1.5
 * plus ≈ 5 GB of ours). Each dtype gets a fresh Device, so its peak GPU bytes
 * (device.memory().peakLiveBytes: weights plus activations) are its own. Rows merge into the results file
 * (benchmarks/results.json by default).
 * Benchmarks are not tests: nothing here asserts a time.
 */
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { adapterTraits } from "@ldm/kernels";
import { loadModel } from "@ldm/ldm/node";
import { Device, LAVAPIPE_DEFAULT_LANES, type ParamDType, Tensor } from "@ldm/tensor";
import { isTextToImage } from "@ldm/weights";
import { Command } from "commander";
import { median, positiveInt, pseudoRandom, requirePythonPeer, wallMs } from "./common.ts";
import { makeRow, type ResultRow, writeResults } from "./results.ts";

const here = dirname(fileURLToPath(import.meta.url));
const CLIP_TOKENS = 77;
const PEER_SCRIPT = join(here, "..", "reference", "bench_torch.py");
const MAKE_CHECKPOINT = "/usr/bin/python3 reference/full_size.py";

/** The parts timed, named as bench_torch.py --serve's commands. */
const PARTS = ["unet", "vae_decode", "clip"] as const;
type Part = (typeof PARTS)[number];

interface PairedTimes {
  ours: number[];
  peer: number[];
}

/** A failure of the peer process, reported in one line (its own error, if any, is on stderr above). */
class PeerError extends Error {}

/** bench_torch.py --serve in a child process: one timed call per request, one request at a time. */
class Peer {
  private readonly child: ChildProcessByStdio<Writable, Readable, null>;
  private readonly lines: string[] = [];
  private waiting?: { resolve: (line: string) => void; reject: (error: Error) => void };
  private ended?: PeerError;

  constructor(args: readonly string[]) {
    this.child = spawn("/usr/bin/python3", [PEER_SCRIPT, ...args, "--serve"], { stdio: ["pipe", "pipe", "inherit"] });
    createInterface({ input: this.child.stdout }).on("line", (line) => {
      if (this.waiting) this.waiting.resolve(line);
      else this.lines.push(line);
      this.waiting = undefined;
    });
    // 'close' comes after the last line of stdout has been read, so no answer is lost to it.
    this.child.on("close", (code, signal) => this.end(signal ? `was killed by ${signal}` : `exited with code ${code}`));
    this.child.on("error", (error) => this.end(`could not run (${error.message})`));
    // A write to a peer that has exited fails with EPIPE; the 'close' above is what reports it.
    this.child.stdin.on("error", () => {});
  }

  private end(why: string): void {
    this.ended ??= new PeerError(`the peer, ${PEER_SCRIPT}, ${why} before answering; its error, if any, is above`);
    this.waiting?.reject(this.ended);
    this.waiting = undefined;
  }

  /** The next line the peer prints, parsed. */
  async next<T>(): Promise<T> {
    const line =
      this.lines.shift() ??
      (await new Promise<string>((resolve, reject) => {
        if (this.ended) reject(this.ended);
        else this.waiting = { resolve, reject };
      }));
    try {
      return JSON.parse(line) as T;
    } catch {
      throw new PeerError(`the peer, ${PEER_SCRIPT}, printed '${line}', not a JSON line`);
    }
  }

  /** Wall-clock ms of one peer call of `part`. */
  async time(part: Part): Promise<number> {
    this.child.stdin.write(`${part}\n`);
    const reply = await this.next<{ part: string; ms: number }>();
    if (reply.part !== part) throw new PeerError(`the peer, ${PEER_SCRIPT}, answered '${reply.part}' to '${part}'`);
    return reply.ms;
  }

  kill(): void {
    this.child.kill();
  }
}

/**
 * One warm-up call of each, then `repeats` rounds of one peer call and one of ours; who goes first alternates,
 * so that neither always runs right after the other.
 */
async function paired(repeats: number, ours: () => Promise<number>, peer: () => Promise<number>): Promise<PairedTimes> {
  await peer();
  await ours();
  const times: PairedTimes = { ours: [], peer: [] };
  for (let round = 0; round < repeats; round++) {
    if (round % 2 === 0) {
      times.peer.push(await peer());
      times.ours.push(await ours());
    } else {
      times.ours.push(await ours());
      times.peer.push(await peer());
    }
  }
  return times;
}

/** Our three parts in `dtype` on a fresh Device, each paired with the peer's. */
async function timePaired(
  peer: Peer,
  checkpoint: string,
  config: string | undefined,
  dtype: ParamDType,
  latent: number,
  repeats: number,
  cpuLanes: number | undefined,
): Promise<{ times: Record<Part, PairedTimes>; peakBytes: number; adapter: string }> {
  const device = await Device.create({ cpuLanes });
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
    const calls: Record<Part, () => Tensor> = {
      unet: () => unet.forward({ x, timesteps, context }),
      vae_decode: () => vae.decode(z),
      clip: () => {
        const out = clip.forward(ids, { last: true }).lastHiddenState;
        if (!out) throw new Error("CLIP returned no last hidden state");
        return out;
      },
    };
    const times = {} as Record<Part, PairedTimes>;
    for (const part of PARTS) {
      times[part] = await paired(
        repeats,
        () => wallMs(device, calls[part]),
        () => peer.time(part),
      );
    }
    for (const t of [x, timesteps, context, z, ids]) t.dispose();
    return { times, peakBytes: device.memory().peakLiveBytes, adapter: device.describe() };
  } finally {
    model.dispose();
    device.destroy();
  }
}

const program = new Command()
  .argument("<checkpoint>", "SD 1.5 single-file .safetensors checkpoint")
  .argument("[config]", "its original-style YAML config (default: the checkpoint's path with .yaml)")
  .option("--latent <S>", "latent side (64 = a 512×512 image)", positiveInt, 16)
  .option("--repeats <n>", "timed rounds (one peer call, one of ours) after the warm-ups", positiveInt, 2)
  .option("--threads <n>", "torch CPU threads for the peer", positiveInt, 2)
  .option("--no-f16", "skip the f16 rows")
  .option(
    "--cpu-lanes <n>",
    "lavapipe's subgroup size (DeviceOptions.cpuLanes: 4, 8 or 16; its default is 8)",
    positiveInt,
  )
  .option("--out <file>", "results file the rows merge into", join(here, "results.json"));
program.parse();
const [checkpointArg, configArg] = program.args;
const { latent, repeats, threads, f16, cpuLanes, out } = program.opts<{
  latent: number;
  repeats: number;
  threads: number;
  f16: boolean;
  cpuLanes?: number;
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
const peer = new Peer([checkpoint, config, "--latent", String(latent), "--threads", String(threads)]);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    peer.kill();
    process.exit(128 + constants.signals[signal]);
  });
}
const partNames: Record<Part, string> = {
  unet: `${modelName} UNet batch 2 @ ${latent}×${latent} latent`,
  vae_decode: `${modelName} VAE decode @ ${latent}×${latent} latent`,
  clip: `${modelName} CLIP text encoder batch 2`,
};
const rows: ResultRow[] = [];
let adapter = "";
let peerFailure: PeerError | undefined;
try {
  const loaded = await peer.next<{ peer: string; load_ms: number }>();
  console.log(`peer: ${loaded.peer}, load ${(loaded.load_ms / 1000).toFixed(1)} s`);
  const probe = await Device.create({ cpuLanes });
  const dtypes: ParamDType[] = f16 && probe.features.shaderF16 ? ["f32", "f16"] : ["f32"];
  // Rows at lavapipe's own width keep their plain names; others (--cpu-lanes, LP_NATIVE_VECTOR_WIDTH) say theirs.
  const { isCpu, subgroupSize: lanes } = adapterTraits(probe);
  const width = isCpu && lanes !== null && lanes !== LAVAPIPE_DEFAULT_LANES ? `, ${lanes} lanes` : "";
  probe.destroy();
  for (const dtype of dtypes) {
    const ours = await timePaired(peer, checkpoint, config, dtype, latent, repeats, cpuLanes);
    adapter = ours.adapter;
    for (const part of PARTS) {
      const { ours: oursMs, peer: peerMs } = ours.times[part];
      const name = `${partNames[part]} (${dtype}${width})`;
      const ratios = peerMs.map((ms, round) => `${(ms / oursMs[round]).toFixed(2)}×`);
      console.log(`${name}: torch / ours by round ${ratios.join(" ")}`);
      rows.push(
        makeRow({
          name,
          oursMs: median(oursMs),
          peer: loaded.peer,
          peerMs: median(peerMs),
          peakBytes: ours.peakBytes,
        }),
      );
    }
  }
} catch (error) {
  if (!(error instanceof PeerError)) throw error;
  peerFailure = error;
} finally {
  peer.kill();
}
if (peerFailure) {
  console.error(peerFailure.message);
  process.exit(1);
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
