import { Device, Tensor } from "@ldm/tensor";
const LANES = `
enable subgroups;
@group(0) @binding(1) var<storage, read_write> out: array<vec2<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(subgroup_size) size: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
  out[id.x] = vec2<f32>(f32(size), subgroupAdd(f32(lane)));
}`;
const d = await Device.create({ cpuLanes: Number(process.argv[2]) });
const out = Tensor.empty(d, [64, 2]);
d.dispatch({ pipeline: d.pipeline("k", () => LANES), buffers: [out.buffer], writes: [true], workgroups: [1] });
const v = await out.toFloat32();
console.log(`cpuLanes ${process.argv[2]}: kernel saw ${v[0]} lanes, sum ${v[1]}; ${[...new Set(Array.from(v))].length} distinct values`);
d.destroy();
