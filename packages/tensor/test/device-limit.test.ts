import { describe, expect, it } from "vitest";
import { Device, DeviceLimitError, GpuOutOfMemoryError, Tensor } from "../src/index.ts";

describe("DeviceLimitError", () => {
  it("is what a buffer over maxBufferSize throws: a GpuOutOfMemoryError that a page can tell apart", async () => {
    const device = await Device.create();
    try {
      const tooLarge = () => Tensor.empty(device, [Math.floor(device.limits.maxBufferSize / 4) + 1024]);
      expect(tooLarge).toThrow(DeviceLimitError);
      expect(tooLarge).toThrow(GpuOutOfMemoryError);
      expect(tooLarge).toThrow(/maxBufferSize is \d+ bytes/);
    } finally {
      device.destroy();
    }
  });
});
