/**
 * UNetModel of CompVis/Stability `ldm/modules/diffusionmodules/openaimodel.py`, with SpatialTransformers (Stable
 * Diffusion, cin256) or AttentionBlocks (the paper's unconditional and concat models), scale-shift norm and
 * ResBlock up/downsampling as configured, with the original module names so parameter keys are those under
 * `model.diffusion_model`. Inference only: dropout is the identity.
 */
import {
  add,
  affine,
  attention,
  concat,
  conv1x1FromTokens,
  conv1x1ToTokens,
  mul,
  silu,
  slice,
  timestepEmbedding,
  upsampleNearest2x,
} from "@ldm/kernels";
import { Conv2d, GroupNorm, Linear, type VarBuilder } from "@ldm/nn";
import { formatShape, type Tensor } from "@ldm/tensor";
import { type UNetConfig, unetHeads } from "@ldm/weights";
import { ProjectedContext, SpatialTransformer } from "./attention.ts";
import { asDType } from "./dtype.ts";
import { conv1x1, conv3x3, Upsample } from "./layers.ts";

/** openaimodel's normalization(): GroupNorm32 with torch's default eps 1e-5 (unlike the 1e-6 of the VAE). */
function normalization(vb: VarBuilder, channels: number): GroupNorm {
  return new GroupNorm(vb, { groups: 32, channels, eps: 1e-5 });
}

/** What a ResBlock does to the spatial size (openaimodel's `up` / `down`, used with resblock_updown). */
export type Resample = "up" | "down" | undefined;

/** avg_pool2d(kernel 2, stride 2) of NCHW (openaimodel's Downsample without a conv; odd sizes drop the last row/column as torch does). */
export function avgPool2x2(x: Tensor): Tensor {
  return x.device.tidy(() => {
    const [b, c, h, w] = x.shape;
    const [h2, w2] = [Math.floor(h / 2), Math.floor(w / 2)];
    let even = x;
    if (h % 2) even = slice(even, 2, 0, 2 * h2);
    if (w % 2) even = slice(even, 3, 0, 2 * w2);
    const blocks = even.reshape([b, c, h2, 2, w2, 2]);
    const rows = add(slice(blocks, 3, 0, 1), slice(blocks, 3, 1, 2));
    return affine(add(slice(rows, 5, 0, 1), slice(rows, 5, 1, 2)), 0.25).reshape([b, c, h2, w2]);
  });
}

function resample(x: Tensor, how: Resample): Tensor {
  if (how === "up") return upsampleNearest2x(x);
  return how === "down" ? avgPool2x2(x) : x;
}

export class ResBlock {
  /** in_layers = [GroupNorm, SiLU, conv3×3]: keys in_layers.0 and in_layers.2. */
  readonly in_norm: GroupNorm;
  readonly in_conv: Conv2d;
  /** emb_layers = [SiLU, Linear]: key emb_layers.1; twice the channels with use_scale_shift_norm (scale, shift). */
  readonly emb_proj: Linear;
  /** out_layers = [GroupNorm, SiLU, Dropout, conv3×3]: keys out_layers.0 and out_layers.3. */
  readonly out_norm: GroupNorm;
  readonly out_conv: Conv2d;
  /** A 1×1 convolution when the channel count changes, else the identity. */
  readonly skip_connection?: Conv2d;

  constructor(
    vb: VarBuilder,
    channels: number,
    embChannels: number,
    readonly outChannels: number,
    readonly options: { useScaleShiftNorm?: boolean; resample?: Resample } = {},
  ) {
    this.in_norm = normalization(vb.pp("in_layers").pp(0), channels);
    this.in_conv = conv3x3(vb.pp("in_layers").pp(2), channels, outChannels);
    const embOut = options.useScaleShiftNorm ? 2 * outChannels : outChannels;
    this.emb_proj = new Linear(vb.pp("emb_layers").pp(1), { inFeatures: embChannels, outFeatures: embOut });
    this.out_norm = normalization(vb.pp("out_layers").pp(0), outChannels);
    this.out_conv = conv3x3(vb.pp("out_layers").pp(3), outChannels, outChannels);
    if (outChannels !== channels) {
      this.skip_connection = conv1x1(vb.pp("skip_connection"), channels, outChannels);
    }
  }

