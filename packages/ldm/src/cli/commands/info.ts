import { readFile } from "node:fs/promises";
import {
  COND_PREFIX,
  ConfigError,
  conditioningKey,
  DetectionError,
  describeCondStage,
  type FiniteCheck,
  findNonFinite,
  firstStageConfigFromYaml,
  LayoutError,
  type LdmConfig,
  ldmConfigFromYaml,
  PickleError,
  SafetensorsError,
  TEXT_PREFIX,
  TorchCheckpoint,
  TorchCheckpointError,
  UNET_PREFIX,
  VAE_PREFIX,
  type VaeConfig,
  ZipError,
} from "@ldm/weights";
import { type Checkpoint, CheckpointError, openCheckpoint } from "@ldm/weights/node";
import type { Command } from "commander";
import { Document, visit } from "yaml";
import { storedScaleFactor } from "../../models/load.ts";
import { companionFiles } from "../../pipeline/model-files.ts";
import { UserError } from "../errors.ts";

interface InfoFlags {
  check?: boolean;
  config?: string;
  ema?: boolean;
  variant?: string;
  json?: boolean;
}

const COMPONENTS = [
  ["UNet", UNET_PREFIX],
  ["VAE", VAE_PREFIX],
  ["text encoder", TEXT_PREFIX],
  // Other cond stages (ClassEmbedder, SpatialRescaler, BERTEmbedder): the rest of cond_stage_model.
  ["cond stage", COND_PREFIX],
] as const;

/** Errors caused by the file or the flags the user gave: one line, exit 1. */
const INPUT_ERRORS = [
  CheckpointError,
  SafetensorsError,
  LayoutError,
  ConfigError,
  TorchCheckpointError,
  PickleError,
  ZipError,
];

export function registerInfo(program: Command): void {
  program
    .command("info")
    .description("describe a checkpoint: family, configuration, parameters and dtypes per component")
    .argument("<checkpoint>", "a .safetensors or PyTorch .ckpt/.pt file (original layout) or a diffusers folder")
    .option(
      "--config <yaml>",
      "an original-style YAML config (v1-inference.yaml shape) instead of detection (default: <checkpoint>.yaml beside it)",
    )
    .option("--ema", "use the EMA copy of the UNet in a full training checkpoint")
    .option("--variant <fp16>", "diffusers folders: read the fp16 variant files")
    .option("--json", "print one JSON object instead of text")
    .option("--check", "also read every weight and list the tensors holding NaN or Inf (exit 1 if any)")
    .action(async (path: string, flags: InfoFlags) => {
      if (flags.variant !== undefined && flags.variant !== "fp16") {
        throw new UserError(`--variant must be "fp16", got "${flags.variant}"`);
      }
      // As generate and validate do: the config given, else <stem>.yaml beside a single file.
      const config = flags.config ?? companionFiles(path).config;
      const yaml = config && {
        text: await readFile(config, "utf8").catch(() => {
          throw new UserError(`${config}: cannot read the config file`);
        }),
        origin: config,
      };
      const open = (ema?: boolean) =>
        asUserError(() => openCheckpoint(path, { ema, variant: flags.variant as "fp16" | undefined }));
      let checkpoint = await open(flags.ema);
      try {
        // As loadModel: without --ema, the config's use_ema picks the EMA copy where the file has one.
        const ema = flags.ema ?? (checkpoint.hasEma === true && !!yaml && configUsesEma(yaml));
        if (ema && flags.ema === undefined) {
          await checkpoint.close();
          checkpoint = await open(true);
        }
        const report = await asUserError(() => describe(checkpoint, ema, yaml || undefined));
        const check = flags.check ? await asUserError(() => findNonFinite(checkpoint.files)) : undefined;
        console.log(flags.json ? JSON.stringify({ ...report, check }, null, 2) : format(report));
        if (check) reportCheck(check, flags.json === true);
      } finally {
        await checkpoint.close();
      }
    });
}

/** Whether a YAML's LatentDiffusion samples with its EMA weights; a config that does not parse is describe()'s to report. */
function configUsesEma(yaml: { text: string; origin: string }): boolean {
  try {
    return ldmConfigFromYaml(yaml.text, yaml.origin).use_ema === true;
  } catch {
    return false;
  }
}

export async function asUserError<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (INPUT_ERRORS.some((kind) => e instanceof kind)) throw new UserError((e as Error).message);
    throw e;
  }
}

