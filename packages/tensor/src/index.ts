// The declarations name WebGPU's GPU* types: consumers get them from @webgpu/types (a dependency) through this.
/// <reference types="@webgpu/types" preserve="true" />
export * from "./device.ts";
export * from "./dtype.ts";
export {
  acquireGpu,
  CPU_LANES,
  CPU_LANES_VARIABLE,
  cpuLanesWidth,
  dawnCreateFlags,
  GPU_FEATURE_TOGGLES,
  LAVAPIPE_DEFAULT_LANES,
  NO_ADAPTER_HELP,
  SHADER_CACHE_VARIABLE,
  shaderCacheDir,
  userCacheHome,
} from "./gpu.ts";
export * from "./pool.ts";
export { selfTest } from "./selftest.ts";
export * from "./shape.ts";
export * from "./tensor.ts";
export * from "./uniforms.ts";
export * from "./weights.ts";