  /** `embSilu` is SiLU(emb), the same for every ResBlock of a forward, so the UNet computes it once. */
  forward(x: Tensor, embSilu: Tensor): Tensor {
    return x.device.tidy(() => {
      const how = this.options.resample;
      // updown: the in_layers' norm and SiLU, then h and x resampled alike, then the conv — the norm, SiLU and
      // an upsampling read by the convolution (Conv2d's `input`).
      const h =
        how === "down"
          ? this.in_conv.forward(avgPool2x2(this.in_norm.forward(x, { silu: true })))
          : this.in_conv.forward(x, { input: { norm: this.in_norm, silu: true, upsample2x: how === "up" } });
      const input = resample(x, how);
      const embOut = this.emb_proj.forward(embSilu);
      const skip = this.skip_connection ? this.skip_connection.forward(input) : input;
      if (!this.options.useScaleShiftNorm) {
        // h + emb_out[..., None, None] is added inside the group norm, never stored.
        return this.out_conv.forward(h, { input: { norm: this.out_norm, silu: true, shift: embOut }, residual: skip });
      }
      // out_norm(h) · (1 + scale) + shift, scale and shift the halves of emb_out.
      const [b, c] = [h.shape[0], this.outChannels];
      const scale = affine(slice(embOut, 1, 0, c), 1, 1).reshape([b, c, 1, 1]);
      const shift = slice(embOut, 1, c, 2 * c).reshape([b, c, 1, 1]);
      const normed = add(mul(this.out_norm.forward(h), scale), shift);
      return this.out_conv.forward(silu(normed), { residual: skip });
    });
  }
}

/**
 * openaimodel's AttentionBlock: GroupNorm, a 1-D 1×1 conv `qkv` to 3·C channels, self-attention over the
 * positions, 1-D 1×1 `proj_out`, residual. QKVAttentionLegacy (the default) splits heads before q/k/v, so each
 * head's q, k, v are adjacent in the qkv channels; QKVAttention (use_new_attention_order) splits q/k/v first.
 * Both scale q and k by d^(-1/4), i.e. scores by 1/√d, what the attention kernel does.
 */
export class AttentionBlock {
  readonly norm: GroupNorm;
  readonly qkv: Conv1d1x1;
  readonly proj_out: Conv1d1x1;

  constructor(
    vb: VarBuilder,
    readonly channels: number,
    readonly heads: number,
    readonly newOrder: boolean,
  ) {
    if (channels % heads)
      throw new Error(`AttentionBlock ${vb.prefix}: ${channels} channels do not split into ${heads} heads`);
    this.norm = normalization(vb.pp("norm"), channels);
    this.qkv = new Conv1d1x1(vb.pp("qkv"), channels, 3 * channels);
    this.proj_out = new Conv1d1x1(vb.pp("proj_out"), channels, channels);
  }

  forward(x: Tensor): Tensor {
    return x.device.tidy(() => {
      const [b, c, h, w] = x.shape;
      const tokens = this.qkv.forwardToTokens(this.norm.forward(x)); // [B, T, 3C]
      const d = c / this.heads;
      let q: Tensor;
      let k: Tensor;
      let v: Tensor;
      if (this.newOrder) [q, k, v] = [0, 1, 2].map((i) => slice(tokens, 2, i * c, (i + 1) * c));
      else {
        const perHead = tokens.reshape([b, h * w, this.heads, 3 * d]);
        [q, k, v] = [0, 1, 2].map((i) => slice(perHead, 3, i * d, (i + 1) * d).reshape([b, h * w, c]));
      }
      const attended = attention(q, k, v, { heads: this.heads });
      return this.proj_out.forwardFromTokens(attended, [h, w], { residual: x });
    });
  }
}

