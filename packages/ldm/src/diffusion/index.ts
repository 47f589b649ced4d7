export { ddimTimesteps, type TimestepSpacing } from "./compvis-samplers.ts";
export { discreteSigmas, karrasSigmas, sigmaToT } from "./k-samplers.ts";
export { cfg, type DiffusionModel, epsAndDenoised, guided, type Parameterization } from "./model.ts";
export type { InitLatents, NoiseLevel, StepInfo } from "./run.ts";
export { SAMPLER_NAMES, type SampleOptions, type SamplerName, sample } from "./sample.ts";
export {
  type BetaScheduleKind,
  COMPVIS_SCHEDULE_NAMES,
  linspace,
  NoiseSchedule,
  qSample,
  type ScheduleConfig,
} from "./schedule.ts";
