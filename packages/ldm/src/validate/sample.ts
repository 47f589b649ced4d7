/**
 * The `sample` dump component: a whole classifier-free-guided sampling loop from x_T and token ids, as
 * the original txt2img does it (context = [uncond; cond] in one doubled UNet batch), then optionally decoded.
 */
import { concat } from "@ldm/kernels";
import { Tensor } from "@ldm/tensor";
import {
  type DiffusionModel,
  guided,
  NoiseSchedule,
  SAMPLER_NAMES,
  type SamplerName,
  sample,
} from "../diffusion/index.ts";
import type { LoadedModel } from "../models/index.ts";
import type { Dump } from "./dump.ts";
import { type Outputs, uploadFloats, uploadIds } from "./io.ts";

interface SampleSettings {
  sampler: SamplerName;
  steps: number;
  guidanceScale: number;
  eta: number;
}

function settings(dump: Dump): SampleSettings {
  const meta = dump.metadata;
  const fail = (what: string): never => {
    throw new Error(`${dump.path}: the sample component's __metadata__ ${what}`);
  };
  const sampler = meta.sampler ?? fail("has no sampler");
  if (!(SAMPLER_NAMES as readonly string[]).includes(sampler)) {
    fail(`names sampler "${sampler}"; known: ${SAMPLER_NAMES.join(", ")}`);
  }
  const number = (key: string, fallback?: number) => {
    const text = meta[key];
    if (text === undefined) return fallback ?? fail(`has no ${key}`);
    const value = Number(text);
    return Number.isFinite(value) ? value : fail(`has ${key} "${text}", not a number`);
  };
  const eta = number("eta", 0);
  if (eta !== 0) fail(`has eta ${eta}: only eta 0 is deterministic from x_T (the dump carries no noise stream)`);
  return { sampler: sampler as SamplerName, steps: number("steps"), guidanceScale: number("guidance_scale"), eta };
}

export async function runSample(model: LoadedModel, dump: Dump): Promise<Outputs> {
  const { unet, vae, clip, config } = model;
  if (!unet || !vae || !clip) throw new Error("internal: the sample component needs all three networks");
  const options = settings(dump);
  const xT = await dump.floats("sample", "in", "x_T");
  const [batch, channels, h, w] = xT.shape;
  const device = unet.vb.device;
  const held: Tensor[] = [];
  const hold = (t: Tensor) => {
    held.push(t);
    return t;
  };
  try {
    const cond = hold(await uploadIds(device, dump, "sample", "cond_ids"));
    const uncond = hold(await uploadIds(device, dump, "sample", "uncond_ids"));
    const context = hold(device.tidy(() => concat([clip.encode(uncond), clip.encode(cond)], 0)));
    const cConcat = dump.has("sample", "in", "c_concat")
      ? hold(await uploadFloats(device, dump, "sample", "c_concat"))
      : undefined;
    const doubledConcat = cConcat && hold(concat([cConcat, cConcat], 0));

    const network: DiffusionModel = async (x, t) => {
      const out = device.tidy(() =>
        unet.forward({
          x: Tensor.from(device, x, [2 * batch, channels, h, w]),
          timesteps: Tensor.from(device, new Float32Array(2 * batch).fill(t), [2 * batch]),
          context,
          cConcat: doubledConcat,
        }),
      );
      try {
        return await out.toFloat32();
      } finally {
        out.dispose();
      }
    };
    const schedule = NoiseSchedule.create({
      timesteps: config.timesteps,
      linearStart: config.linear_start,
      linearEnd: config.linear_end,
    });
    const z0 = await sample(guided(network, options.guidanceScale), xT.data, {
      sampler: options.sampler,
      steps: options.steps,
      eta: options.eta,
      schedule,
      parameterization: config.parameterization,
    });
    const outputs: Outputs = new Map([["z_0", { data: z0, shape: xT.shape }]]);
    if (dump.has("sample", "out", "image")) {
      const unscaled = z0.map((v) => v / config.scale_factor);
      const image = device.tidy(() => vae.decode(Tensor.from(device, unscaled, xT.shape)));
      outputs.set("image", { data: await image.toFloat32(), shape: image.shape });
      image.dispose();
    }
    return outputs;
  } finally {
    for (const t of held) t.dispose();
  }
}
