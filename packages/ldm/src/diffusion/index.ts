export { ddimTimesteps, type TimestepSpacing } from "./compvis-samplers.ts";
export {
  discreteSigmas,
  exponentialSigmas,
  karrasSigmas,
  lcmSigmas,
  type SigmaScheduleName,
  sigmaToT,
} from "./k-samplers.ts";
export { cfg, type DiffusionModel, epsAndDenoised, guided, type Parameterization } from "./model.ts";
export { countNonFinite, type InitLatents, type NoiseLevel, NonFiniteLatentsError, type StepInfo } from "./run.ts";
export { type SampleOptions, sample } from "./sample.ts";
export {
  SAMPLER_NAMES,
  SAMPLERS,
  SAMPLING_DEFAULTS,
  type SamplerName,
  type SamplerRecord,
  samplerByName,
  sigmaScheduleOf,
} from "./samplers.ts";
export {
  type BetaScheduleKind,
  COMPVIS_SCHEDULE_NAMES,
  linspace,
  NoiseSchedule,
  qSample,
  type ScheduleConfig,
} from "./schedule.ts";
