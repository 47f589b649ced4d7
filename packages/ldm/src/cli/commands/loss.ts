import type { Command } from "commander";
import {
  addModelOptions,
  asUserError,
  integerFlag,
  loadPipeline,
  type ModelFlags,
  readImageFlag,
  seedFlag,
} from "./pipeline-flags.ts";

interface LossFlags extends ModelFlags {
  image: string;
  prompt: string;
  t?: string;
  seed?: string;
}

export function registerLoss(program: Command): void {
  const command = program
    .command("loss")
    .description(
      "L_simple of an image and its caption at one timestep: encode, noise with q_sample, predict, print the MSE against ε (or v for v-models)",
    )
    .requiredOption("--image <png>", "the image (sides multiples of 8)")
    .requiredOption("--prompt <text>", "its caption")
    .option("--t <n>", "training timestep (default 500)")
    .option("--seed <n>", "torch seed of the latent sample and ε (default 0)");
  addModelOptions(command).action(async (flags: LossFlags) => {
    const t = flags.t === undefined ? 500 : integerFlag("--t", flags.t, 0);
    const seed = flags.seed === undefined ? 0 : seedFlag(flags.seed);
    const image = await readImageFlag(flags.image, "image");
    const pipe = await loadPipeline(flags);
    try {
      const result = await asUserError(() => pipe.loss({ image, prompt: flags.prompt, t, seed }));
      console.log(
        `t ${result.t}  seed ${result.seed}  MSE against ${result.target === "v" ? "v" : "ε"}: ${result.mse.toPrecision(6)}`,
      );
    } finally {
      pipe.dispose();
    }
  });
}
