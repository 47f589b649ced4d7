import type { LdmGenerateOptions } from "./latent-diffusion.ts";

/** Thrown for options the pipeline cannot run with (bad size, unknown sampler, a prompt that is not a string, …). */
export class PipelineOptionError extends RangeError {
  constructor(
    message: string,
    /** The option at fault, where the error is about one: front ends name their own flag or field for it. */
    readonly option?: keyof LdmGenerateOptions,
  ) {
    super(message);
  }
}
