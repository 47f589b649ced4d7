/**
 * The UNet calls of a sampling run, timed: `node --import tsx unet-calls.ts [--model file.safetensors] [--latent S]
 * [--calls N] [--mode record|replay|both] [--winograd-cache on|off|both]` (default: the built-in model, 16×16 latent,
 * batch 2, both modes, the Winograd convolutions' transformed weights kept as by default).
 *
 * Each call writes the latents and timesteps into the call's input tensors, runs the forward (the context's keys
 * and values projected once beforehand, as a sampling run does) and reads the prediction back. "record" runs the
 * modules every call, as unetDenoiser does; "replay" replays a recording of the call (Device.record), as
 * replayingUNetDenoiser does from a run's third call on; "both" alternates the two call by call, so the machine's
 * other load falls on both alike. `--winograd-cache both` (replay only) alternates two recordings, one made with the
 * transformed-weight cache off (setWinogradCacheBudget 0: weights transformed in every call, small images on the
 * direct kernel) and one with it on. Per variant it reports medians over --calls calls of the wall time, the main
 * thread's CPU time (the modules' JavaScript and Dawn's calls), the CPU time of the other threads (on lavapipe, the
 * kernels) and the time until the commands were recorded. Run under `node --cpu-prof` to see where the main
 * thread's time goes. Benchmarks are not tests: nothing here asserts a time.
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { setWinogradCacheBudget, WINOGRAD_CACHE_BYTES, winogradCacheStats } from "@ldm/kernels";
import { loadModel } from "@ldm/ldm/node";
import { Device, Tensor } from "@ldm/tensor";
import { Command, Option } from "commander";
import { median, positiveInt, pseudoRandom, workerCpuNs } from "./common.ts";

const BUILT_IN = join(import.meta.dirname, "../packages/ldm/models/emoji-ldm/emoji-ldm.safetensors");
const CONTEXT_TOKENS = 77;

const program = new Command()
  .option("--model <file>", "checkpoint with its .yaml beside it (default: the built-in model)")
  .option("--latent <S>", "latent side", positiveInt, 16)
  .option("--calls <N>", "timed calls of each mode", positiveInt, 20)
  .addOption(
    new Option("--mode <mode>", "record the forward every call, replay a recording, or alternate the two")
      .choices(["record", "replay", "both"])
      .default("both"),
  )
  .addOption(
    new Option("--winograd-cache <state>", "keep Winograd's transformed weights (the default), not, or alternate")
      .choices(["on", "off", "both"])
      .default("on"),
  );
program.parse();
const opts = program.opts<{
  model?: string;
  latent: number;
  calls: number;
  mode: "record" | "replay" | "both";
  winogradCache: "on" | "off" | "both";
}>();
if (opts.winogradCache === "both" && opts.mode !== "replay") {
  throw new Error(
    "unet-calls: --winograd-cache both needs --mode replay (the cache must not change under a recording)",
  );
}
const checkpoint = opts.model ? resolve(process.env.INIT_CWD ?? process.cwd(), opts.model) : BUILT_IN;

/** CPU ns of the main thread (its /proc schedstat). */
function mainCpuNs(): number {
  return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]);
}

const startup = performance.now();
const device = await Device.create();
const caches = opts.winogradCache === "both" ? [false, true] : [opts.winogradCache === "on"];
// Off first: turning the cache off frees the weights an earlier recording would read.
setWinogradCacheBudget(device, caches[0] ? WINOGRAD_CACHE_BYTES : 0);
const networks = await loadModel(checkpoint, {
  device,
  config: checkpoint.replace(/\.safetensors$/, ".yaml"),
  components: ["unet"],
});
const loadMs = performance.now() - startup;
const unet = networks.unet;
if (!unet) throw new Error("unet-calls: the checkpoint has no UNet");
const contextDim = networks.config.unet.context_dim;
if (contextDim === undefined) throw new Error("unet-calls: the UNet has no cross-attention (context_dim)");
const S = opts.latent;
const latentSize = 2 * networks.config.unet.in_channels * S * S;
const context = Tensor.from(device, pseudoRandom(2 * CONTEXT_TOKENS * contextDim, 7), [2, CONTEXT_TOKENS, contextDim]);
const projected = unet.projectContext(context);
const x = pseudoRandom(latentSize, 42);

interface CallTimes {
  wall: number;
  main: number;
  workers: number;
  /** Until the forward's commands were recorded (or replayed). */
  record: number;
}

const latentShape = [2, networks.config.unet.in_channels, S, S];
const input = { x: Tensor.from(device, x, latentShape), t: Tensor.from(device, [0, 0], [2]) };
const forward = () => device.tidy(() => unet.forward({ x: input.x, timesteps: input.t, context, projected }));

interface Variant {
  name: string;
  replay: boolean;
  /** The replayed call: the second call's recording, as replayingUNetDenoiser makes it. */
  recorded: ReturnType<typeof device.record<Tensor>>;
}

const variants: Variant[] = [];
for (const cached of caches) {
  setWinogradCacheBudget(device, cached ? WINOGRAD_CACHE_BYTES : 0);
  forward().dispose();
  const recorded = device.record(forward);
  if (!recorded.recording) throw new Error(`unet-calls: the UNet call cannot be replayed: ${recorded.notReplayable}`);
  const cache = opts.winogradCache === "both" ? `, Winograd cache ${cached ? "on" : "off"}` : "";
  const modes = opts.mode === "both" ? [false, true] : [opts.mode === "replay"];
  for (const replay of modes) variants.push({ name: `${replay ? "replayed" : "recorded"}${cache}`, replay, recorded });
}

async function call(t: number, { replay, recorded }: Variant): Promise<CallTimes> {
  const [main0, workers0, start] = [mainCpuNs(), workerCpuNs(), performance.now()];
  device.write(input.x.buffer, 0, x);
  device.write(input.t.buffer, 0, new Float32Array([t, t]));
  const out = replay ? recorded.result : forward();
  if (replay) recorded.recording?.run();
  const record = performance.now() - start;
  await out.toFloat32();
  if (!replay) out.dispose();
  return {
    wall: performance.now() - start,
    main: (mainCpuNs() - main0) / 1e6,
    workers: (workerCpuNs() - workers0) / 1e6,
    record,
  };
}

for (const v of variants) await call(981, v);
const times = new Map<Variant, CallTimes[]>(variants.map((v) => [v, []]));
// Variants alternate call by call, so the machine's other load falls on all alike.
for (let i = 0; i < opts.calls; i++) {
  for (const v of variants) times.get(v)?.push(await call(941 - 20 * (i % 45), v));
}
const kept = winogradCacheStats(device);
console.log(
  `${checkpoint}, ${S}×${S} latent, batch 2; device + load ${loadMs.toFixed(0)} ms; ${device.pipelineCount} pipelines; ` +
    `Winograd weights kept: ${kept.entries} (${(kept.bytes / 2 ** 20).toFixed(1)} MiB)`,
);
for (const [v, list] of times) {
  const med = (k: keyof CallTimes) => median(list.map((c) => c[k])).toFixed(1);
  console.log(
    `${v.name} (median of ${list.length}, ${v.recorded.recording?.dispatches} dispatches): wall ${med("wall")} ms, ` +
      `main thread CPU ${med("main")} ms, other threads CPU ${med("workers")} ms, commands recorded in ${med("record")} ms`,
  );
}
for (const recorded of new Set(variants.map((v) => v.recorded))) {
  recorded.recording?.dispose();
  recorded.result.dispose();
}
input.x.dispose();
input.t.dispose();
projected.dispose();
context.dispose();
networks.dispose();
device.destroy();
process.exit(0);