/** The check's verdict: one line when every value is finite, else the tensors and a one-line error. */
function reportCheck(check: FiniteCheck, json: boolean): void {
  const { found } = check;
  if (!json) {
    if (found.length) {
      console.log(`non-finite values (NaN or Inf) in ${found.length} of ${check.tensors} tensors:`);
      for (const t of found) console.log(`  ${t.name}: ${t.count} of ${t.size} values`);
    } else {
      console.log(`check: all ${check.values.toLocaleString("en-US")} values of ${check.tensors} tensors are finite`);
    }
  }
  if (found.length) {
    const [first] = found;
    throw new UserError(
      `${found.length > 1 ? `${found.length} tensors hold` : "1 tensor holds"} NaN or Inf values (first: ${first.name}, ${first.count} of ${first.size}): the checkpoint is damaged; images from it would come out black`,
    );
  }
}

interface ComponentReport {
  name: string;
  /** Every parameter of the original module that the file stores, used or not (`unused`). */
  tensors: number;
  parameters: number;
  /** Stored dtype → tensor count. */
  dtypes: Record<string, number>;
  /** The stored parameters of the module that inference never reads (BERTEmbedder's to_logits). */
  unused?: { tensors: number; parameters: number };
}

function components(checkpoint: Checkpoint): ComponentReport[] {
  const { source } = checkpoint;
  const stored = (key: string, file: string) => checkpoint.files.find((f) => f.name === file)?.tensors.get(key);
  const unused = checkpoint.ignored.filter((i) => i.unusedParameter);
  const inComponent = (prefix: string, key: string) =>
    key.startsWith(prefix) && !(prefix === COND_PREFIX && key.startsWith(TEXT_PREFIX));
  return COMPONENTS.map(([name, prefix]) => {
    const report: ComponentReport = { name, tensors: 0, parameters: 0, dtypes: {} };
    const count = (shape: readonly number[], dtype: string) => {
      const parameters = shape.reduce((a, b) => a * b, 1);
      report.tensors++;
      report.parameters += parameters;
      report.dtypes[dtype] = (report.dtypes[dtype] ?? 0) + 1;
      return parameters;
    };
    for (const key of source.keys()) {
      if (!inComponent(prefix, key)) continue;
      const { shape, dtype } = source.describe(key)!;
      count(shape, dtype);
    }
    for (const { key, file } of unused) {
      const entry = stored(key, file);
      if (!entry || !inComponent(prefix, key)) continue;
      report.unused ??= { tensors: 0, parameters: 0 };
      report.unused.tensors++;
      report.unused.parameters += count(entry.shape, entry.dtype);
    }
    return report;
  }).filter((c) => c.tensors > 0);
}

/** "AutoencoderKL", or a VQ first stage's class with its codebook. */
function firstStageName(target: string, vae: VaeConfig): string {
  return vae.n_embed === undefined ? target : `${target} (${vae.n_embed} codes of ${vae.embed_dim})`;
}

/**
 * What a LatentDiffusion's latents are scaled by (what `ldm vae --scaled` applies): the config's scale_factor, or
 * with scale_by_std the checkpoint's buffer; null where that buffer is missing.
 */
async function latentScale(checkpoint: Checkpoint, config: LdmConfig) {
  if (!config.scale_by_std) return { value: config.scale_factor, from: "the config's scale_factor" };
  const from = "the checkpoint's scale_factor buffer (scale_by_std)";
  try {
    return { value: await storedScaleFactor(checkpoint.files[0], checkpoint.path), from };
  } catch {
    return { value: null, from: `${from}: missing` };
  }
}

/** A ClassEmbedder's classes and guidance's default unconditional class ("no class"; null: it has none). */
function classesOf(config: LdmConfig) {
  const stage = config.cond_stage;
  if (stage?.target !== "ClassEmbedder") return undefined;
  return { count: stage.n_classes, unconditional: stage.unconditional_class ?? null };
}

