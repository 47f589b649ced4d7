/**
 * A first stage as an image codec: one saved alone (CompVis models/first_stage_models/*: VQModel or AutoencoderKL
 * with its own YAML), or a LatentDiffusion's (`first_stage_model.*` of an SD 1.x/2.x or paper checkpoint, built as
 * its first_stage_config says), computing what the original modules compute:
 * - KL encode: the posterior's mode (its mean) by default, or posterior.sample() with ε drawn as after
 *   torch.manual_seed(seed); decode: the decoder on the latent.
 * - VQ encode: the pre-quantization latent h = quant_conv(encoder(x)) (VQModelInterface.encode, what a
 *   LatentDiffusion sees) and the index of each position's nearest code; decode quantizes first
 *   (VQModelInterface.decode; VQModel.forward decodes encode's quant, the same codes).
 * Latents are unscaled (the first stage's own, what first_stage_model.encode gives and decode takes) unless asked
 * for scaled: a LatentDiffusion's first stage can also give and take its UNet's latents, times its scale_factor
 * (the config's, or the checkpoint's buffer with scale_by_std), as get_first_stage_encoding(encode_first_stage(x))
 * and decode_first_stage(z) do.
 */
import { Device, defaultDtype, type ParamDType, Tensor } from "@ldm/tensor";
import { DetectionError, firstStageConfigFromYaml } from "@ldm/weights";
import { readConfigFile } from "@ldm/weights/node";
import { pixelsToRgba, rgbaToPixels } from "../image/pixels.ts";
import type { RgbaImage } from "../image/png.ts";
import { type AutoencoderKL, VQModel } from "../models/autoencoder.ts";
import { loadFirstStage, loadModel } from "../models/load-node.ts";
import { Generator, type Seed } from "../random/index.ts";
import { PipelineOptionError } from "./errors.ts";
import { checkImageInput } from "./inputs.ts";
import { MAX_SIDE } from "./memory.ts";
import { companionFiles } from "./model-files.ts";

export interface FirstStageLoadOptions {
  /**
   * The first stage's own YAML, or a LatentDiffusion's (its first_stage_config); default `<stem>.yaml` beside the
   * checkpoint, and without one the configuration detected from the weights (Stable Diffusion checkpoints).
   */
  config?: string;
  /** The device to run on; one is created (and destroyed by dispose()) when absent. */
  device?: Device;
  /** lavapipe's subgroup size for the device created when `device` is absent (DeviceOptions.cpuLanes). */
  cpuLanes?: number;
  /** "auto": the adapter's defaultDtype (f16 on GPUs with shader-f16, f32 on CPU adapters); default f32. */
  dtype?: ParamDType | "auto";
}

export interface FirstStageEncodeOptions {
  /** KL: draw from the posterior instead of taking its mode. */
  sample?: boolean;
  /** The torch seed of that draw (default 0). */
  seed?: Seed;
  /** A LatentDiffusion's first stage: the latent times its scale factor, the space its UNet samples in. */
  scaled?: boolean;
}

export interface FirstStageDecodeOptions {
  /** A LatentDiffusion's first stage: the latent is its UNet's, divided by the scale factor before decoding. */
  scaled?: boolean;
}

export interface FirstStageLatent {
  /** [1, embed_dim, H/f, W/f]: KL the posterior's mode or sample, VQ h before quantization; scaled if asked. */
  latent: Float32Array;
  shape: number[];
  /** VQ: each position's nearest code, [1, H/f, W/f]. */
  indices?: Int32Array;
}

export class FirstStage {
  private constructor(
    readonly vae: AutoencoderKL,
    /** model.target's class (VQModel, VQModelInterface or AutoencoderKL), or first_stage_config's. */
    readonly target: string,
    /**
     * A LatentDiffusion's latent scale: its config's scale_factor, or with scale_by_std the checkpoint's buffer.
     * Undefined for a first stage saved alone, which has none.
     */
    readonly scaleFactor: number | undefined,
    private readonly release: () => void,
  ) {}

  /**
   * Loads a first stage's own checkpoint (keys without a prefix) as its own YAML describes it, or the first stage
   * of a LatentDiffusion's checkpoint (first_stage_model.*) as its config, or its detected configuration, does.
   */
  static async load(path: string, options: FirstStageLoadOptions = {}): Promise<FirstStage> {
    const { config } = companionFiles(path, { config: options.config });
    const alone = config ? firstStageConfigFromYaml(readConfigFile(config), config) : undefined;
    const requested = options.dtype ?? "f32";
    const device =
      options.device ?? (await Device.create({ disableF16: requested === "f32", cpuLanes: options.cpuLanes }));
    try {
      const dtype =
        requested === "auto"
          ? defaultDtype({ isCpu: device.info.isCpu, shaderF16: device.features.shaderF16 })
          : requested;
      const release = (loaded: { dispose(): void }) => () => {
        loaded.dispose();
        if (!options.device) device.destroy();
      };
      if (alone) {
        const loaded = await loadFirstStage(path, { device, dtype, config: alone });
        return new FirstStage(loaded.vae, alone.target, undefined, release(loaded));
      }
      // The UNet's EMA copy is no part of the first stage: ema false reads the file once.
      const loaded = await loadModel(path, { device, dtype, config, components: ["vae"], ema: false }).catch((e) => {
        if (config || !(e instanceof DetectionError)) throw e;
        throw new Error(
          `${path}: no YAML given or beside it, and the weights do not say what model this is (${e.message}): give the first stage's own YAML (models/first_stage_models/<name>/config.yaml) or the LatentDiffusion's config`,
        );
      });
      const vae = loaded.vae as AutoencoderKL;
      const target = vae instanceof VQModel ? "VQModelInterface" : "AutoencoderKL";
      return new FirstStage(vae, target, loaded.scaleFactor, release(loaded));
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
    const scale = this.scale(options.scaled);
    const x = Tensor.from(this.device, rgbaToPixels([image]), [1, 3, height, width]);
    const shape = [1, this.latentChannels, height / f, width / f];
    try {
      if (this.vae instanceof VQModel) {
        const h = await this.vae.encodeLatent(x);
        return { latent: h.map((v) => v * scale), shape, indices: (await this.vae.quantize(h, shape)).indices };
      }
      const posterior = await this.vae.encode(x);
      const latent = options.sample ? posterior.sample(new Generator(options.seed ?? 0)) : posterior.mode();
      return { latent: latent.map((v) => v * scale), shape };
    } finally {
      x.dispose();
    }
  }

  /** What scaled latents are multiplied by: the LatentDiffusion's scale factor; 1 for unscaled ones. */
  private scale(scaled: boolean | undefined): number {
    if (!scaled) return 1;
    if (this.scaleFactor === undefined) {
      throw new PipelineOptionError(
        `this first stage (${this.target}) was saved alone: it has no scale_factor; scaled latents are a LatentDiffusion's (load its checkpoint and config)`,
      );
    }
    return this.scaleFactor;
  }

  /** Latents [B, embed_dim, h, w] (VQ: quantized first; scaled: divided by the scale factor first) to B opaque images f times larger. */
  async decode(
    latent: Float32Array,
    shape: readonly number[],
    options: FirstStageDecodeOptions = {},
  ): Promise<RgbaImage[]> {
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
    const scale = this.scale(options.scaled);
    const out = this.vae.cfg.ddconfig.out_ch;
    const pixels = await this.vae.decodeToHost(
      latent.map((v) => v / scale),
      shape,
    );
    return pixelsToRgba(pixels, [b, out, h * f, w * f]);
  }

  dispose(): void {
    this.release();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
