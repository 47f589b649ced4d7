import type { Command } from "commander";
import {
  addModelOptions,
  asUserError,
  integerFlag,
  loadLatentDiffusion,
  type ModelFlags,
  readImageFlag,
  readLabelsFlag,
  SEGMENTATION_PNG,
  seedFlag,
} from "./pipeline-flags.ts";

interface LossFlags extends ModelFlags {
  image: string;
  prompt?: string;
  class?: string;
  mask?: string;
  lowRes?: string;
  segmentation?: string;
  t?: string;
  seed?: string;
}

export function registerLoss(program: Command): void {
  const command = program
    .command("loss")
    .description(
      "L_simple (LatentDiffusion.p_losses' loss_simple) of an image at one timestep: encode, noise with q_sample, predict with the model's conditioning, print the config's loss_type (l2, or l1) against ε (or v for v-models)",
    )
    .requiredOption("--image <png>", "the image (sides multiples of the first stage's factor)")
    .option("--prompt <text>", "text models: its caption")
    .option("--class <n>", "class-conditional models: its class")
    .option("--mask <png>", "the paper's inpainting model: the region to fill (white), the image's size")
    .option(
      "--low-res <png>",
      "super-resolution models: the low-resolution image, the image's size divided by the first stage's factor (the latent's)",
    )
    .option("--segmentation <png>", `semantic synthesis models: the image's map, ${SEGMENTATION_PNG}`)
    .option("--t <n>", "training timestep (default 500)")
    .option("--seed <n>", "torch seed of the latent sample and ε (default 0)");
  addModelOptions(command).action(async (flags: LossFlags) => {
    const t = flags.t === undefined ? 500 : integerFlag("--t", flags.t, 0);
    const seed = flags.seed === undefined ? 0 : seedFlag(flags.seed);
    const classLabel = flags.class === undefined ? undefined : integerFlag("--class", flags.class, 0);
    const image = await readImageFlag(flags.image, "image");
    const mask = flags.mask === undefined ? undefined : await readImageFlag(flags.mask, "mask");
    const lowRes = flags.lowRes === undefined ? undefined : await readImageFlag(flags.lowRes, "low-resolution image");
    const segmentation =
      flags.segmentation === undefined ? undefined : await readLabelsFlag(flags.segmentation, "--segmentation");
    const pipe = await loadLatentDiffusion(flags);
    try {
      const result = await asUserError(() =>
        pipe.loss({ image, prompt: flags.prompt, classLabel, mask, lowRes, segmentation, t, seed }),
      );
      const target = result.target === "v" ? "v" : "ε";
      console.log(
        `t ${result.t}  seed ${result.seed}  L_simple (${result.lossType} against ${target}): ${result.loss.toPrecision(6)}`,
      );
    } finally {
      pipe.dispose();
    }
  });
}
