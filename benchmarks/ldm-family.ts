/**
 * The paper's released models at full size, one sampling step and one decode each:
 * `pnpm bench:family [model…] [--latent S] [--repeats N] [--threads N] [--no-peer] [--upstream DIR] [--taming DIR] [--out file]`.
 *
 * Models are the rows of packages/weights/test/fixtures/full-size.json (every config CompVis/latent-diffusion
 * releases, with the parameter counts of its original modules; reference/full_size_counts.py), all of them unless
 * named. Per model, with random weights made here (random-weights.ts over the config's exact keys and shapes, f32,
 * so no checkpoint file is needed):
 * - the UNet call of one sampling step at the model's own latent size (the config's image_size) or --latent S
 *   (rounded up to a multiple of the UNet's downsampling factor, which the original needs):
 *   batch 2 where the model samples with classifier-free guidance by default (cond and uncond in one call, as
 *   DDIMSampler), else 1; the cross-attention context as its cond stage makes it (ClassEmbedder 1 token, BERT
 *   max_seq_len tokens) and c_concat for concat models; timestep 500;
 * - the first stage's decode of one latent of that size (quantized first for VQ); for a first stage alone
 *   (models/first_stage_models/*), only this, at its training resolution's latent by default.
 * The peer, reference/bench_ldm_family.py, builds the same model from the ORIGINAL CompVis/latent-diffusion
 * modules (--upstream, --taming: `git archive`s of CompVis/latent-diffusion and taming-transformers, never
 * committed) with PyTorch's default initialisation and times the same two calls on the CPU, in a child process
 * before ours so the two never share the cores. Times: wall clock to device.sync() after one warm-up call, median
 * of --repeats, as the peer's. A fresh Device per model; peak GPU bytes are its own. Rows merge into the results
 * file (benchmarks/results.json by default). A config the library cannot read is listed as skipped with why.
 * Benchmarks are not tests: nothing here asserts a time.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { modelInputs } from "@ldm/ldm";
import { Device, Tensor } from "@ldm/tensor";
import {
  ConfigError,
  conditioningKey,
  firstStageConfigFromYaml,
  type LdmConfig,
  ldmConfigFromYaml,
  type VaeConfig,
} from "@ldm/weights";
import { Command } from "commander";
import { medianMs, positiveInt, pseudoRandom, requirePythonPeer } from "./common.ts";
import { randomFirstStage, randomNetworks } from "./random-weights.ts";
import { makeRow, type ResultRow, writeResults } from "./results.ts";

const here = dirname(fileURLToPath(import.meta.url));
const TABLE = join(here, "..", "packages", "weights", "test", "fixtures", "full-size.json");
const PEER_SCRIPT = join(here, "..", "reference", "bench_ldm_family.py");
const CLIP_TOKENS = 77;

interface TableRow {
  config: string;
  model: { target: string; params: Record<string, unknown> };
}

/** A released model: a LatentDiffusion (`ldm`), or a first stage alone (its `vae` only). */
interface Model {
  vae: VaeConfig;
  ldm?: LdmConfig;
}

/** The model of a table row; JSON is YAML, so its `model` section goes to the YAML readers as it is. */
function readModel(row: TableRow): Model {
  const text = JSON.stringify({ model: row.model });
  const alone = firstStageConfigFromYaml(text, row.config);
  if (alone) return { vae: alone.vae };
  const ldm = ldmConfigFromYaml(text, row.config);
  return { vae: ldm.vae, ldm };
}

interface PeerReport {
  peer: string;
  unet_ms?: number;
  decode_ms: number;
}

