/**
 * `ldm vae encode|decode`: a first stage saved alone (models/first_stage_models/*) or a LatentDiffusion's as an
 * image codec, through a safetensors latent file: `latent` [B, embed_dim, h, w] float32 (unscaled, or with
 * --scaled times the LatentDiffusion's scale_factor, which the file's metadata then records), and for VQ the
 * `indices` [B, h, w] int64 of each position's code.
 */
import { basename, extname } from "node:path";
import { formatShape } from "@ldm/tensor";
import { convertElements, isFloatStoredDType, type SafetensorsFile } from "@ldm/weights";
import { openSafetensors, writeSafetensors } from "@ldm/weights/node";
import type { Command } from "commander";
import { writePngFile } from "../../image/node.ts";
import { FirstStage } from "../../pipeline/first-stage.ts";
import { UserError } from "../errors.ts";
import { outputPaths, prepareOutput } from "../output.ts";
import {
  asUserError,
  cpuLanesOf,
  cpuLanesOption,
  modelPath,
  readImageFlag,
  seedFlag,
  userErrorOf,
} from "./pipeline-flags.ts";

interface VaeFlags {
  model: string;
  config?: string;
  f16?: boolean;
  cpuLanes?: string;
  scaled?: boolean;
  out: string;
}

interface EncodeFlags extends VaeFlags {
  sample?: boolean;
  seed?: string;
}

/** The latent tensor's name in the files encode writes and decode reads. */
const LATENT = "latent";
/** The metadata key of a scaled latent's scale factor (absent: unscaled). */
const SCALE_FACTOR = "scale_factor";

function addFirstStageOptions(command: Command, scaled: string): Command {
  return command
    .requiredOption(
      "--model <path>",
      "a first stage's own checkpoint (.safetensors or .ckpt; keys without a prefix), or a LatentDiffusion's (SD 1.x/2.x, the paper's models: its first_stage_model.*)",
    )
    .option(
      "--config <yaml>",
      "the first stage's own YAML (models/first_stage_models/<name>/config.yaml) or the LatentDiffusion's (default: <model>.yaml; without one, Stable Diffusion is detected from the weights)",
    )
    .option("--scaled", scaled)
    .option("--f16", "run in half precision (needs shader-f16; the default on GPUs that have it)")
    .option("--no-f16", "run in single precision (the default on CPU adapters such as lavapipe)")
    .addOption(cpuLanesOption());
}

async function loadStage(flags: VaeFlags): Promise<FirstStage> {
  const model = await modelPath(flags.model);
  console.error(`loading ${basename(model)}…`);
  try {
    const stage = await FirstStage.load(model, {
      config: flags.config,
      dtype: flags.f16 === undefined ? "auto" : flags.f16 ? "f16" : "f32",
      cpuLanes: cpuLanesOf(flags),
    });
    const scale = stage.scaleFactor === undefined ? "" : `, the LatentDiffusion's scale_factor ${stage.scaleFactor}`;
    console.error(
      `first stage: ${stage.target}, latent ${stage.latentChannels} channels, factor ${stage.downscale}${scale}`,
    );
    return stage;
  } catch (e) {
    throw userErrorOf(e);
  }
}

/** The latent of a file decode reads: the tensor named `latent`, or a file's only tensor; and its metadata. */
async function readLatent(
  path: string,
): Promise<{ data: Float32Array; shape: number[]; metadata: Record<string, string> }> {
  let file: SafetensorsFile;
  try {
    file = await openSafetensors(path);
  } catch (e) {
    throw new UserError(`latent file ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  try {
    const names = [...file.tensors.keys()];
    const name = names.includes(LATENT) ? LATENT : names.length === 1 ? names[0] : undefined;
    if (name === undefined) {
      throw new UserError(
        `latent file ${path}: no tensor named "${LATENT}" among ${names.length} (${names.slice(0, 6).join(", ") || "none"})`,
      );
    }
    const entry = file.tensors.get(name);
    if (!entry || !isFloatStoredDType(entry.dtype)) {
      throw new UserError(
        `latent file ${path}: ${name} ${formatShape(entry?.shape ?? [])} is ${entry?.dtype}, not a float tensor`,
      );
    }
    const data = new Float32Array(entry.size);
    convertElements(entry.dtype, "f32", await file.readBytes(name), new Uint8Array(data.buffer), entry.size);
    const nonFinite = data.findIndex((v) => !Number.isFinite(v));
    if (nonFinite >= 0) throw new UserError(`latent file ${path}: ${name} holds NaN or Inf (at element ${nonFinite})`);
    return { data, shape: [...entry.shape], metadata: file.metadata };
  } finally {
    await file.close();
  }
}

/**
 * A latent file written by encode --scaled records its scale factor: decoding it needs --scaled and the same
 * factor, so that a scaled latent is never decoded as an unscaled one or by another model's scale.
 */
function checkScale(path: string, metadata: Record<string, string>, stage: FirstStage, scaled: boolean): void {
  const stored = metadata[SCALE_FACTOR];
  if (stored === undefined) return;
  if (!scaled) {
    throw new UserError(
      `latent file ${path} is scaled by ${stored} (ldm vae encode --scaled): decode it with --scaled and that LatentDiffusion`,
    );
  }
  if (stage.scaleFactor !== undefined && Number(stored) !== stage.scaleFactor) {
    throw new UserError(
      `latent file ${path} is scaled by ${stored}, this model's scale_factor is ${stage.scaleFactor}: decode it with the LatentDiffusion that encoded it`,
    );
  }
}

