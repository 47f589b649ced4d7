import { rename, rm } from "node:fs/promises";
import { resolve } from "node:path";
import { UNET_PREFIX } from "../architecture.ts";
import { convertElements, isFloatStoredDType, STORED_DTYPE_BYTES, type StoredDType } from "../dtype.ts";
import { emaName } from "../layouts.ts";
import type { TensorToWrite } from "../safetensors.ts";
import type { TensorFile } from "../tensor-file.ts";
import { CheckpointError } from "./checkpoint.ts";
import { openSafetensors, openTorchCheckpoint, TORCH_CHECKPOINT, writeSafetensors } from "./file.ts";

export interface ConvertOptions {
  /** Store floating-point weights as float16 (schedule buffers, the top-level names without a dot, keep theirs). */
  half?: boolean;
  /** Write the EMA copy of the UNet (`model_ema.*`) as `model.diffusion_model.*`, and drop `model_ema.*`. */
  ema?: boolean;
  /** After each tensor is read: its bytes so far of all bytes to write. */
  onProgress?(done: number, total: number): void;
}

export interface ConvertResult {
  tensors: number;
  /** Bytes of tensor data written. */
  bytes: number;
}

const EMA = "model_ema.";

/**
 * Rewrites a single-file checkpoint (a PyTorch `.ckpt`/`.pt`/`.pth`, read as data, or a `.safetensors`) as
 * safetensors with the same keys, one tensor in memory at a time. The output appears only when complete.
 */
export async function convertCheckpoint(
  input: string,
  output: string,
  options: ConvertOptions = {},
): Promise<ConvertResult> {
  if (resolve(input) === resolve(output)) throw new CheckpointError(`${output}: the output would overwrite the input`);
  const file = TORCH_CHECKPOINT.test(input) ? await openTorchCheckpoint(input) : await openSafetensors(input);
  const partial = `${output}.partial`;
  try {
    const plan = conversionPlan(file, options);
    const total = plan.reduce((n, p) => n + p.bytes, 0);
    let done = 0;
    const tensors: Record<string, TensorToWrite> = {};
    for (const p of plan) {
      tensors[p.key] = {
        dtype: p.dtype,
        shape: file.entry(p.from).shape,
        data: async () => {
          const bytes = await readAs(file, p.from, p.dtype);
          options.onProgress?.((done += p.bytes), total);
          return bytes;
        },
      };
    }
    const { format: _, state_dict: __, ...plain } = file.metadata;
    await writeSafetensors(partial, tensors, { format: "pt", ...plain });
    await rename(partial, output);
    return { tensors: plan.length, bytes: total };
  } catch (e) {
    await rm(partial, { force: true });
    throw e;
  } finally {
    await file.close();
  }
}

interface Planned {
  key: string;
  /** The stored tensor it is read from. */
  from: string;
  dtype: StoredDType;
  bytes: number;
}

function conversionPlan(file: TensorFile, options: ConvertOptions): Planned[] {
  const keys = [...file.tensors.keys()];
  if (options.ema) {
    const unet = keys.filter((k) => k.startsWith(UNET_PREFIX));
    const absent = unet.filter((k) => !file.tensors.has(emaName(k)));
    if (!unet.length || absent.length) {
      throw new CheckpointError(
        `${file.name}: --ema: no EMA weights for ${absent.length} of ${unet.length} UNet parameters${absent.length ? ` (first: ${emaName(absent[0])})` : ""}`,
      );
    }
  }
  const plan: Planned[] = [];
  for (const key of keys) {
    if (options.ema && key.startsWith(EMA)) continue;
    const from = options.ema && key.startsWith(UNET_PREFIX) ? emaName(key) : key;
    const stored = file.entry(from).dtype;
    const dtype = options.half && key.includes(".") && isFloatStoredDType(stored) ? "F16" : stored;
    plan.push({ key, from, dtype, bytes: file.entry(from).size * STORED_DTYPE_BYTES[dtype] });
  }
  return plan;
}

async function readAs(file: TensorFile, key: string, dtype: StoredDType): Promise<Uint8Array> {
  const entry = file.entry(key);
  const bytes = await file.readBytes(key);
  if (dtype === entry.dtype || !isFloatStoredDType(entry.dtype)) return bytes;
  const out = new Uint8Array(entry.size * 2);
  convertElements(entry.dtype, "f16", bytes, out, entry.size);
  return out;
}
