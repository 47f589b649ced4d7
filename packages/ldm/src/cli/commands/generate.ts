import { existsSync, readFileSync } from "node:fs";
import { basename } from "node:path";
import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import {
  SAMPLER_NAMES,
  SAMPLING_DEFAULTS,
  type SamplerName,
  type SigmaScheduleName,
  samplerByName,
  sigmaScheduleOf,
} from "../../diffusion/index.ts";
import { writePngFile } from "../../image/node.ts";
import { gridImage } from "../../image/pixels.ts";
import { formatInfotext, INFOTEXT_KEYWORD, parametersFromInfotext } from "../../pipeline/infotext.ts";
import {
  type GenerationResult,
  type LdmGenerateOptions,
  MAX_GUIDANCE_SCALE,
  type Progress,
} from "../../pipeline/latent-diffusion.ts";
import { MAX_BATCH } from "../../pipeline/memory.ts";
import {
  type GenerationParameters,
  PARAMETERS_KEYWORD,
  parametersText,
  parseParameters,
} from "../../pipeline/parameters.ts";
import type { Seed } from "../../random/index.ts";
import { type LayoutObject, parseLayout } from "../../tokenizer/index.ts";
import { UserError } from "../errors.ts";
import { outputPaths, prepareOutput } from "../output.ts";
import { addLoraOptions, type LoraFlags, LoraResolver } from "./lora-flags.ts";
import {
  addEmbeddingOptions,
  addModelOptions,
  asUserError,
  type EmbeddingFlags,
  integerFlag,
  loadEmbeddingFlags,
  loadLatentDiffusion,
  type ModelFlags,
  numberFlag,
  readImageFlag,
  readLabelsFlag,
  recordedModelFiles,
  SEGMENTATION_PNG,
  seedFlag,
  sizeFlag,
  withInterrupt,
} from "./pipeline-flags.ts";
import { restoreRun } from "./restore.ts";

interface GenerateFlags extends ModelFlags, LoraFlags, EmbeddingFlags {
  modelsDir?: string;
  negative?: string;
  class?: string;
  uncondClass?: string;
  layout?: string;
  segmentation?: string;
  sampler?: string;
  schedule?: string;
  steps?: string;
  cfg?: string;
  eta?: string;
  clipSkip?: string;
  seed?: string;
  width?: string;
  height?: string;
  batchSize?: string;
  initImage?: string;
  strength?: string;
  mask?: string;
  out?: string;
  paramsFrom?: string;
  grid?: string;
  sequentialCfg?: boolean;
  vaeTiling?: boolean;
}

/** What to run, from the flags over the parameters of --params-from over the defaults. */
interface Request {
  /** Absent for models without a text encoder (unconditional, class-conditional). */
  prompt?: string;
  negativePrompt?: string;
  sampler: SamplerName;
  schedule?: SigmaScheduleName;
  steps: number;
  /** Absent: the model's default (7.5 for text and class models, 1 for those without an unconditional input). */
  guidanceScale?: number;
  eta?: number;
  clipSkip?: number;
  classLabel?: number;
  uncondClassLabel?: number;
  seed?: Seed;
  width?: number;
  height?: number;
  batchSize: number;
  strength?: number;
}

