/**
 * What a generation needs in GPU memory, estimated before any work from the config, the size, the batch and
 * the dtype, so a request that cannot fit is refused at once with a setting that would fit, instead of growing
 * until the driver fails (a batch of 10,000 passed 9 GB on lavapipe; 100,000 crashed inside it).
 *
 * The factors are measured: the buffer pool's peak (live tensors plus the buffers it keeps for reuse) on the
 * built-in model, f32, lavapipe (2026-12-07): a UNet call held 6,550–7,100 bytes per latent cell per batch row
 * (model_channels 64: 26–28 floats per channel), the VAE decoder 2,200 bytes per pixel per image (its widest
 * full-resolution tensors 64 channels: 8.6 floats per channel). Attention at the first level (SD's) adds its
 * q, k, v, output and GEGLU tensors, 16 floats per channel more. Attention itself is flash-style: no score
 * matrix, so nothing grows with the square of the size.
 */

import type { ParamDType } from "@ldm/tensor";
import { type LdmConfig, modelParamShapes } from "@ldm/weights";
import type { TileOptions } from "../models/tiles.ts";

const UNET_FLOATS_PER_CHANNEL = 28;
const FIRST_LEVEL_ATTENTION_FLOATS_PER_CHANNEL = 16;
const VAE_FLOATS_PER_CHANNEL = 9;

export interface MemoryRequest {
  width: number;
  height: number;
  batchSize: number;
  /** Rows of one UNet call: the batch, twice it with guidance in one call. */
  unetRows: number;
  dtype: ParamDType;
  /** VAE tiles in latent cells, or undefined for one decode of the whole batch. */
  tiles?: TileOptions;
  /** The UNet on crops of at most this many latent cells a side (split_input), or undefined: the whole latent. */
  unetCrop?: number;
}

export interface MemoryEstimate {
  weights: number;
  unet: number;
  vae: number;
  /** Weights plus the larger of the two phases (they do not overlap). */
  total: number;
}

export function parameterCount(config: LdmConfig): number {
  let count = 0;
  for (const shape of modelParamShapes(config).values()) count += shape.reduce((a, b) => a * b, 1);
  return count;
}

export function estimateMemory(config: LdmConfig, parameters: number, r: MemoryRequest): MemoryEstimate {
  const bytes = r.dtype === "f16" ? 2 : 4;
  const { ch, ch_mult: mult } = config.vae.ddconfig;
  const factor = 2 ** (mult.length - 1);
  const [h, w] = [r.height / factor, r.width / factor];
  const unetChannels = config.unet.model_channels;
  const firstLevelAttention = config.unet.attention_resolutions.includes(1);
  const unetFloats = UNET_FLOATS_PER_CHANNEL + (firstLevelAttention ? FIRST_LEVEL_ATTENTION_FLOATS_PER_CHANNEL : 0);
  const crop = (cells: number) => (r.unetCrop ? Math.min(cells, r.unetCrop) : cells);
  const unet = bytes * r.unetRows * crop(h) * crop(w) * unetChannels * unetFloats;
  const tileSide = (cells: number) => (r.tiles ? Math.min(cells, r.tiles.tileSize) : cells) * factor;
  const pixels = tileSide(h) * tileSide(w) * r.batchSize; // a tile is decoded for the whole batch at once
  const vaeChannels = ch * Math.max(mult[0], mult[1] ?? mult[0]);
  const vae = bytes * pixels * vaeChannels * VAE_FLOATS_PER_CHANNEL;
  const weights = parameters * bytes;
  return { weights, unet, vae, total: weights + Math.max(unet, vae) };
}

/** Past any model's reach (AUTOMATIC1111's API stops at 2048; tiled upscales go to a few thousand). */
export const MAX_SIDE = 8192;
/** Images per call: more is several calls (or several prompts), not one batch. */
export const MAX_BATCH = 64;
/** Prompts encoded in one encodeText call. */
export const MAX_PROMPTS = 1024;

export const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(bytes < 2 ** 30 ? 2 : 1)} GiB`;
