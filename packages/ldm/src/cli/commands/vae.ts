/**
 * `ldm vae encode|decode`: a first stage saved alone (models/first_stage_models/*) as an image codec, through a
 * safetensors latent file: `latent` [B, embed_dim, h, w] float32 (unscaled), and for VQ the `indices` [B, h, w]
 * int64 of each position's code.
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
import { asUserError, modelPath, readImageFlag, seedFlag, userErrorOf } from "./pipeline-flags.ts";

interface VaeFlags {
  model: string;
  config?: string;
  f16?: boolean;
  out: string;
}

interface EncodeFlags extends VaeFlags {
  sample?: boolean;
  seed?: string;
}

/** The latent tensor's name in the files encode writes and decode reads. */
const LATENT = "latent";

function addFirstStageOptions(command: Command): Command {
  return command
    .requiredOption("--model <path>", "the first stage's checkpoint (.safetensors or .ckpt; keys without a prefix)")
    .option("--config <yaml>", "its own YAML, models/first_stage_models/<name>/config.yaml (default: <model>.yaml)")
    .option("--f16", "run in half precision (needs shader-f16; the default on GPUs that have it)")
    .option("--no-f16", "run in single precision (the default on CPU adapters such as lavapipe)");
}

async function loadStage(flags: VaeFlags): Promise<FirstStage> {
  const model = await modelPath(flags.model);
  console.error(`loading ${basename(model)}…`);
  try {
    const stage = await FirstStage.load(model, {
      config: flags.config,
      dtype: flags.f16 === undefined ? "auto" : flags.f16 ? "f16" : "f32",
    });
    console.error(`first stage: ${stage.target}, latent ${stage.latentChannels} channels, factor ${stage.downscale}`);
    return stage;
  } catch (e) {
    throw userErrorOf(e);
  }
}

/** The latent of a file decode reads: the tensor named `latent`, or a file's only tensor. */
async function readLatent(path: string): Promise<{ data: Float32Array; shape: number[] }> {
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
    return { data, shape: [...entry.shape] };
  } finally {
    await file.close();
  }
}

export function registerVae(program: Command): void {
  const vae = program
    .command("vae")
    .description(
      "a first stage alone (models/first_stage_models/*: VQModel or AutoencoderKL with its own YAML) as an image codec",
    );
  const encode = vae
    .command("encode")
    .description(
      "image → latent file (safetensors: latent [1, embed_dim, H/f, W/f], unscaled; VQ: h before quantization, and indices, each position's code)",
    )
    .argument("<image>", "a PNG, its sides multiples of the first stage's factor (alpha is dropped)")
    .requiredOption("--out <file.safetensors>", "the latent file to write")
    .option("--sample", "KL: a sample of the posterior instead of its mode (the mean)")
    .option("--seed <n>", "with --sample: the torch seed of its draw (default 0)");
  addFirstStageOptions(encode).action(async (path: string, flags: EncodeFlags) => {
    if (extname(flags.out).toLowerCase() !== ".safetensors") {
      throw new UserError(`--out ${flags.out}: the latent is written as safetensors; name a .safetensors file`);
    }
    if (flags.seed !== undefined && !flags.sample) throw new UserError("--seed needs --sample (the posterior's draw)");
    const seed = flags.seed === undefined ? undefined : seedFlag(flags.seed);
    const image = await readImageFlag(path, "image");
    const stage = await loadStage(flags);
    try {
      const { latent, shape, indices } = await asUserError(() => stage.encode(image, { sample: flags.sample, seed }));
      const kind = stage.quantized
        ? "h, before quantization"
        : flags.sample
          ? `posterior sample, seed ${seed ?? 0}`
          : "posterior mode";
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
        { first_stage: stage.target, latent: kind, image: basename(path) },
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
      `a safetensors file: its tensor "${LATENT}" (or its only tensor), [B, embed_dim, h, w] unscaled`,
    )
    .requiredOption("--out <file.png>", "the image to write (numbered -0, -1, … for a batch)");
  addFirstStageOptions(decode).action(async (path: string, flags: VaeFlags) => {
    if (extname(flags.out).toLowerCase() !== ".png") throw new UserError(`--out ${flags.out}: name a .png file`);
    prepareOutput("--out", flags.out);
    const { data, shape } = await readLatent(path);
    const stage = await loadStage(flags);
    try {
      const images = await asUserError(() => stage.decode(data, shape));
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
