/**
 * The paper's L_simple as upstream's LatentDiffusion.p_losses computes its `loss_simple`, without gradients:
 * x_noisy = q_sample(x_start, t, noise), the UNet's prediction on it (with the model's conditioning), compared
 * with the target (ε; v = √ᾱ·ε − √(1−ᾱ)·x_start for v-models, as get_v) by the config's loss_type (l2: squared,
 * l1: absolute; get_loss with mean=False), averaged over each item's C, H, W.
 */
import { Tensor } from "@ldm/tensor";
import type { LdmConfig } from "@ldm/weights";
import { type NoiseSchedule, qSample } from "../diffusion/index.ts";
import type { UNetModel } from "../models/index.ts";
import { unetDenoiser } from "./denoiser.ts";

export interface LossInputs {
  /** The first stage's encoding, scaled: [B, C, h, w]. */
  xStart: Float32Array;
  shape: readonly number[];
  /** The training timestep of every item. */
  t: number;
  noise: Float32Array;
  /** Cross-attention context [B, L, D] (class and text models). */
  context?: Tensor;
  /** Host c_concat [B, c, h, w] (concat models). */
  cConcat?: Float32Array;
}

/** `loss_simple` per item, [B]. */
export async function lossSimple(
  unet: UNetModel,
  schedule: NoiseSchedule,
  config: Pick<LdmConfig, "parameterization" | "loss_type">,
  inputs: LossInputs,
): Promise<Float32Array> {
  const { xStart, shape, t, noise, context, cConcat } = inputs;
  const [b, , h, w] = shape;
  const xNoisy = qSample(schedule, xStart, t, noise);
  const concat = cConcat && Tensor.from(unet.vb.device, cConcat, [b, cConcat.length / (b * h * w), h, w]);
  let prediction: Float32Array;
  try {
    prediction = await unetDenoiser(unet, context, concat, shape)(xNoisy, t);
  } finally {
    concat?.dispose();
  }
  const a = schedule.alphasCumprod[t];
  const target =
    config.parameterization === "eps" ? noise : noise.map((e, i) => Math.sqrt(a) * e - Math.sqrt(1 - a) * xStart[i]);
  const distance = config.loss_type === "l1" ? (d: number) => Math.abs(d) : (d: number) => d * d;
  const perItem = prediction.length / b;
  const out = new Float32Array(b);
  for (let i = 0; i < b; i++) {
    let sum = 0;
    for (let j = i * perItem; j < (i + 1) * perItem; j++) sum += distance(prediction[j] - target[j]);
    out[i] = sum / perItem;
  }
  return out;
}
