import { Device } from "@ldm/tensor";
import { NoAdapterError, NoWebGpuError } from "./errors.ts";

/**
 * The page's WebGPU device, created on navigator.gpu. The adapter is probed first so that a browser without
 * WebGPU, or without a usable adapter, gets a message about the browser rather than about drivers.
 */
export async function createDevice(): Promise<Device> {
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) throw new NoWebGpuError("navigator.gpu is undefined");
  const adapter = await gpu.requestAdapter();
  if (!adapter) throw new NoAdapterError("navigator.gpu.requestAdapter() returned no adapter.");
  return Device.create({ gpu });
}