async function describe(checkpoint: Checkpoint, emaUsed: boolean, yaml?: { text: string; origin: string }) {
  // A first stage's own YAML (models/first_stage_models): the file holds that first stage alone.
  const alone = yaml && firstStageConfigFromYaml(yaml.text, yaml.origin);
  let detection: { config: LdmConfig; assumptions: string[] } | undefined;
  let problem: string | undefined;
  try {
    // Any LatentDiffusion's YAML (the paper's models too); detection covers Stable Diffusion.
    if (!alone) {
      detection = yaml ? { config: ldmConfigFromYaml(yaml.text, yaml.origin), assumptions: [] } : checkpoint.config();
    }
  } catch (e) {
    if (!(e instanceof DetectionError)) throw e;
    problem = e.message;
  }
  const config = detection?.config;
  // A LatentDiffusion's first stage is VQModelInterface when it quantizes (the class its configs name).
  const firstStage = alone
    ? firstStageName(alone.target, alone.vae)
    : config && firstStageName(config.vae.n_embed === undefined ? "AutoencoderKL" : "VQModelInterface", config.vae);
  return {
    path: checkpoint.path,
    layout: checkpoint.layout,
    /** A PyTorch checkpoint's format, where its state dict was, and its plain top-level values (global_step, …). */
    pytorch: checkpoint.files[0] instanceof TorchCheckpoint ? { ...checkpoint.files[0].metadata } : undefined,
    family: alone
      ? "first stage alone"
      : config &&
        (config.family === "ldm"
          ? "LatentDiffusion"
          : `${config.family === "sd1" ? "SD 1.x" : "SD 2.x"}${config.inpainting ? " inpainting" : ""}`),
    firstStage,
    condStage: config && describeCondStage(config),
    conditioningKey: config && (conditioningKey(config) ?? "none (unconditional)"),
    latentScale: config && (await latentScale(checkpoint, config)),
    classes: config && classesOf(config),
    configFrom: yaml ? yaml.origin : "detected from the weights",
    config: alone || config,
    assumptions: detection?.assumptions ?? [],
    problem,
    components: components(checkpoint),
    ema: checkpoint.hasEma ? (emaUsed ? "used for the UNet" : "present, not used (--ema uses them)") : undefined,
    scheduleBuffers: [...checkpoint.scheduleKeys],
    ignored: [...countBy(checkpoint.ignored.map((i) => i.reason))].map(([reason, count]) => ({ reason, count })),
  };
}

function format(r: Awaited<ReturnType<typeof describe>>): string {
  const lines = [`checkpoint: ${r.path} (${r.layout === "diffusers" ? "diffusers folder" : "single file"})`];
  if (r.pytorch)
    lines.push(
      `PyTorch checkpoint: ${Object.entries(r.pytorch)
        .map(([k, v]) => `${k} ${v}`)
        .join(", ")}`,
    );
  if (r.family) lines.push(`family: ${r.family}`);
  if (r.firstStage) lines.push(`first stage: ${r.firstStage}`);
  if (r.condStage) lines.push(`cond stage: ${r.condStage}, conditioning key ${r.conditioningKey}`);
  if (r.latentScale) lines.push(`latent scale: ${r.latentScale.value ?? "unknown"} (${r.latentScale.from})`);
  if (r.classes) {
    const { count, unconditional } = r.classes;
    lines.push(
      unconditional === null
        ? `classes: ${count} (0 to ${count - 1}, none "no class": unguided by default; guiding needs --uncond-class)`
        : `classes: ${count} (0 to ${count - 1}; ${unconditional} is "no class", guidance's unconditional class by default: --uncond-class picks another)`,
    );
  }
  if (r.problem) lines.push(`model: not detected: ${r.problem}`);
  lines.push("components:");
  const width = Math.max(...r.components.map((c) => c.name.length));
  for (const c of r.components) {
    const dtypes = Object.entries(c.dtypes)
      .map(([d, n]) => `${d} × ${n}`)
      .join(", ");
    const unused = c.unused
      ? `; ${c.unused.parameters.toLocaleString("en-US")} of them in ${c.unused.tensors} stored, unused`
      : "";
    lines.push(
      `  ${c.name.padEnd(width)}  ${c.parameters.toLocaleString("en-US").padStart(13)} parameters in ${c.tensors} tensors (${dtypes}${unused})`,
    );
  }
  const total = r.components.reduce((n, c) => n + c.parameters, 0);
  lines.push(`  ${"total".padEnd(width)}  ${total.toLocaleString("en-US").padStart(13)} parameters`);
  if (r.ema) lines.push(`EMA weights: ${r.ema}`);
  if (r.scheduleBuffers.length) lines.push(`schedule buffers: ${r.scheduleBuffers.join(", ")}`);
  if (r.ignored.length) lines.push("ignored stored tensors:", ...r.ignored.map((i) => `  ${i.count} × ${i.reason}`));
  if (r.config) {
    lines.push(`config (${r.configFrom}):`);
    lines.push(
      ...yamlWithFlowLists(r.config)
        .trimEnd()
        .split("\n")
        .map((l) => `  ${l}`),
    );
  }
  if (r.assumptions.length) lines.push("not in the weights, assumed:", ...r.assumptions.map((a) => `  ${a}`));
  return lines.join("\n");
}

/** YAML with lists on one line ([1, 2, 4, 4]), as the original configs write them. */
function yamlWithFlowLists(value: unknown): string {
  const doc = new Document(value);
  visit(doc, {
    Seq(_, node) {
      node.flow = true;
    },
  });
  return doc.toString();
}

function countBy(items: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(item, (counts.get(item) ?? 0) + 1);
  return counts;
}