/** openaimodel's conv_nd(1, in, out, 1): weight [out, in, 1], applied over positions as a 1×1 conv on tokens. */
export class Conv1d1x1 {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(vb: VarBuilder, inChannels: number, outChannels: number) {
    this.weight = vb.get("weight", [outChannels, inChannels, 1]);
    this.bias = vb.get("bias", [outChannels]);
  }

  /** x [B, in, H, W] → tokens [B, H·W, out]. */
  forwardToTokens(x: Tensor): Tensor {
    return x.device.tidy(() => conv1x1ToTokens(x, this.pointwise(), { bias: this.bias }));
  }

  /** tokens [B, H·W, in] → [B, out, H, W] (+ residual). */
  forwardFromTokens(tokens: Tensor, size: readonly [number, number], epilogue: { residual?: Tensor } = {}): Tensor {
    return tokens.device.tidy(() =>
      conv1x1FromTokens(tokens, this.pointwise(), size, { bias: this.bias, residual: epilogue.residual }),
    );
  }

  /** The weight viewed as [out, in, 1, 1] (freed with the enclosing tidy). */
  private pointwise(): Tensor {
    return this.weight.reshape([...this.weight.shape, 1]);
  }
}

/** Stride-2 3×3 convolution with padding 1 (openaimodel's Downsample with use_conv=True), key `op`. */
export class Downsample {
  readonly op: Conv2d;

  constructor(vb: VarBuilder, channels: number) {
    this.op = new Conv2d(vb.pp("op"), {
      inChannels: channels,
      outChannels: channels,
      kernelSize: 3,
      stride: 2,
      padding: 1,
    });
  }

  forward(x: Tensor): Tensor {
    return this.op.forward(x);
  }
}

type Layer = Conv2d | ResBlock | SpatialTransformer | AttentionBlock | Downsample | Upsample;

/** openaimodel's TimestepEmbedSequential: hands each layer what it takes (emb to ResBlocks, context to transformers). */
export class TimestepEmbedSequential {
  constructor(readonly layers: Layer[]) {}

  /** `upsampleSize`: the spatial size an Upsample layer must reach (that of the skip connection it meets next). */
  forward(
    x: Tensor,
    embSilu: Tensor,
    context: ProjectedContext | undefined,
    upsampleSize?: readonly [number, number],
  ): Tensor {
    return x.device.tidy(() => {
      let h = x;
      for (const layer of this.layers) {
        if (layer instanceof ResBlock) h = layer.forward(h, embSilu);
        else if (layer instanceof SpatialTransformer) h = layer.forward(h, context as ProjectedContext);
        else if (layer instanceof Upsample) h = layer.forward(h, upsampleSize);
        else h = layer.forward(h);
      }
      return h;
    });
  }
}

export interface UNetInputs {
  /** Noisy latents [B, C, H, W]. */
  x: Tensor;
  /** Timesteps [B] (f32; fractional values allowed, as k-diffusion samplers produce). */
  timesteps: Tensor;
  /** Cross-attention context [B, L, context_dim]; absent for UNets without SpatialTransformers. */
  context?: Tensor;
  /**
   * The context's keys and values from `projectContext(context)`, for calls that share one context (a sampling
   * run's); without it every call projects the context itself.
   */
  projected?: ProjectedContext;
  /** Inpainting: [B, in_channels − C, H, W] concatenated to x along channels (mask, masked-image latent). */
  cConcat?: Tensor;
}

export class UNetModel {
  readonly time_embed_0: Linear;
  readonly time_embed_2: Linear;
  readonly input_blocks: TimestepEmbedSequential[] = [];
  readonly middle_block: TimestepEmbedSequential;
  readonly output_blocks: TimestepEmbedSequential[] = [];
  /** out = [GroupNorm, SiLU, conv3×3]: keys out.0 and out.2. */
  readonly out_norm: GroupNorm;
  readonly out_conv: Conv2d;