export function registerGenerate(program: Command): void {
  const command = program
    .command("generate")
    .description("generate images from a prompt (txt2img; img2img with --init-image; inpainting with --mask)")
    .argument("[prompts...]", "one or more prompts, each run from the same seed (or the one of --params-from)")
    .option("--negative <text>", 'negative prompt: the unconditional half of guidance (default "")')
    .option("--sampler <name>", `${SAMPLER_NAMES.join(", ")} (default ${SAMPLING_DEFAULTS.sampler})`)
    .option(
      "--schedule <kind>",
      "k-samplers' σ spacing: normal, karras or exponential (default: the sampler's; karras for *_karras)",
    )
    .option("--steps <n>", `sampling steps (default ${SAMPLING_DEFAULTS.steps})`)
    .option(
      "--cfg <scale>",
      `classifier-free guidance scale in [0, ${MAX_GUIDANCE_SCALE}] (default: the model's, ${SAMPLING_DEFAULTS.guidanceScale} for Stable Diffusion, 5 for the paper's BERT text model, 3 for cin256, 1 without an unconditional input; 1 skips the unconditional pass)`,
    )
    .option(
      "--class <n>",
      "class-conditional models (cin256): the ImageNet class to sample (cin256-v2's last class, 1000, is guidance's 'no class')",
    )
    .option(
      "--uncond-class <n>",
      "class-conditional models: the class of guidance's unconditional half (default: the config's 'no class', cin256-v2's 1000; cin-ldm-vq-f8 has none, so guiding it needs one), with --cfg above 1",
    )
    .option(
      "--layout <json|file>",
      'layout-to-image models: the objects as JSON, [{"class": <index>, "box": [x0, y0, x1, y1]}, …] in image fractions, or a file holding it',
    )
    .option("--segmentation <png>", `semantic synthesis models: the map at the output size, ${SEGMENTATION_PNG}`)
    .option("--eta <eta>", "noise amount in [0, 1] of DDIM (default 0) and the ancestral and SDE samplers (default 1)")
    .option(
      "--clip-skip <n>",
      "A1111's CLIP skip: condition on the n-th text-encoder layer from the end (default: the model's; 2 = penultimate)",
    )
    .option("--seed <n>", "torch seed of the CPU noise (default: random, printed)")
    .option("--width <px>", "multiple of 8 (default: the model's trained size, else 512; or the init image's width)")
    .option("--height <px>", "multiple of 8 (default: the model's trained size, else 512; or the init image's height)")
    .option("-n, --batch-size <n>", "images generated together from the seed (default 1)")
    .option("--init-image <png>", "img2img: start from this image")
    .option("--strength <s>", "img2img: how much of the schedule runs, in (0, 1] (default 0.75; 1 with --mask)")
    .option("--mask <png>", "inpaint: white is repainted, black kept; the size of --init-image")
    .option(
      "--out <file|dir>",
      "a .png file (only PNG is written), or a folder for ldm-<seed>-<i>.png (default: the current folder)",
    )
    .option(
      "--params-from <png>",
      "reuse the generation parameters of an image we wrote, or of AUTOMATIC1111's (its parameters text): also the model, f16, the init image and mask where they are found",
    )
    .option(
      "--models-dir <dir>",
      "with --params-from: where to look for the recorded model (a checkpoint of its name, else of A1111's model hash)",
    )
    .option("--grid <png>", "also write all images in one PNG: a row per prompt, a column per batch image")
    .option("--sequential-cfg", "low memory: the two guidance halves as separate UNet calls (same result)")
    .option("--vae-tiling", "low memory: decode in overlapping tiles of 32 latent cells, blended (as diffusers)");
  addEmbeddingOptions(addLoraOptions(addModelOptions(command))).action(
    async (promptArguments: string[], flags: GenerateFlags) => {
      const restored = flags.paramsFrom ? await storedParameters(flags.paramsFrom) : undefined;
      const stored = restored?.parameters;
      if (restored && flags.paramsFrom)
        await restoreRun(flags, restored.parameters, flags.paramsFrom, restored.unrestored);
      const prompts = promptArguments.length ? promptArguments : [undefined];
      const requests = prompts.map((prompt) => requestFrom(prompt, flags, stored));
      if (flags.grid !== undefined && !flags.grid.toLowerCase().endsWith(".png")) {
        throw new UserError(`--grid ${flags.grid}: must name a .png file`);
      }
      if (flags.mask && !flags.initImage) throw new UserError("--mask needs --init-image (the image to inpaint)");
      if (flags.strength !== undefined && !flags.initImage) throw new UserError("--strength needs --init-image");
      const initImage = flags.initImage ? await readImageFlag(flags.initImage, "init image") : undefined;
      const mask = flags.mask ? await readImageFlag(flags.mask, "mask") : undefined;
      const layout = flags.layout === undefined ? stored?.layout : layoutFlag(flags.layout);
      const segmentation = flags.segmentation ? await readLabelsFlag(flags.segmentation, "--segmentation") : undefined;
      if (initImage && mask && (mask.width !== initImage.width || mask.height !== initImage.height)) {
        throw new UserError(
          `the mask is ${mask.width}×${mask.height}, the init image ${initImage.width}×${initImage.height}: they must match`,
        );
      }
      prepareOutput("--out", flags.out ?? ".");
      if (flags.grid) prepareOutput("--grid", flags.grid);
      const loras = new LoraResolver(flags, flags.paramsFrom ? { ...stored, origin: flags.paramsFrom } : undefined);
      // The LoRA files are read (and every prompt's tags found) before the model loads.
      for (const request of requests) await loras.uses(request.prompt);
      const pipe = await loadLatentDiffusion(flags);
      if (pipe.textPrompted && requests.some((r) => r.prompt === undefined)) {
        pipe.dispose();
        throw new UserError("no prompt: give one, or --params-from an image we generated");
      }
      try {
        await loadEmbeddingFlags(pipe, flags);
        // Without --seed every prompt still shares one seed, so a grid compares prompts on the same noise.
        const seed = requests[0].seed ?? Math.floor(Math.random() * 2 ** 32);
        const results: GenerationResult[] = [];
        for (const request of requests) {
          const width = request.width ?? initImage?.width ?? segmentation?.width ?? pipe.defaultSize;
          const height = request.height ?? initImage?.height ?? segmentation?.height ?? pipe.defaultSize;
          console.error(
            `sampling ${width}×${height}, batch ${request.batchSize}, ${request.steps} ${request.sampler} steps (the first also compiles the kernels)…`,
          );
          await loras.apply(pipe, request.prompt);
          const reporter = new ProgressReporter();
          const result = await withInterrupt((signal) =>
            asUserError(() => {
              const options: LdmGenerateOptions = {
                ...request,
                layout,
                segmentation,
                seed,
                sequentialCfg: flags.sequentialCfg,
                vaeTiling: flags.vaeTiling,
                onProgress: (p) => reporter.update(p),
                onWarning: (message) => console.error(`ldm: warning: ${message}`),
                signal,
              };
              if (initImage && mask) return pipe.inpaint({ ...options, initImage, mask });
              if (initImage) return pipe.img2img({ ...options, initImage });
              return pipe.generate(options);
            }).finally(() => reporter.stop()),
          );
          const { samplingMs, decodeMs } = result.timings;
          console.error(
            `seed ${result.seed}: sampled in ${(samplingMs / 1000).toFixed(1)} s, decoded in ${(decodeMs / 1000).toFixed(1)} s`,
          );
          results.push(result);
        }
        const images = results.flatMap((r) => r.images);
        const paths = outputPaths(flags.out, seed, images.length);
        for (const [i, parameters] of results.flatMap((r) => r.parameters).entries()) {
          await writePngFile(paths[i], images[i], {
            [INFOTEXT_KEYWORD]: formatInfotext(parameters),
            [PARAMETERS_KEYWORD]: parametersText({
              ...parameters,
              ...recordedModelFiles(flags),
              ...(flags.segmentation ? { segmentation: basename(flags.segmentation) } : {}),
              ...(flags.initImage ? { initImage: basename(flags.initImage) } : {}),
              ...(flags.mask ? { mask: basename(flags.mask) } : {}),
            }),
            Software: "ldm.ts",
          });
          console.log(paths[i]);
        }
        if (flags.grid) {
          await writePngFile(flags.grid, gridImage(results.map((r) => r.images)), {
            Description: `ldm.ts, seed ${seed}: ${requests.map((r) => JSON.stringify(r.prompt)).join(", ")}`,
            Software: "ldm.ts",
          });
          console.log(flags.grid);
        }
      } finally {
        pipe.dispose();
      }
    },
  );
}