/** What one UNet call of a sampling step takes, from the config: batch, context length, c_concat channels. */
function stepShape(config: LdmConfig) {
  const stage = config.cond_stage;
  const context =
    config.unet.context_dim === undefined
      ? 0
      : config.text
        ? CLIP_TOKENS
        : stage?.target === "BERTEmbedder"
          ? stage.max_seq_len
          : 1; // ClassEmbedder: one embedding per class label
  const key = conditioningKey(config);
  const latentChannels = config.vae.embed_dim;
  return {
    batch: modelInputs(config).guidanceScale > 1 ? 2 : 1,
    context,
    latentChannels,
    concat: key === "concat" || key === "hybrid" ? config.unet.in_channels - latentChannels : 0,
  };
}

/** Our times: the UNet step (a LatentDiffusion) and the decode, of random networks on a fresh Device. */
async function timeOurs(model: Model, latent: number, repeats: number) {
  const device = await Device.create();
  const { unet, vae, dispose } = model.ldm
    ? await randomNetworks(device, model.ldm, "f32", ["unet", "vae"])
    : await randomFirstStage(device, model.vae, "f32");
  try {
    const tensor = (shape: number[], seed: number) =>
      Tensor.from(
        device,
        pseudoRandom(
          shape.reduce((a, b) => a * b, 1),
          seed,
        ),
        shape,
      );
    let unetMs: number | undefined;
    const step = model.ldm && stepShape(model.ldm);
    if (model.ldm && step && unet) {
      const { batch, context, latentChannels, concat } = step;
      const inputs = {
        x: tensor([batch, latentChannels, latent, latent], 1),
        timesteps: Tensor.from(device, Array(batch).fill(500), [batch]),
        context: context ? tensor([batch, context, model.ldm.unet.context_dim as number], 2) : undefined,
        cConcat: concat ? tensor([batch, concat, latent, latent], 3) : undefined,
      };
      unetMs = await medianMs(device, repeats, () => unet.forward(inputs));
      for (const t of Object.values(inputs)) t?.dispose();
    }
    if (!vae) throw new Error("the random networks lack a first stage");
    const z = tensor([1, model.vae.embed_dim, latent, latent], 4);
    const decodeMs = await medianMs(device, repeats, () => vae.decode(z));
    z.dispose();
    return {
      unetMs,
      decodeMs,
      batch: step?.batch,
      peakBytes: device.memory().peakLiveBytes,
      adapter: device.describe(),
    };
  } finally {
    dispose();
    device.destroy();
  }
}

