import type { Device } from "./device.ts";
import { Tensor } from "./tensor.ts";
import { Uniforms } from "./uniforms.ts";

/** Uploads, runs one kernel (y = a·x + b) and reads back; throws if the GPU computed anything else. */
export async function selfTest(device: Device, elements = 1 << 20): Promise<{ elements: number; ms: number }> {
  const t0 = performance.now();
  const x = Float32Array.from({ length: elements }, (_, i) => (i % 1000) - 500);
  const t = Tensor.from(device, x, [elements]);
  const pipeline = device.pipeline(
    "selftest-axpb",
    () => `
      struct Params { n: u32, a: f32, b: f32 }
      @group(0) @binding(0) var<uniform> p: Params;
      @group(0) @binding(1) var<storage, read_write> x: array<f32>;
      @compute @workgroup_size(256) fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) nwg: vec3u) {
        let i = id.x + id.y * nwg.x * 256u;
        if (i < p.n) { x[i] = p.a * x[i] + p.b; }
      }`,
  );
  const groups = Math.ceil(elements / 256);
  const gx = Math.min(groups, 65535);
  device.dispatch({
    pipeline,
    buffers: [t.buffer],
    uniforms: new Uniforms().u32(elements).f32(2).f32(0.5).bytes(),
    workgroups: [gx, Math.ceil(groups / gx)],
  });
  const y = (await t.read()) as Float32Array;
  t.dispose();
  for (let i = 0; i < elements; i++) {
    if (y[i] !== 2 * x[i] + 0.5) {
      throw new Error(`WebGPU self-test failed: element ${i} is ${y[i]}, expected ${2 * x[i] + 0.5}`);
    }
  }
  return { elements, ms: performance.now() - t0 };
}
