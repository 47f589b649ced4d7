import { afterAll, describe, expect, it } from "vitest";
import {
  CPU_LANES_VARIABLE,
  cpuLanesWidth,
  Device,
  SHADER_CACHE_VARIABLE,
  shaderCacheDir,
  Tensor,
} from "../src/index.ts";

const probe = await Device.create();
const lavapipe = /llvmpipe/.test(probe.describe());
probe.destroy();
const before = { width: process.env[CPU_LANES_VARIABLE], cache: process.env[SHADER_CACHE_VARIABLE] };
afterAll(() => {
  for (const [name, value] of [
    [CPU_LANES_VARIABLE, before.width],
    [SHADER_CACHE_VARIABLE, before.cache],
  ] as const) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
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

  it("keeps each width's shaders apart: Mesa's cache (or the user's) at 8 lanes, a folder per other width", () => {
    const env = { HOME: "/home/u" };
    expect(shaderCacheDir(8, undefined, env)).toBeUndefined();
    expect(shaderCacheDir(8, "/c", env)).toBe("/c");
    expect(shaderCacheDir(16, undefined, env)).toBe("/home/u/.cache/mesa-shader-cache-16-lanes");
    expect(shaderCacheDir(16, undefined, { ...env, XDG_CACHE_HOME: "/x" })).toBe("/x/mesa-shader-cache-16-lanes");
    expect(shaderCacheDir(4, "/c", env)).toBe("/c/mesa-shader-cache-4-lanes");
  });

  it.skipIf(!lavapipe)("gives lavapipe's kernels 16-lane subgroups, and 8 again once no device is open", async () => {
    const wide = await Device.create({ cpuLanes: 16 });
    expect(await kernelLanes(wide)).toEqual([[16, 120]]);
    expect(process.env[SHADER_CACHE_VARIABLE]).toMatch(/mesa-shader-cache-16-lanes$/);
    await expect(Device.create({ cpuLanes: 8 })).rejects.toThrow(/process-wide, so destroy them first/);
    // The refused request changed nothing: the open device still compiles at its width.
    const again = await Device.create({ cpuLanes: 16 });
    again.destroy();
    expect(await kernelLanes(wide, "test-lanes-compiled-after")).toEqual([[16, 120]]);
    wide.destroy();
    const narrow = await Device.create({ cpuLanes: 8 });
    expect(await kernelLanes(narrow)).toEqual([[8, 28]]);
    expect(process.env[SHADER_CACHE_VARIABLE]).toBe(before.cache);
    narrow.destroy();
  });
});
