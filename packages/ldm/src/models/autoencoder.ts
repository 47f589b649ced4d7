/**
 * The first stages of CompVis `ldm/models/autoencoder.py`. AutoencoderKL: Encoder → quant_conv gives the moments
 * (mean and log-variance) of a diagonal Gaussian; post_quant_conv → Decoder maps a latent back to an image.
 * VQModelInterface: Encoder → quant_conv gives the latent h, which decode quantizes to its nearest codebook
 * entries (taming's VectorQuantizer2) before post_quant_conv → Decoder. The latent scale factor (0.18215 for
 * SD 1.x/2.x; 1 for most of the paper's models) belongs to the pipeline, as in the original.
 */
import { slice } from "@ldm/kernels";
import type { Conv2d, VarBuilder } from "@ldm/nn";
import { formatShape, Tensor } from "@ldm/tensor";
import type { VaeConfig } from "@ldm/weights";
import type { Generator } from "../random/index.ts";
import { asDType } from "./dtype.ts";
import { conv1x1 } from "./layers.ts";
import { blendTiles, planTiles, type TileOptions } from "./tiles.ts";
import { Decoder, Encoder } from "./vae.ts";

/**
 * `DiagonalGaussianDistribution(moments)`: mean and log-variance are the two channel halves, the
 * log-variance clamped to [−30, 20]. Held on the host: the latent is small, and sampling draws its noise
 * from a host generator (torch's CPU randn) anyway.
 */
export class DiagonalGaussianDistribution {
  readonly mean: Float32Array;
  readonly logvar: Float32Array;
  readonly std: Float32Array;
  /** [B, z, h, w] of the mean, log-variance, std and of a sample. */
  readonly shape: readonly number[];

  constructor(moments: Float32Array, momentsShape: readonly number[]) {
    const [b, c2, h, w] = momentsShape;
    const c = c2 / 2;
    this.shape = [b, c, h, w];
    const plane = c * h * w;
    this.mean = new Float32Array(b * plane);
    this.logvar = new Float32Array(b * plane);
    for (let i = 0; i < b; i++) {
      this.mean.set(moments.subarray(2 * i * plane, (2 * i + 1) * plane), i * plane);
      this.logvar.set(moments.subarray((2 * i + 1) * plane, (2 * i + 2) * plane), i * plane);
    }
    this.logvar = this.logvar.map((v) => Math.min(Math.max(v, -30), 20));
    this.std = this.logvar.map((v) => Math.exp(0.5 * v));
  }

  static async fromMoments(moments: Tensor): Promise<DiagonalGaussianDistribution> {
    return new DiagonalGaussianDistribution(await moments.toFloat32(), moments.shape);
  }

  /** mean + std · ε with ε = torch.randn(mean.shape, generator) (float32). */
  sample(generator: Generator): Float32Array {
    const noise = generator.randn(this.shape);
    return this.mean.map((m, i) => m + this.std[i] * noise[i]);
  }

  mode(): Float32Array {
    return this.mean;
  }
}

export class AutoencoderKL {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quant_conv: Conv2d;
  readonly post_quant_conv: Conv2d;

  /** `vb` points at the VAE (canonical prefix `first_stage_model`). */
  constructor(
    readonly vb: VarBuilder,
    readonly cfg: VaeConfig,
  ) {
    const { ddconfig: dd, embed_dim: embed } = cfg;
    this.encoder = new Encoder(vb.pp("encoder"), dd);
    this.decoder = new Decoder(vb.pp("decoder"), dd);
    // KL: moments (mean, log-variance) of 2·embed_dim channels; VQ: the latent itself.
    const moments = cfg.n_embed === undefined ? 2 : 1;
    this.quant_conv = conv1x1(vb.pp("quant_conv"), moments * dd.z_channels, moments * embed);
    this.post_quant_conv = conv1x1(vb.pp("post_quant_conv"), embed, dd.z_channels);
  }

  /**
   * The latent of an image as LatentDiffusion.encode_first_stage + get_first_stage_encoding make it, unscaled:
   * a sample of the Gaussian (drawing from `generator`) for KL.
   */
  async encodeLatent(x: Tensor, generator: Generator): Promise<Float32Array> {
    return (await this.encode(x)).sample(generator);
  }

