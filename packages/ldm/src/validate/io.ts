import { type Device, Tensor } from "@ldm/tensor";
import type { Dump, HostTensor } from "./dump.ts";

/** Computed outputs of a component, by output name. */
export type Outputs = Map<string, HostTensor>;

/** A float input of the dump on the GPU (f32; the models cast to their dtype). */
export async function uploadFloats(device: Device, dump: Dump, component: string, name: string): Promise<Tensor> {
  const { data, shape } = await dump.floats(component, "in", name);
  return Tensor.from(device, data, shape);
}

/** An integer input of the dump (token ids) on the GPU as i32. */
export async function uploadIds(device: Device, dump: Dump, component: string, name: string): Promise<Tensor> {
  const { data, shape } = await dump.ints(component, "in", name);
  return Tensor.from(device, data, shape, "i32");
}

/** Reads the given tensors back as float32 and disposes them. */
export async function readOutputs(named: Record<string, Tensor | undefined>): Promise<Outputs> {
  const out: Outputs = new Map();
  for (const [name, t] of Object.entries(named)) {
    if (!t) continue;
    out.set(name, { data: await t.toFloat32(), shape: t.shape });
    t.dispose();
  }
  return out;
}
