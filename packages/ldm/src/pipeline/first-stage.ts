/**
 * A first stage saved alone (CompVis models/first_stage_models/*: VQModel or AutoencoderKL with its own YAML) as an
 * image codec, computing what the original modules compute:
 * - KL encode: the posterior's mode (its mean) by default, or posterior.sample() with ε drawn as after
 *   torch.manual_seed(seed); decode: the decoder on the latent.
 * - VQ encode: the pre-quantization latent h = quant_conv(encoder(x)) (VQModelInterface.encode, what a
 *   LatentDiffusion sees) and the index of each position's nearest code; decode quantizes first
 *   (VQModelInterface.decode; VQModel.forward decodes encode's quant, the same codes).
 * Latents are unscaled: a LatentDiffusion's scale_factor is no part of a first stage.
 */
import { Device, defaultDtype, type ParamDType, Tensor } from "@ldm/tensor";
import { firstStageConfigFromYaml } from "@ldm/weights";
import { readConfigFile } from "@ldm/weights/node";
import { pixelsToRgba, rgbaToPixels } from "../image/pixels.ts";
import type { RgbaImage } from "../image/png.ts";
import { type AutoencoderKL, VQModel } from "../models/autoencoder.ts";
import { loadFirstStage } from "../models/load-node.ts";
import { Generator, type Seed } from "../random/index.ts";
import { PipelineOptionError } from "./errors.ts";
import { checkImageInput } from "./inputs.ts";
import { MAX_SIDE } from "./memory.ts";
import { companionFiles } from "./model-files.ts";

export interface FirstStageLoadOptions {
  /** The first stage's own YAML; default `<stem>.yaml` beside the checkpoint. */
  config?: string;
  /** The device to run on; one is created (and destroyed by dispose()) when absent. */
  device?: Device;
  /** "auto": the adapter's defaultDtype (f16 on GPUs with shader-f16, f32 on CPU adapters); default f32. */
  dtype?: ParamDType | "auto";
}

export interface FirstStageEncodeOptions {
  /** KL: draw from the posterior instead of taking its mode. */
  sample?: boolean;
  /** The torch seed of that draw (default 0). */
  seed?: Seed;
}

export interface FirstStageLatent {
  /** [1, embed_dim, H/f, W/f], unscaled: KL the posterior's mode or sample, VQ h before quantization. */
  latent: Float32Array;
  shape: number[];
  /** VQ: each position's nearest code, [1, H/f, W/f]. */
  indices?: Int32Array;
}

export class FirstStage {
  private constructor(
    readonly vae: AutoencoderKL,
    /** model.target's class: VQModel, VQModelInterface or AutoencoderKL. */
    readonly target: string,
    private readonly release: () => void,
  ) {}

  /** Loads a first stage's checkpoint (keys without a prefix) as its own YAML describes it. */
  static async load(path: string, options: FirstStageLoadOptions = {}): Promise<FirstStage> {
    const { config } = companionFiles(path, { config: options.config });
    if (!config) {
      throw new Error(
        `${path}: a first stage alone needs its own YAML (models/first_stage_models/<name>/config.yaml): give it as config, or put ${path.replace(/\.[^./\\]+$/, "")}.yaml beside it`,
      );
    }
    const parsed = firstStageConfigFromYaml(readConfigFile(config), config);
    if (!parsed) {
      throw new Error(
        `${config}: model.target is not a first stage alone (VQModel, VQModelInterface, AutoencoderKL): this reads models/first_stage_models/<name>/config.yaml and its checkpoint`,
      );
    }
    const requested = options.dtype ?? "f32";
    const device = options.device ?? (await Device.create({ disableF16: requested === "f32" }));
    try {
      const dtype =
        requested === "auto"
          ? defaultDtype({ isCpu: device.info.isCpu, shaderF16: device.features.shaderF16 })
          : requested;
      const loaded = await loadFirstStage(path, { device, dtype, config: parsed });
      return new FirstStage(loaded.vae, parsed.target, () => {
        loaded.dispose();
        if (!options.device) device.destroy();
      });
    } catch (e) {
      if (!options.device) device.destroy();
      throw e;
    }
  }

  get quantized(): boolean {
    return this.vae instanceof VQModel;
  }

  /** The latent's channels (embed_dim). */
  get latentChannels(): number {
    return this.vae.cfg.embed_dim;
  }

  /** Pixels per latent cell along each side. */
  get downscale(): number {
    return this.vae.downscale;
  }

  get device(): Device {
    return this.vae.vb.device;
  }

  /** An opaque image (its RGB as 2·v/255 − 1; alpha dropped) to its latent. */
  async encode(image: RgbaImage, options: FirstStageEncodeOptions = {}): Promise<FirstStageLatent> {
    checkImageInput("encode", "image", image);
    const f = this.downscale;
    const { width, height } = image;
    if (width % f || height % f || width > MAX_SIDE || height > MAX_SIDE) {
      throw new PipelineOptionError(
        `the image is ${width}×${height}: its sides must be multiples of ${f} (the first stage's factor), at most ${MAX_SIDE}`,
      );
    }
    if (options.sample && this.quantized) {
      throw new PipelineOptionError(`this first stage is a ${this.target}: it has no posterior to sample`);
    }
    if (options.seed !== undefined && !options.sample) {
      throw new PipelineOptionError("a seed draws a sample of the posterior: it needs sample");
    }
    const x = Tensor.from(this.device, rgbaToPixels([image]), [1, 3, height, width]);
    const shape = [1, this.latentChannels, height / f, width / f];
    try {
      if (this.vae instanceof VQModel) {
        const latent = await this.vae.encodeLatent(x);
        return { latent, shape, indices: (await this.vae.quantize(latent, shape)).indices };
      }
      const posterior = await this.vae.encode(x);
      return { latent: options.sample ? posterior.sample(new Generator(options.seed ?? 0)) : posterior.mode(), shape };
    } finally {
      x.dispose();
    }
  }

  /** Latents [B, embed_dim, h, w] (unscaled; VQ: quantized first) to B opaque images f times larger. */
  async decode(latent: Float32Array, shape: readonly number[]): Promise<RgbaImage[]> {
    const f = this.downscale;
    const channels = this.latentChannels;
    const [b, c, h, w] = shape;
    const fits =
      shape.length === 4 &&
      shape.every((n) => Number.isInteger(n) && n > 0) &&
      c === channels &&
      h * f <= MAX_SIDE &&
      w * f <= MAX_SIDE &&
      latent.length === b * c * h * w;
    if (!fits) {
      throw new PipelineOptionError(
        `the latent is [${shape.join(", ")}] (${latent.length} values): this first stage decodes [B, ${channels}, h, w] (its embed_dim ${channels}), h and w at most ${MAX_SIDE / f}`,
      );
    }
    const out = this.vae.cfg.ddconfig.out_ch;
    const pixels = await this.vae.decodeToHost(latent, shape);
    return pixelsToRgba(pixels, [b, out, h * f, w * f]);
  }

  dispose(): void {
    this.release();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
