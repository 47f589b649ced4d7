import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { Device, DeviceLostError, Tensor, Uniforms } from "../src/index.ts";

setFlagsFromString("--expose_gc");
const gc = runInNewContext("gc") as () => void;

const SCALE_KERNEL = `
  struct Params { n: u32, k: f32 }
  @group(0) @binding(0) var<uniform> p: Params;
  @group(0) @binding(1) var<storage, read> x: array<f32>;
  @group(0) @binding(2) var<storage, read_write> y: array<f32>;
  @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
    if (id.x < p.n) { y[id.x] = x[id.x] * p.k; }
  }`;

describe("stability under GC pressure (dawn.node must keep its GPU and adapter alive)", () => {
  it("survives many upload/dispatch/readback cycles while the GC runs", async () => {
    // Create the device from a function scope so nothing but the Device holds the GPU object and adapter.
    const device = await (async () => Device.create())();
    gc();
    const pipeline = device.pipeline("stress-scale", () => SCALE_KERNEL);
    for (let cycle = 0; cycle < 150; cycle++) {
      const n = 1 + ((cycle * 7919) % 5000);
      const x = Tensor.from(
        device,
        Float32Array.from({ length: n }, (_, i) => i + cycle),
        [n],
      );
      const y = Tensor.empty(device, [n]);
      device.dispatch({
        pipeline,
        buffers: [x.buffer, y.buffer],
        uniforms: new Uniforms().u32(n).f32(2).bytes(),
        workgroups: [Math.ceil(n / 64)],
      });
      const out = await y.read();
      expect(out[n - 1]).toBe(2 * (n - 1 + cycle));
      x.dispose();
      y.dispose();
      // Garbage the collector can find: throwaway arrays, then a forced collection every few cycles.
      new Array(2000).fill(0).map(() => ({ junk: new Float64Array(16) }));
      if (cycle % 10 === 0) gc();
    }
    device.destroy();
  });
});

describe("device loss", () => {
  it("turns a lost device into DeviceLostError instead of a hang", async () => {
    const device = await Device.create();
    const t = Tensor.from(device, [1, 2, 3], [3]);
    device.gpuDevice.destroy();
    // lost resolves asynchronously after destroy()
    for (let i = 0; i < 500 && !device.lost; i++) await new Promise((r) => setTimeout(r, 10));
    expect(device.lost).toBe(true);
    await expect(t.read()).rejects.toThrow(DeviceLostError);
    expect(() => Tensor.empty(device, [4])).toThrow(/device lost/);
  });
});