/** Our parameters, else AUTOMATIC1111's infotext and the settings in it that we do not have. */
async function storedParameters(
  path: string,
): Promise<{ parameters: Partial<GenerationParameters>; unrestored: string[] }> {
  const image = await readImageFlag(path, "--params-from image");
  const text = image.text[PARAMETERS_KEYWORD];
  const infotext = image.text[INFOTEXT_KEYWORD];
  if (text === undefined && infotext === undefined) {
    throw new UserError(
      `${path} holds neither ${PARAMETERS_KEYWORD} (ldm) nor ${INFOTEXT_KEYWORD} (AUTOMATIC1111) text to restore`,
    );
  }
  try {
    if (text !== undefined) return { parameters: parseParameters(text, path), unrestored: [] };
    const { parameters, unrestored } = parametersFromInfotext(infotext as string, path);
    return { parameters, unrestored: unrestored.map((key) => `A1111's ${key}`) };
  } catch (e) {
    throw new UserError((e as Error).message);
  }
}

function requestFrom(
  prompt: string | undefined,
  flags: GenerateFlags,
  stored?: Partial<GenerationParameters>,
): Request {
  // Models without a text encoder take no prompt; a stored empty prompt is theirs.
  const text = prompt ?? (stored?.prompt || undefined);
  const sampler = flags.sampler ?? stored?.sampler ?? SAMPLING_DEFAULTS.sampler;
  // A stored schedule belongs to the stored sampler: a --sampler of its own starts from that sampler's default.
  const requestedSchedule = flags.schedule ?? (flags.sampler === undefined ? stored?.schedule : undefined);
  let schedule: SigmaScheduleName | undefined;
  try {
    schedule = sigmaScheduleOf(samplerByName(sampler), requestedSchedule);
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  const size = (flag: string, value: string | undefined, fallback?: number) =>
    value === undefined ? fallback : sizeFlag(flag, value);
  return {
    prompt: text,
    negativePrompt: flags.negative ?? (stored?.negativePrompt || undefined),
    sampler: sampler as SamplerName,
    schedule,
    steps:
      flags.steps === undefined ? (stored?.steps ?? SAMPLING_DEFAULTS.steps) : integerFlag("--steps", flags.steps, 1),
    guidanceScale:
      flags.cfg === undefined ? stored?.guidanceScale : numberFlag("--cfg", flags.cfg, 0, MAX_GUIDANCE_SCALE),
    classLabel: flags.class === undefined ? stored?.classLabel : integerFlag("--class", flags.class, 0),
    uncondClassLabel:
      flags.uncondClass === undefined ? stored?.uncondClassLabel : integerFlag("--uncond-class", flags.uncondClass, 0),
    eta: flags.eta === undefined ? stored?.eta : numberFlag("--eta", flags.eta, 0, 1),
    clipSkip: flags.clipSkip === undefined ? stored?.clipSkip : integerFlag("--clip-skip", flags.clipSkip, 1),
    seed:
      flags.seed === undefined
        ? stored?.seed === undefined
          ? undefined
          : seedFlag(stored.seed)
        : seedFlag(flags.seed),
    width: size("--width", flags.width, stored?.width),
    height: size("--height", flags.height, stored?.height),
    batchSize:
      flags.batchSize === undefined
        ? (stored?.batchSize ?? 1)
        : integerFlag("--batch-size", flags.batchSize, 1, MAX_BATCH),
    strength: flags.strength === undefined ? stored?.strength : numberFlag("--strength", flags.strength, 0, 1),
  };
}

/**
 * Steps per second, and seconds left, after `done` of `steps` steps: from the second step on, without the first,
 * which includes compiling the kernels (lavapipe with a cold shader cache: 16 s, then 0.1 s a step).
 */
export function stepRate(done: number, steps: number, elapsedMs: number, firstStepMs: number) {
  const rate =
    done > 1 && elapsedMs > firstStepMs ? (done - 1) / ((elapsedMs - firstStepMs) / 1000) : done / (elapsedMs / 1000);
  return { rate, eta: (steps - done) / rate };
}

/** --layout: JSON, or a file holding it (a value that is not JSON-looking and names an existing file). */
function layoutFlag(value: string): LayoutObject[] {
  const inline = /^\s*\[/.test(value);
  if (!inline && !existsSync(value)) {
    throw new UserError(`--layout ${value}: neither a JSON array of objects nor an existing file`);
  }
  try {
    return parseLayout(inline ? value : readFileSync(value, "utf8"), inline ? "--layout" : `--layout ${value}`);
  } catch (e) {
    throw new UserError((e as Error).message);
  }
}

/** A bar (step, it/s, ETA) on a terminal; one plain line per step otherwise (logs, pipes). */
export class ProgressReporter {
  private bar?: SingleBar;
  private readonly tty = process.stderr.isTTY === true;
  private firstStepMs = 0;

  update(p: Progress): void {
    const done = p.step + 1;
    if (done === 1) this.firstStepMs = p.elapsedMs;
    const { rate, eta } = stepRate(done, p.steps, p.elapsedMs, this.firstStepMs);
    if (!this.tty) {
      console.error(`step ${done}/${p.steps}  ${rate.toFixed(2)} it/s  ETA ${eta.toFixed(1)} s`);
      return;
    }
    if (!this.bar) {
      this.bar = new SingleBar({
        format: "sampling {bar} {value}/{total} steps | {rate} it/s | ETA {eta_formatted}",
        stream: process.stderr,
        hideCursor: true,
      });
      this.bar.start(p.steps, 0, { rate: "-" });
    }
    this.bar.update(done, { rate: rate.toFixed(2) });
  }

  stop(): void {
    this.bar?.stop();
  }
}
