import { afterAll, describe, expect, it } from "vitest";
import { CPU_LANES_VARIABLE, cpuLanesWidth, Device, Tensor } from "../src/index.ts";

const probe = await Device.create();
const lavapipe = /llvmpipe/.test(probe.describe());
probe.destroy();
const before = process.env[CPU_LANES_VARIABLE];
afterAll(() => {
  if (before === undefined) delete process.env[CPU_LANES_VARIABLE];
  else process.env[CPU_LANES_VARIABLE] = before;
});

// Per invocation: the subgroup size the kernel ran at and the sum of its subgroup's lane indices (0 + … + n−1).
const LANES = `
enable subgroups;
@group(0) @binding(1) var<storage, read_write> out: array<vec2<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(subgroup_size) size: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
  out[id.x] = vec2<f32>(f32(size), subgroupAdd(f32(lane)));
}`;

/** What the kernel above saw on `device`: [subgroup size, sum of lane indices], the same for all 64 invocations. */
async function kernelLanes(device: Device, key = "test-lanes"): Promise<number[][]> {
  const out = Tensor.empty(device, [64, 2]);
  const pipeline = device.pipeline(key, () => LANES);
  device.dispatch({ pipeline, buffers: [out.buffer], writes: [true], workgroups: [1] });
  const values = await out.toFloat32();
  out.dispose();
  return [...new Set(Array.from({ length: 64 }, (_, i) => `${values[2 * i]},${values[2 * i + 1]}`))].map((s) =>
    s.split(",").map(Number),
  );
}

describe("cpuLanes", () => {
  it("maps lanes to LP_NATIVE_VECTOR_WIDTH and refuses other widths and a change while devices are open", () => {
    expect(cpuLanesWidth(16, undefined, 0)).toBe("512");
    expect(cpuLanesWidth(8, "512", 0)).toBe("256");
    expect(cpuLanesWidth(16, "512", 3)).toBe("512");
    expect(() => cpuLanesWidth(12, undefined, 0)).toThrow(
      /cpuLanes: 12 is not one of lavapipe's SIMD widths \(4, 8, 16/,
    );
    expect(() => cpuLanesWidth(8, "512", 1)).toThrow(
      /8 lanes need LP_NATIVE_VECTOR_WIDTH=256, but 1 open device\(s\) of this process run with 512/,
    );
  });

  it.skipIf(!lavapipe)("gives lavapipe's kernels 16-lane subgroups, and 8 again once no device is open", async () => {
    const wide = await Device.create({ cpuLanes: 16 });
    expect(await kernelLanes(wide)).toEqual([[16, 120]]);
    await expect(Device.create({ cpuLanes: 8 })).rejects.toThrow(/process-wide, so destroy them first/);
    // The refused request changed nothing: the open device still compiles at its width.
    const again = await Device.create({ cpuLanes: 16 });
    again.destroy();
    expect(await kernelLanes(wide, "test-lanes-compiled-after")).toEqual([[16, 120]]);
    wide.destroy();
    const narrow = await Device.create({ cpuLanes: 8 });
    expect(await kernelLanes(narrow)).toEqual([[8, 28]]);
    narrow.destroy();
  });
});