export function registerVae(program: Command): void {
  const vae = program
    .command("vae")
    .description(
      "a first stage as an image codec: one saved alone (models/first_stage_models/*: VQModel or AutoencoderKL with its own YAML), or a LatentDiffusion's",
    );
  const encode = vae
    .command("encode")
    .description(
      "image → latent file (safetensors: latent [1, embed_dim, H/f, W/f], unscaled unless --scaled; VQ: h before quantization, and indices, each position's code)",
    )
    .argument("<image>", "a PNG, its sides multiples of the first stage's factor (alpha is dropped)")
    .requiredOption("--out <file.safetensors>", "the latent file to write")
    .option("--sample", "KL: a sample of the posterior instead of its mode (the mean)")
    .option("--seed <n>", "with --sample: the torch seed of its draw (default 0)");
  addFirstStageOptions(
    encode,
    "a LatentDiffusion's: its UNet's latent, times its scale_factor (upstream's get_first_stage_encoding(encode_first_stage(x)), which samples a KL posterior: add --sample for that)",
  ).action(async (path: string, flags: EncodeFlags) => {
    if (extname(flags.out).toLowerCase() !== ".safetensors") {
      throw new UserError(`--out ${flags.out}: the latent is written as safetensors; name a .safetensors file`);
    }
    if (flags.seed !== undefined && !flags.sample) throw new UserError("--seed needs --sample (the posterior's draw)");
    const seed = flags.seed === undefined ? undefined : seedFlag(flags.seed);
    const image = await readImageFlag(path, "image");
    const stage = await loadStage(flags);
    try {
      const { latent, shape, indices } = await asUserError(() =>
        stage.encode(image, { sample: flags.sample, seed, scaled: flags.scaled }),
      );
      const latentOf = stage.quantized
        ? "h, before quantization"
        : flags.sample
          ? `posterior sample, seed ${seed ?? 0}`
          : "posterior mode";
      const kind = flags.scaled ? `${latentOf}, scaled by ${stage.scaleFactor}` : latentOf;
      await writeSafetensors(
        flags.out,
        {
          [LATENT]: { dtype: "F32", shape, data: latent },
          ...(indices
            ? {
                indices: {
                  dtype: "I64",
                  shape: [shape[0], shape[2], shape[3]],
                  data: BigInt64Array.from(indices, BigInt),
                },
              }
            : {}),
        },
        {
          first_stage: stage.target,
          latent: kind,
          image: basename(path),
          ...(flags.scaled ? { [SCALE_FACTOR]: String(stage.scaleFactor) } : {}),
        },
      );
      console.log(`${flags.out}: latent ${formatShape(shape)} (${stage.target}: ${kind})`);
    } finally {
      stage.dispose();
    }
  });
  const decode = vae
    .command("decode")
    .description("latent file → PNG (VQ: quantized first, as the original decode)")
    .argument(
      "<latent>",
      `a safetensors file: its tensor "${LATENT}" (or its only tensor), [B, embed_dim, h, w], unscaled unless --scaled`,
    )
    .requiredOption("--out <file.png>", "the image to write (numbered -0, -1, … for a batch)");
  addFirstStageOptions(
    decode,
    "a LatentDiffusion's: the latent is its UNet's (a sample's z_0, encode --scaled), divided by its scale_factor first (decode_first_stage)",
  ).action(async (path: string, flags: VaeFlags) => {
    if (extname(flags.out).toLowerCase() !== ".png") throw new UserError(`--out ${flags.out}: name a .png file`);
    prepareOutput("--out", flags.out);
    const { data, shape, metadata } = await readLatent(path);
    const stage = await loadStage(flags);
    try {
      checkScale(path, metadata, stage, flags.scaled === true);
      const images = await asUserError(() => stage.decode(data, shape, { scaled: flags.scaled }));
      const paths = outputPaths(flags.out, 0, images.length);
      for (const [i, image] of images.entries()) {
        await writePngFile(paths[i], image);
        console.log(`${paths[i]}: ${image.width}×${image.height}`);
      }
    } finally {
      stage.dispose();
    }
  });
}
