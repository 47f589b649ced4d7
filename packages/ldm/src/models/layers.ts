import { upsampleNearest2x } from "@ldm/kernels";
import { Conv2d, type VarBuilder } from "@ldm/nn";
import type { Tensor } from "@ldm/tensor";

/** A 3×3 convolution keeping the spatial size (padding 1), the workhorse of both the VAE and the UNet. */
export function conv3x3(vb: VarBuilder, inChannels: number, outChannels: number): Conv2d {
  return new Conv2d(vb, { inChannels, outChannels, kernelSize: 3, padding: 1 });
}

export function conv1x1(vb: VarBuilder, inChannels: number, outChannels: number): Conv2d {
  return new Conv2d(vb, { inChannels, outChannels, kernelSize: 1 });
}

/**
 * Nearest-neighbour ×2 then a 3×3 convolution: `Upsample(channels, with_conv=True)` of both the VAE
 * (model.py) and the UNet (openaimodel.py), which agree on it, parameters under `conv`.
 */
export class Upsample {
  readonly conv: Conv2d;

  constructor(vb: VarBuilder, channels: number, outChannels = channels) {
    this.conv = conv3x3(vb.pp("conv"), channels, outChannels);
  }

  forward(x: Tensor): Tensor {
    return x.device.tidy(() => this.conv.forward(upsampleNearest2x(x)));
  }
}