  constructor(
    readonly vb: VarBuilder,
    readonly cfg: UNetConfig,
  ) {
    const mc = cfg.model_channels;
    const embDim = mc * 4;
    this.time_embed_0 = new Linear(vb.pp("time_embed").pp(0), { inFeatures: mc, outFeatures: embDim });
    this.time_embed_2 = new Linear(vb.pp("time_embed").pp(2), { inFeatures: embDim, outFeatures: embDim });

    const transformer = (block: VarBuilder, channels: number): SpatialTransformer | AttentionBlock =>
      cfg.use_spatial_transformer
        ? new SpatialTransformer(block, {
            inChannels: channels,
            ...unetHeads(cfg, channels),
            depth: cfg.transformer_depth,
            contextDim: cfg.context_dim as number,
            useLinear: cfg.use_linear_in_transformer,
          })
        : new AttentionBlock(block, channels, unetHeads(cfg, channels).heads, cfg.use_new_attention_order);
    const options = { useScaleShiftNorm: cfg.use_scale_shift_norm };

    const input = vb.pp("input_blocks");
    this.input_blocks.push(new TimestepEmbedSequential([conv3x3(input.pp(0).pp(0), cfg.in_channels, mc)]));
    const skipChannels = [mc];
    let ch = mc;
    let ds = 1;
    cfg.channel_mult.forEach((mult, level) => {
      for (let i = 0; i < cfg.num_res_blocks; i++) {
        const block = input.pp(this.input_blocks.length);
        const layers: Layer[] = [new ResBlock(block.pp(0), ch, embDim, mult * mc, options)];
        ch = mult * mc;
        if (cfg.attention_resolutions.includes(ds)) layers.push(transformer(block.pp(1), ch));
        this.input_blocks.push(new TimestepEmbedSequential(layers));
        skipChannels.push(ch);
      }
      if (level !== cfg.channel_mult.length - 1) {
        const block = input.pp(this.input_blocks.length);
        const down = cfg.resblock_updown
          ? new ResBlock(block.pp(0), ch, embDim, ch, { ...options, resample: "down" })
          : new Downsample(block.pp(0), ch);
        this.input_blocks.push(new TimestepEmbedSequential([down]));
        skipChannels.push(ch);
        ds *= 2;
      }
    });

    const middle = vb.pp("middle_block");
    this.middle_block = new TimestepEmbedSequential([
      new ResBlock(middle.pp(0), ch, embDim, ch, options),
      transformer(middle.pp(1), ch),
      new ResBlock(middle.pp(2), ch, embDim, ch, options),
    ]);

    const output = vb.pp("output_blocks");
    [...cfg.channel_mult.entries()].reverse().forEach(([level, mult]) => {
      for (let i = 0; i < cfg.num_res_blocks + 1; i++) {
        const block = output.pp(this.output_blocks.length);
        const skip = skipChannels.pop() as number;
        const layers: Layer[] = [new ResBlock(block.pp(0), ch + skip, embDim, mc * mult, options)];
        ch = mc * mult;
        if (cfg.attention_resolutions.includes(ds)) layers.push(transformer(block.pp(layers.length), ch));
        if (level && i === cfg.num_res_blocks) {
          const at = block.pp(layers.length);
          layers.push(
            cfg.resblock_updown
              ? new ResBlock(at, ch, embDim, ch, { ...options, resample: "up" })
              : new Upsample(at, ch),
          );
          ds = Math.floor(ds / 2);
        }
        this.output_blocks.push(new TimestepEmbedSequential(layers));
      }
    });

    this.out_norm = normalization(vb.pp("out").pp(0), ch);
    this.out_conv = conv3x3(vb.pp("out").pp(2), mc, cfg.out_channels);
  }

