/** Thrown for options the pipeline cannot run with (bad size, unknown sampler, a prompt that is not a string, …). */
export class PipelineOptionError extends RangeError {}
