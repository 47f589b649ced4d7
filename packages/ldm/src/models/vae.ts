/**
 * The VAE's Encoder and Decoder, ported from CompVis `ldm/modules/diffusionmodules/model.py` with the same
 * module names (so parameter keys are those under `first_stage_model.encoder` / `.decoder`). Inference
 * only: dropout is the identity, and the timestep embedding these blocks can take is unused by the VAE.
 */
import { attention } from "@ldm/kernels";
import { Conv2d, GroupNorm, type VarBuilder } from "@ldm/nn";
import type { Tensor } from "@ldm/tensor";
import type { DDConfig } from "@ldm/weights";
import { conv1x1, conv3x3, Upsample } from "./layers.ts";

/** model.py's Normalize: 32 groups, eps 1e-6 (not torch's 1e-5 default). */
function normalize(vb: VarBuilder, channels: number): GroupNorm {
  return new GroupNorm(vb, { groups: 32, channels, eps: 1e-6 });
}

/**
 * A step of chain(): `owned` says whether its input is an intermediate of the chain's, which the step may free as
 * soon as it has read it (chain frees it after the step otherwise).
 */
type Step = (h: Tensor, owned: boolean) => Tensor;

/** Runs `steps` in turn, freeing each intermediate as soon as the next step has consumed it. */
function chain(x: Tensor, steps: readonly Step[]): Tensor {
  let h = x;
  for (const step of steps) {
    const next = step(h, h !== x);
    if (h !== x) h.dispose();
    h = next;
  }
  return h;
}

export class ResnetBlock {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  /** 1×1 `nin_shortcut` when the channel count changes (conv_shortcut=False in every SD VAE). */
  readonly nin_shortcut?: Conv2d;

  constructor(vb: VarBuilder, inChannels: number, outChannels: number) {
    this.norm1 = normalize(vb.pp("norm1"), inChannels);
    this.conv1 = conv3x3(vb.pp("conv1"), inChannels, outChannels);
    this.norm2 = normalize(vb.pp("norm2"), outChannels);
    this.conv2 = conv3x3(vb.pp("conv2"), outChannels, outChannels);
    if (inChannels !== outChannels) this.nin_shortcut = conv1x1(vb.pp("nin_shortcut"), inChannels, outChannels);
  }

  /**
   * `consumeInput`: x is the caller's to drop. Where the block has a shortcut convolution, x then has no reader
   * after conv1: the shortcut runs first, conv1 may normalise x over itself (Conv2d's `input.inPlace`), and x is
   * freed before conv2's tensors exist. At the decoder's last level x is the 256-channel map at 512², twice h's
   * size: the decode's peak drops from x, its normalised copy and h to x and h.
   */
  forward(x: Tensor, options: { consumeInput?: boolean } = {}): Tensor {
    return x.device.tidy(() => {
      const owned = options.consumeInput === true && this.nin_shortcut !== undefined;
      const shortcut = this.nin_shortcut ? this.nin_shortcut.forward(x) : x;
      // norm → SiLU → conv, the norm and SiLU read by the convolution (Conv2d's `input`).
      const h = this.conv1.forward(x, { input: { norm: this.norm1, silu: true, inPlace: owned } });
      if (owned) x.dispose();
      return this.conv2.forward(h, { input: { norm: this.norm2, silu: true }, residual: shortcut });
    });
  }
}

/**
 * Single-head spatial self-attention. q, k, v and proj_out are 1×1 convolutions in the original layout;
 * q/k/v are applied here after moving the normalised map to token layout [B, HW, C], where a 1×1
 * convolution is the same product as a linear layer with the weight seen as [C_out, C_in].
 */
export class AttnBlock {
  readonly norm: GroupNorm;
  readonly q: Conv2d;
  readonly k: Conv2d;
  readonly v: Conv2d;
  readonly proj_out: Conv2d;

  constructor(
    vb: VarBuilder,
    readonly channels: number,
  ) {
    this.norm = normalize(vb.pp("norm"), channels);
    this.q = conv1x1(vb.pp("q"), channels, channels);
    this.k = conv1x1(vb.pp("k"), channels, channels);
    this.v = conv1x1(vb.pp("v"), channels, channels);
    this.proj_out = conv1x1(vb.pp("proj_out"), channels, channels);
  }

  forward(x: Tensor): Tensor {
    return x.device.tidy(() => {
      const [, , h, w] = x.shape;
      const normed = this.norm.forward(x);
      // q, k, v come out as tokens and proj_out reads them: the original's reshapes and permutes, without copies.
      const [q, k, v] = [this.q, this.k, this.v].map((conv) => conv.forwardToTokens(normed));
      // softmax(q·kᵀ · c^-½)·v with one head of width c: the attention kernel's default scale.
      const attended = attention(q, k, v, { heads: 1 });
      return this.proj_out.forwardFromTokens(attended, [h, w], { residual: x });
    });
  }
}

/** Stride-2 3×3 convolution after zero padding (0, 1, 0, 1): only right and bottom, as in the original. */
export class Downsample {
  readonly conv: Conv2d;

  constructor(vb: VarBuilder, channels: number) {
    this.conv = new Conv2d(vb.pp("conv"), { inChannels: channels, outChannels: channels, kernelSize: 3, stride: 2 });
  }

  forward(x: Tensor): Tensor {
    return this.conv.forward(x, { padding: [0, 1, 0, 1] });
  }
}

class MidBlock {
  readonly block_1: ResnetBlock;
  /** Absent with attn_type "none" (make_attn's nn.Identity). */
  readonly attn_1?: AttnBlock;
  readonly block_2: ResnetBlock;