  /** The cross-attention keys and values of `context` [B, L, context_dim], to pass to forward as `projected`. */
  projectContext(context: Tensor): ProjectedContext {
    const layers = [...this.input_blocks, this.middle_block, ...this.output_blocks].flatMap((block) =>
      block.layers.flatMap((layer) =>
        layer instanceof SpatialTransformer ? layer.transformer_blocks.map((b) => b.attn2) : [],
      ),
    );
    return new ProjectedContext(context, layers, this.vb.dtype);
  }

  /** The model output (ε or v, as the model was trained) [B, out_channels, H, W], in the model's dtype. */
  forward(inputs: UNetInputs): Tensor {
    this.checkInputs(inputs);
    const { timesteps, cConcat } = inputs;
    const dtype = this.vb.dtype;
    const device = inputs.x.device;
    return device.tidy(() => {
      const x = asDType(inputs.x, dtype);
      const context = inputs.projected ?? (inputs.context && this.projectContext(inputs.context));
      const tEmb = timestepEmbedding(asDType(timesteps, "f32"), this.cfg.model_channels, { dtype });
      // Every ResBlock takes SiLU(emb), never emb: the SiLU runs in time_embed.2's epilogue.
      const embSilu = this.time_embed_2.forward(this.time_embed_0.forward(tEmb, { activation: "silu" }), {
        activation: "silu",
      });

      const hs: Tensor[] = [];
      let h = cConcat ? concat([x, asDType(cConcat, dtype)], 1) : x;
      for (const block of this.input_blocks) {
        h = block.forward(h, embSilu, context);
        hs.push(h);
      }
      h = this.middle_block.forward(h, embSilu, context);
      for (const block of this.output_blocks) {
        const skip = hs.pop() as Tensor;
        const joined = concat([h, skip], 1);
        h.dispose();
        skip.dispose();
        // The stride-2 Downsample rounds odd sizes up, so ×2 can overshoot the skip the Upsample meets next.
        const next = hs.at(-1)?.shape;
        h = block.forward(joined, embSilu, context, next && [next[2], next[3]]);
        joined.dispose();
      }
      return this.out_conv.forward(this.out_norm.forward(h, { silu: true }));
    });
  }

  private checkInputs({ x, timesteps, context, projected, cConcat }: UNetInputs): void {
    const cfg = this.cfg;
    const fail = (what: string) => {
      throw new Error(`UNet (${this.vb.prefix || "unet"}): ${what}`);
    };
    if (x.shape.length !== 4) fail(`x ${formatShape(x.shape)} must be [B, C, H, W]`);
    const [b, c, h, w] = x.shape;
    const extra = cConcat?.shape[1] ?? 0;
    if (c + extra !== cfg.in_channels) {
      fail(
        cConcat
          ? `x has ${c} channels and c_concat ${extra}: the model takes ${cfg.in_channels} in all`
          : `x has ${c} channels, the model takes ${cfg.in_channels}${cfg.in_channels > c ? " (an inpainting model needs c_concat)" : ""}`,
      );
    }
    if (
      cConcat &&
      (cConcat.shape.length !== 4 || cConcat.shape[0] !== b || cConcat.shape[2] !== h || cConcat.shape[3] !== w)
    ) {
      fail(`c_concat ${formatShape(cConcat.shape)} does not match x ${formatShape(x.shape)} outside channels`);
    }
    if (timesteps.shape.length !== 1 || timesteps.shape[0] !== b) {
      fail(`timesteps ${formatShape(timesteps.shape)} must be [${b}] (one per batch item)`);
    }
    if (projected && projected.context !== context) fail("projected is not the projection of this call's context");
    if (cfg.context_dim === undefined) {
      if (context) fail(`context ${formatShape(context.shape)} given, but this UNet has no cross-attention`);
    } else if (!context) {
      fail(`needs a context [${b}, L, ${cfg.context_dim}] (its cross-attention's conditioning)`);
    } else if (context.shape.length !== 3 || context.shape[0] !== b || context.shape[2] !== cfg.context_dim) {
      fail(`context ${formatShape(context.shape)} must be [${b}, L, ${cfg.context_dim}]`);
    }
  }
}
