/**
 * Test helper: `const device = await useDevice();` at the top of a GPU test file creates the device while the
 * file's tests are collected, so feature checks can decide skips (`it.skipIf(!device.features.shaderF16)`),
 * and destroys it after the file's tests.
 */
import { afterAll } from "vitest";
import { Device, type DeviceOptions } from "./device.ts";

export async function useDevice(options?: DeviceOptions): Promise<Device> {
  const device = await Device.create(options);
  afterAll(() => device.destroy());
  return device;
}