  /** Pixels per latent cell along each axis (8 for every SD VAE). */
  get downscale(): number {
    return 2 ** (this.cfg.ddconfig.ch_mult.length - 1);
  }

  /** x [B, in_channels, H, W] in [−1, 1] → moments [B, 2·embed_dim, H/f, W/f] (mean, then log-variance). */
  encodeMoments(x: Tensor): Tensor {
    const { in_channels } = this.cfg.ddconfig;
    const f = this.downscale;
    if (x.shape.length !== 4 || x.shape[1] !== in_channels || x.shape[2] % f || x.shape[3] % f) {
      throw new Error(
        `VAE encode: image ${formatShape(x.shape)} must be [B, ${in_channels}, H, W] with H and W multiples of ${f}`,
      );
    }
    return x.device.tidy(() => this.quant_conv.forward(this.encoder.forward(asDType(x, this.vb.dtype))));
  }

  async encode(x: Tensor): Promise<DiagonalGaussianDistribution> {
    const moments = this.encodeMoments(x);
    try {
      return await DiagonalGaussianDistribution.fromMoments(moments);
    } finally {
      moments.dispose();
    }
  }

  /** z [B, embed_dim, h, w], unscaled (the pipeline divides by scale_factor first) → image [B, out_ch, f·h, f·w]. */
  decode(z: Tensor): Tensor {
    const { embed_dim } = this.cfg;
    if (z.shape.length !== 4 || z.shape[1] !== embed_dim) {
      throw new Error(`VAE decode: latent ${formatShape(z.shape)} must be [B, ${embed_dim}, h, w]`);
    }
    return z.device.tidy(() => this.decoder.forward(this.post_quant_conv.forward(asDType(z, this.vb.dtype))));
  }

  /**
   * decode() in overlapping latent tiles, blended with linear ramps across each overlap, so memory is
   * bounded by the tile size. Each tile normalises with its own GroupNorm statistics (as every tiled VAE
   * decoder does), so the result differs slightly from decode(); the ramps keep tile borders invisible.
   */
  async decodeTiled(z: Tensor, options: TileOptions): Promise<Tensor> {
    const [b, , h, w] = z.shape;
    const f = this.downscale;
    const image = await this.decodeTilesToHost(z, options);
    return Tensor.from(z.device, image, [b, this.cfg.ddconfig.out_ch, h * f, w * f], this.vb.dtype);
  }

  /**
   * Host latents z [B, embed_dim, h, w] (unscaled) → host image [B, out_ch, f·h, f·w]: decode(), or with
   * `tiling` decodeTiled() (`true`: DEFAULT_VAE_TILES), whose GPU memory is bounded by one tile's.
   */
  async decodeToHost(z: Float32Array, shape: readonly number[], tiling: VaeTiling = false): Promise<Float32Array> {
    const device = this.vb.device;
    const latents = Tensor.from(device, z, shape);
    let image: Tensor | undefined;
    try {
      if (tiling) return await this.decodeTilesToHost(latents, tiling === true ? DEFAULT_VAE_TILES : tiling);
      image = this.decode(latents);
      return await image.toFloat32();
    } finally {
      latents.dispose();
      image?.dispose();
    }
  }

  private async decodeTilesToHost(z: Tensor, options: TileOptions): Promise<Float32Array> {
    const [b, , h, w] = z.shape;
    const tiles = planTiles(h, w, options);
    const decoded: Float32Array[] = [];
    for (const tile of tiles) {
      const image = z.device.tidy(() => {
        const rows = slice(z, 2, tile.y, tile.y + tile.height);
        return this.decode(slice(rows, 3, tile.x, tile.x + tile.width));
      });
      decoded.push(await image.toFloat32());
      image.dispose();
    }
    const channels = this.cfg.ddconfig.out_ch;
    return blendTiles(decoded, tiles, { batch: b, channels, height: h, width: w, scale: this.downscale });
  }
}

/**
 * VAE tiling for low-memory devices: false (one decode), true (DEFAULT_VAE_TILES) or explicit tiles in latent
 * cells.
 */
export type VaeTiling = boolean | TileOptions;

/** 32 latent cells (256 pixels for SD) overlapping by 8: a quarter, as diffusers' tiled VAE decode. */
export const DEFAULT_VAE_TILES: Readonly<TileOptions> = Object.freeze({ tileSize: 32, overlap: 8 });