function runPeer(name: string, model: Model, latent: number, o: Options): PeerReport {
  const { batch, context } = model.ldm ? stepShape(model.ldm) : { batch: 1, context: 0 };
  const args = [PEER_SCRIPT, name, "--upstream", o.upstream, "--taming", o.taming, "--latent", String(latent)];
  args.push("--batch", String(batch), "--context", String(context));
  args.push("--threads", String(o.threads), "--repeats", String(o.repeats));
  const stdout = execFileSync("/usr/bin/python3", args, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  return JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as PeerReport;
}

interface Options {
  latent?: number;
  repeats: number;
  threads: number;
  peer: boolean;
  upstream: string;
  taming: string;
  out: string;
}

const table: { rows: Record<string, TableRow> } = JSON.parse(readFileSync(TABLE, "utf8"));
const program = new Command()
  .argument("[models...]", `rows of ${TABLE} (default: all)`)
  .option(
    "--latent <S>",
    "latent side for every model, rounded up to the UNet's downsampling factor (default: each config's image_size)",
    positiveInt,
  )
  .option("--repeats <n>", "timed runs after the warm-up, median reported", positiveInt, 1)
  .option("--threads <n>", "torch CPU threads for the peer", positiveInt, 2)
  .option("--no-peer", "ours only")
  .option("--upstream <dir>", "CompVis/latent-diffusion sources, for the peer", "/tmp/latent-diffusion")
  .option("--taming <dir>", "CompVis/taming-transformers sources, for the peer", "/tmp/taming-transformers")
  .option("--out <file>", "results file the rows merge into", join(here, "results.json"));
program.parse();
const opts = program.opts<Options>();
const names = program.args.length ? program.args : Object.keys(table.rows);
const unknown = names.filter((n) => !(n in table.rows));
if (unknown.length) program.error(`unknown model ${unknown.join(", ")}; models: ${Object.keys(table.rows).join(", ")}`);
// `pnpm bench:family` runs from benchmarks/: paths are relative to where pnpm was started.
const cwd = process.env.INIT_CWD ?? process.cwd();
if (opts.peer) {
  requirePythonPeer(`the peer, ${PEER_SCRIPT},`);
  for (const dir of [opts.upstream, opts.taming]) {
    if (!existsSync(resolve(cwd, dir))) {
      program.error(
        `${dir} does not exist: the peer imports the original code from it (\`git archive\` of CompVis/latent-diffusion and CompVis/taming-transformers; reference/README.md), or run with --no-peer`,
      );
    }
  }
  opts.upstream = resolve(cwd, opts.upstream);
  opts.taming = resolve(cwd, opts.taming);
}

const rows: ResultRow[] = [];
const skipped: string[] = [];
let adapter = "";
for (const name of names) {
  const row = table.rows[name];
  let model: Model;
  try {
    model = readModel(row);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    skipped.push(`${name}: ${e.message}`);
    console.log(`${name}: skipped, the library does not read its config: ${e.message}`);
    continue;
  }
  // The original UNet needs a latent that halves evenly at each of its levels (avg-pool downsampling). A first
  // stage alone decodes the latent of its training resolution by default.
  const dd = model.vae.ddconfig;
  const factor = model.ldm ? 2 ** (model.ldm.unet.channel_mult.length - 1) : 1;
  const own = model.ldm ? (model.ldm.image_size ?? 32) : dd.resolution / 2 ** (dd.ch_mult.length - 1);
  const latent = Math.ceil((opts.latent ?? own) / factor) * factor;
  const start = performance.now();
  let peer: PeerReport | undefined;
  try {
    peer = opts.peer ? runPeer(name, model, latent, opts) : undefined;
  } catch {
    skipped.push(`${name}: the peer failed (its error is above)`);
    continue;
  }
  const ours = await timeOurs(model, latent, opts.repeats);
  adapter = ours.adapter;
  const parts: [string, number | undefined, number | undefined][] = [
    [`${name} UNet step, batch ${ours.batch} @ ${latent}×${latent} latent (f32)`, ours.unetMs, peer?.unet_ms],
    [`${name} decode @ ${latent}×${latent} latent (f32)`, ours.decodeMs, peer?.decode_ms],
  ];
  for (const [rowName, oursMs, peerMs] of parts) {
    if (oursMs === undefined) continue; // a first stage alone has no step
    const row = makeRow({ name: rowName, oursMs, peer: peer?.peer, peerMs, peakBytes: ours.peakBytes });
    rows.push(row);
    console.log(`${row.name}: ours ${row.ours_ms} ms, peer ${row.peer_ms ?? "—"} ms`);
  }
  console.log(`${name}: done in ${((performance.now() - start) / 1000).toFixed(0)} s`);
}

console.log(`\nadapter: ${adapter}\n`);
console.log("| part (dtype) | ours ms | torch ms | ratio (torch / ours) | our peak GPU MiB |\n|---|---|---|---|---|");
for (const r of rows) {
  const mib = ((r.peak_bytes ?? 0) / 2 ** 20).toFixed(0);
  console.log(
    `| ${r.name} | ${r.ours_ms} | ${r.peer_ms ?? "—"} | ${r.ratio === null ? "—" : `${r.ratio}×`} | ${mib} |`,
  );
}
if (skipped.length) console.log(`\nskipped (${skipped.length}):\n  ${skipped.join("\n  ")}`);
if (rows.length) {
  const file = resolve(cwd, opts.out);
  writeResults(file, rows, adapter);
  console.log(`wrote ${rows.length} rows to ${file}`);
}
process.exit(0);
