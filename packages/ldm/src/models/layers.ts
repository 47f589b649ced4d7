import { resizeNearest } from "@ldm/kernels";
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
 * (model.py) and the UNet (openaimodel.py), which agree on it, parameters under `conv`. A UNet latent that
 * did not halve cleanly is upsampled to its skip connection's size instead (diffusers' `output_size`).
 */
export class Upsample {
  readonly conv: Conv2d;

  constructor(vb: VarBuilder, channels: number, outChannels = channels) {
    this.conv = conv3x3(vb.pp("conv"), channels, outChannels);
  }

  /** `size`: the spatial size to reach, default twice the input's. */
  forward(x: Tensor, size?: readonly [number, number]): Tensor {
    const [h, w] = x.shape.slice(-2);
    const doubles = !size || (size[0] === 2 * h && size[1] === 2 * w);
    // interpolate → conv; ×2 is read by the convolution (Conv2d's `input`), the upsampled map never stored.
    return x.device.tidy(() =>
      doubles ? this.conv.forward(x, { input: { upsample2x: true } }) : this.conv.forward(resizeNearest(x, size)),
    );
  }
}
