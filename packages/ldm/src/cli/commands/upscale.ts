import { basename } from "node:path";
import type { Command } from "commander";
import { SAMPLER_NAMES, type SamplerName } from "../../diffusion/index.ts";
import { writePngFile } from "../../image/node.ts";
import { formatInfotext, INFOTEXT_KEYWORD } from "../../pipeline/infotext.ts";
import { UPSCALE_DEFAULTS } from "../../pipeline/latent-diffusion.ts";
import { PARAMETERS_KEYWORD, parametersText } from "../../pipeline/parameters.ts";
import { NOTEBOOK_SPLIT_INPUT } from "../../pipeline/split-input.ts";
import { UserError } from "../errors.ts";
import { outputPaths, prepareOutput } from "../output.ts";
import { ProgressReporter } from "./generate.ts";
import {
  addModelOptions,
  asUserError,
  integerFlag,
  loadLatentDiffusion,
  type ModelFlags,
  numberFlag,
  readImageFlag,
  recordedModelFiles,
  seedFlag,
  withInterrupt,
} from "./pipeline-flags.ts";

interface UpscaleFlags extends ModelFlags {
  steps?: string;
  sampler?: string;
  eta?: string;
  seed?: string;
  tile?: string;
  tiles: boolean;
  vaeTiling?: boolean;
  out?: string;
}

export function registerUpscale(program: Command): void {
  const { size, stride } = NOTEBOOK_SPLIT_INPUT;
  const command = program
    .command("upscale")
    .description(
      "super-resolution with a model whose cond stage is the low-resolution image itself (the paper's bsr_sr): 4× for VQ-f4, as ldm/notebook_helpers.py samples it",
    )
    .argument(
      "<image>",
      "the low-resolution PNG (opaque; grey or RGB), at least 2^(UNet levels − 1) pixels a side (8 for bsr_sr)",
    )
    .option("--steps <n>", `DDIM steps (default ${UPSCALE_DEFAULTS.steps}, the notebook's)`)
    .option("--sampler <name>", `${SAMPLER_NAMES.join(", ")} (default ddim)`)
    .option("--eta <eta>", `DDIM's noise amount in [0, 1] (default ${UPSCALE_DEFAULTS.eta}, the notebook's)`)
    .option("--seed <n>", "torch seed of the CPU noise (default: random, printed)")
    .option(
      "--tile <cells>",
      `the UNet on overlapping crops of this many latent cells (= input pixels) a side, stride half of it, blended by distance to each crop's edge as upstream's split_input_params (default ${size}, stride ${stride}: the notebook's); images within one crop run whole`,
    )
    .option("--no-tiles", "always one UNet call on the whole latent (more memory)")
    .option("--vae-tiling", "decode in overlapping tiles even when the UNet is not tiled (it is whenever the UNet is)")
    .option("--out <file|dir>", "a .png file, or a folder for ldm-<seed>-0.png (default: the current folder)");
  addModelOptions(command).action(async (path: string, flags: UpscaleFlags) => {
    const steps = flags.steps === undefined ? undefined : integerFlag("--steps", flags.steps, 1);
    const eta = flags.eta === undefined ? undefined : numberFlag("--eta", flags.eta, 0, 1);
    const tile = flags.tile === undefined ? size : integerFlag("--tile", flags.tile, 2);
    if (flags.tile !== undefined && !flags.tiles) throw new UserError("--tile and --no-tiles contradict each other");
    const seed = flags.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : seedFlag(flags.seed);
    const image = await readImageFlag(path, "image");
    prepareOutput("--out", flags.out ?? ".");
    const pipe = await loadLatentDiffusion(flags);
    try {
      const f = pipe.networks.vae.downscale;
      console.error(
        `upscaling ${image.width}×${image.height} to ${image.width * f}×${image.height * f}, ${steps ?? UPSCALE_DEFAULTS.steps} ${flags.sampler ?? "ddim"} steps (the first also compiles the kernels)…`,
      );
      const reporter = new ProgressReporter();
      const result = await withInterrupt((signal) =>
        asUserError(() =>
          pipe.upscale({
            image,
            steps,
            eta,
            sampler: flags.sampler as SamplerName | undefined,
            seed,
            splitInput: flags.tiles ? { size: tile, stride: Math.floor(tile / 2) } : false,
            vaeTiling: flags.vaeTiling,
            onProgress: (p) => reporter.update(p),
            signal,
          }),
        ).finally(() => reporter.stop()),
      );
      const { samplingMs, decodeMs } = result.timings;
      console.error(
        `seed ${result.seed}: sampled in ${(samplingMs / 1000).toFixed(1)} s, decoded in ${(decodeMs / 1000).toFixed(1)} s`,
      );
      const [out] = outputPaths(flags.out, result.seed, 1);
      await writePngFile(out, result.images[0], {
        [INFOTEXT_KEYWORD]: formatInfotext(result.parameters[0]),
        [PARAMETERS_KEYWORD]: parametersText({
          ...result.parameters[0],
          ...recordedModelFiles(flags),
          lowResImage: basename(path),
        }),
        Software: "ldm.ts",
      });
      console.log(out);
    } finally {
      pipe.dispose();
    }
  });
}
