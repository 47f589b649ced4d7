export {
  Generator,
  type GeneratorOptions,
  type NormalKernel,
  randn,
  type Seed,
  TORCH_DEFAULT_SEED,
} from "./generator.ts";