  constructor(vb: VarBuilder, channels: number, attention: boolean) {
    this.block_1 = new ResnetBlock(vb.pp("block_1"), channels, channels);
    if (attention) this.attn_1 = new AttnBlock(vb.pp("attn_1"), channels);
    this.block_2 = new ResnetBlock(vb.pp("block_2"), channels, channels);
  }

  forward(x: Tensor): Tensor {
    const attn = this.attn_1;
    return chain(x, [
      (h) => this.block_1.forward(h),
      ...(attn ? [(h: Tensor) => attn.forward(h)] : []),
      (h) => this.block_2.forward(h),
    ]);
  }
}

/** One resolution level: resnet blocks, each followed by attention where the level has it. */
interface Level {
  block: ResnetBlock[];
  attn: AttnBlock[];
}

function levelSteps(level: Level): Step[] {
  return level.block.flatMap((block, i) => {
    const attn = level.attn[i];
    const run: Step = (h, owned) => block.forward(h, { consumeInput: owned });
    return attn ? [run, (h: Tensor) => attn.forward(h)] : [run];
  });
}

export class Encoder {
  readonly conv_in: Conv2d;
  readonly down: (Level & { downsample?: Downsample })[] = [];
  readonly mid: MidBlock;
  readonly norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(vb: VarBuilder, cfg: DDConfig) {
    const { ch, ch_mult: mult } = cfg;
    this.conv_in = conv3x3(vb.pp("conv_in"), cfg.in_channels, ch);
    let resolution = cfg.resolution;
    let blockIn = ch;
    mult.forEach((m, i) => {
      const level = vb.pp("down").pp(i);
      const blockOut = ch * m;
      const entry: Level & { downsample?: Downsample } = { block: [], attn: [] };
      for (let j = 0; j < cfg.num_res_blocks; j++) {
        entry.block.push(new ResnetBlock(level.pp("block").pp(j), blockIn, blockOut));
        blockIn = blockOut;
        if (cfg.attn_resolutions.includes(resolution) && cfg.attn_type !== "none")
          entry.attn.push(new AttnBlock(level.pp("attn").pp(j), blockIn));
      }
      if (i !== mult.length - 1) {
        entry.downsample = new Downsample(level.pp("downsample"), blockIn);
        resolution = Math.floor(resolution / 2);
      }
      this.down.push(entry);
    });
    this.mid = new MidBlock(vb.pp("mid"), blockIn, cfg.attn_type !== "none");
    this.norm_out = normalize(vb.pp("norm_out"), blockIn);
    this.conv_out = conv3x3(vb.pp("conv_out"), blockIn, cfg.double_z ? 2 * cfg.z_channels : cfg.z_channels);
  }

  /** One pass over image-sized maps: its buffers are reclaimed as it goes (Device.reclaiming). */
  forward(x: Tensor): Tensor {
    return x.device.reclaiming(() =>
      chain(x, [
        (h) => this.conv_in.forward(h),
        ...this.down.flatMap((level) => {
          const down = level.downsample;
          return down ? [...levelSteps(level), (h: Tensor) => down.forward(h)] : levelSteps(level);
        }),
        (h) => this.mid.forward(h),
        (h) => this.conv_out.forward(this.norm_out.forward(h, { silu: true })),
      ]),
    );
  }
}

export class Decoder {
  readonly conv_in: Conv2d;
  readonly mid: MidBlock;
  /** Indexed by level like the original's `up` (built from the lowest resolution, stored in level order). */
  readonly up: (Level & { upsample?: Upsample })[] = [];
  readonly norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(vb: VarBuilder, cfg: DDConfig) {
    const { ch, ch_mult: mult } = cfg;
    let blockIn = ch * mult[mult.length - 1];
    let resolution = Math.floor(cfg.resolution / 2 ** (mult.length - 1));
    this.conv_in = conv3x3(vb.pp("conv_in"), cfg.z_channels, blockIn);
    this.mid = new MidBlock(vb.pp("mid"), blockIn, cfg.attn_type !== "none");
    for (let i = mult.length - 1; i >= 0; i--) {
      const level = vb.pp("up").pp(i);
      const blockOut = ch * mult[i];
      const entry: Level & { upsample?: Upsample } = { block: [], attn: [] };
      for (let j = 0; j < cfg.num_res_blocks + 1; j++) {
        entry.block.push(new ResnetBlock(level.pp("block").pp(j), blockIn, blockOut));
        blockIn = blockOut;
        if (cfg.attn_resolutions.includes(resolution) && cfg.attn_type !== "none")
          entry.attn.push(new AttnBlock(level.pp("attn").pp(j), blockIn));
      }
      if (i !== 0) {
        entry.upsample = new Upsample(level.pp("upsample"), blockIn);
        resolution *= 2;
      }
      this.up[i] = entry;
    }
    this.norm_out = normalize(vb.pp("norm_out"), blockIn);
    this.conv_out = conv3x3(vb.pp("conv_out"), blockIn, cfg.out_ch);
  }

  /**
   * One pass over image-sized maps: its buffers are reclaimed as it goes (Device.reclaiming), so a 512² decode
   * holds about what is live at once, not every level's buffers and those the sampling run left in the pool.
   */
  forward(z: Tensor): Tensor {
    const levels = [...this.up].reverse();
    return z.device.reclaiming(() =>
      chain(z, [
        (h) => this.conv_in.forward(h),
        (h) => this.mid.forward(h),
        ...levels.flatMap((level) => {
          const up = level.upsample;
          return up ? [...levelSteps(level), (h: Tensor) => up.forward(h)] : levelSteps(level);
        }),
        (h) => this.conv_out.forward(this.norm_out.forward(h, { silu: true })),
      ]),
    );
  }
}