/**
 * VQModelInterface (and VQModel: same weights): AutoencoderKL's encoder and decoder around taming's
 * VectorQuantizer2, `quantize.embedding.weight` [n_embed, embed_dim]. encode gives the pre-quantization latent
 * h = quant_conv(encoder(x)); decode quantizes first, unless `forceNotQuantize`.
 */
export class VQModel extends AutoencoderKL {
  readonly codebook: Tensor;
  private codes?: Float32Array;

  constructor(vb: VarBuilder, cfg: VaeConfig) {
    super(vb, cfg);
    if (cfg.n_embed === undefined) throw new Error("VQModel: the first stage config has no n_embed");
    this.codebook = vb.pp("quantize").pp("embedding").get("weight", [cfg.n_embed, cfg.embed_dim]);
  }

  /** VQModelInterface.encode: h, not quantized (what the diffusion model sees). */
  override async encodeLatent(x: Tensor, _generator?: Generator): Promise<Float32Array> {
    const h = this.encodeMoments(x);
    try {
      return await h.toFloat32();
    } finally {
      h.dispose();
    }
  }

  /** Run decode on the latent as given (VQModelInterface.decode's force_not_quantize). */
  forceNotQuantize = false;

  /**
   * VectorQuantizer2.forward on host latents [B, embed_dim, h, w]: per position the code at the least
   * ‖z‖² + ‖e‖² − 2 z·e (float64 here; ties go to the lowest index, as torch.argmin), returned as
   * z + (e − z) in float32, as the straight-through estimator writes it, with the indices [B, h, w].
   */
  async quantize(z: Float32Array, shape: readonly number[]): Promise<{ quant: Float32Array; indices: Int32Array }> {
    const codes = await this.codebookValues();
    return quantizeNearest(z, shape, codes, this.cfg.embed_dim);
  }

  override async decodeToHost(
    z: Float32Array,
    shape: readonly number[],
    tiling: VaeTiling = false,
  ): Promise<Float32Array> {
    const quant = this.forceNotQuantize ? z : (await this.quantize(z, shape)).quant;
    return super.decodeToHost(quant, shape, tiling);
  }

  private async codebookValues(): Promise<Float32Array> {
    this.codes ??= await this.codebook.toFloat32();
    return this.codes;
  }
}

/** The nearest-code search of VectorQuantizer2 (see VQModel.quantize), on the host. */
export function quantizeNearest(
  z: Float32Array,
  shape: readonly number[],
  codes: Float32Array,
  dim: number,
): { quant: Float32Array; indices: Int32Array } {
  const [b, c, h, w] = shape;
  if (c !== dim) throw new Error(`VQ quantize: latent ${formatShape(shape)} must have ${dim} channels`);
  const n = codes.length / dim;
  const norms = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let sum = 0;
    for (let k = 0; k < dim; k++) sum += codes[j * dim + k] ** 2;
    norms[j] = sum;
  }
  const plane = h * w;
  const quant = new Float32Array(z.length);
  const indices = new Int32Array(b * plane);
  const v = new Float64Array(dim);
  for (let i = 0; i < b; i++) {
    for (let p = 0; p < plane; p++) {
      let zz = 0;
      for (let k = 0; k < dim; k++) {
        v[k] = z[(i * c + k) * plane + p];
        zz += v[k] * v[k];
      }
      let best = 0;
      let bestDistance = Number.POSITIVE_INFINITY;
      for (let j = 0; j < n; j++) {
        let dot = 0;
        for (let k = 0; k < dim; k++) dot += v[k] * codes[j * dim + k];
        const distance = zz + norms[j] - 2 * dot;
        if (distance < bestDistance) {
          bestDistance = distance;
          best = j;
        }
      }
      indices[i * plane + p] = best;
      for (let k = 0; k < dim; k++) {
        const at = (i * c + k) * plane + p;
        quant[at] = Math.fround(z[at] + Math.fround(codes[best * dim + k] - z[at]));
      }
    }
  }
  return { quant, indices };
}

/** The first stage a config names: AutoencoderKL, or VQModel when it has a codebook. */
export function firstStageModel(vb: VarBuilder, cfg: VaeConfig): AutoencoderKL {
  return cfg.n_embed === undefined ? new AutoencoderKL(vb, cfg) : new VQModel(vb, cfg);
}
