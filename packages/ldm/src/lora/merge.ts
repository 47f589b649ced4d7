/**
 * LoRA applied as AUTOMATIC1111 applies it: merged into the loaded weights, W += strength · (alpha / rank) · up ·
 * down, computed in float32 and cast to the model's dtype; the touched weights' original bytes are kept, so
 * unloading (or switching to other LoRAs) restores them bit for bit without reading the checkpoint again.
 */
import { matmul } from "@ldm/kernels";
import { type Device, f16ArrayToF32, f32ArrayToF16, type HostArray, Tensor } from "@ldm/tensor";
import {
  type LdmConfig,
  LoraError,
  type LoraLayer,
  type LoraTensors,
  readLoraTensors,
  resolveLora,
  type TensorFile,
} from "@ldm/weights";

/** A LoRA file in memory, under the name prompts call it by. */
export interface Lora {
  /** The file's stem: `<lora:name:…>` in a prompt names it. */
  name: string;
  /** kohya's `ss_output_name` metadata, which A1111 also accepts in prompts. */
  alias?: string;
  /** A1111's hash of it (sha256 of the safetensors data after the header, "addnet" hash), when known. */
  hash?: string;
  /** Where it was read from, when from a file. */
  path?: string;
  tensors: LoraTensors;
}

/** A LoRA with A1111's multipliers: `<lora:name:te:unet>` (the UNet's defaults to the text encoder's). */
export interface LoraUse {
  lora: Lora;
  /** The text encoder's multiplier, and the UNet's unless unetStrength is given. */
  strength: number;
  unetStrength?: number;
  /** The name a prompt's tag called it by (its alias, say), when not lora.name: what the parameters record. */
  name?: string;
}

/** A LoRA from a safetensors TensorFile (`name`: what prompts call it; `hash`, `path` when the caller knows them). */
export async function readLora(
  file: TensorFile,
  name: string,
  extra: { hash?: string; path?: string } = {},
): Promise<Lora> {
  const tensors = await readLoraTensors(file);
  const alias = tensors.metadata.ss_output_name;
  return { name, ...(alias && alias !== name ? { alias } : {}), ...extra, tensors };
}

/** The LoRAs merged into one model's parameters, and the original bytes of every parameter they touched. */
export class MergedLoras {
  private readonly originals = new Map<string, HostArray>();
  private current: readonly LoraUse[] = [];

  constructor(
    private readonly parameters: ReadonlyMap<string, Tensor>,
    private readonly config: LdmConfig,
  ) {}

  get uses(): readonly LoraUse[] {
    return this.current;
  }

  /**
   * Makes `uses` the merged set: every LoRA is resolved against the model first (one error lists what does not
   * fit, before any weight changes), then the previous set is restored and the new one merged.
   */
  async set(uses: readonly LoraUse[]): Promise<void> {
    if (sameUses(uses, this.current)) return;
    const byKey = new Map<string, { layer: LoraLayer; strength: number }[]>();
    for (const use of uses) {
      for (const [what, value] of [
        ["strength", use.strength],
        ["UNet strength", use.unetStrength ?? use.strength],
      ] as const) {
        if (!Number.isFinite(value))
          throw new LoraError(`LoRA ${use.lora.name}: ${what} ${value} is not a finite number`);
      }
      for (const layer of resolveLora(use.lora.tensors, this.config)) {
        if (!this.parameters.has(layer.key)) {
          throw new LoraError(
            `LoRA ${use.lora.name}: ${layer.module} changes ${layer.key}, which this pipeline did not load`,
          );
        }
        const strength = layer.component === "unet" ? (use.unetStrength ?? use.strength) : use.strength;
        byKey.set(layer.key, [...(byKey.get(layer.key) ?? []), { layer, strength }]);
      }
    }
    await this.restore();
    for (const [key, layers] of byKey) {
      const tensor = this.parameters.get(key) as Tensor;
      const original = await tensor.read();
      this.originals.set(key, original);
      const weight = tensor.dtype === "f16" ? f16ArrayToF32(original as Uint16Array) : Float32Array.from(original);
      for (const { layer, strength } of layers) addDelta(weight, await product(tensor.device, layer), layer, strength);
      tensor.device.write(tensor.buffer, 0, tensor.dtype === "f16" ? f32ArrayToF16(weight) : weight);
    }
    this.current = [...uses];
  }

  /** Writes back the original bytes of every parameter a LoRA changed. */
  async restore(): Promise<void> {
    for (const [key, original] of this.originals) {
      const tensor = this.parameters.get(key) as Tensor;
      tensor.device.write(tensor.buffer, 0, original);
    }
    this.originals.clear();
    this.current = [];
  }
}

function sameUses(a: readonly LoraUse[], b: readonly LoraUse[]): boolean {
  return (
    a.length === b.length &&
    a.every((u, i) => u.lora === b[i].lora && u.strength === b[i].strength && u.unetStrength === b[i].unetStrength)
  );
}

/** up · down [out, in·kh·kw] in float32, by the device's GEMM (PyTorch's `up @ down` on float32 tensors). */
async function product(device: Device, layer: LoraLayer): Promise<Float32Array> {
  const { rank } = layer;
  const up = Tensor.from(device, layer.up, [layer.shape[0], rank]);
  const down = Tensor.from(device, layer.down, [rank, layer.down.length / rank]);
  try {
    const delta = matmul(up, down);
    try {
      return await delta.toFloat32();
    } finally {
      delta.dispose();
    }
  } finally {
    up.dispose();
    down.dispose();
  }
}

/**
 * weight += float32(strength · scale) · delta, each step rounded to float32 as PyTorch's `W + s * delta`; a delta
 * over fewer input channels than the weight's (inpainting conv_in) covers the first of each output row.
 */
function addDelta(weight: Float32Array, delta: Float32Array, layer: LoraLayer, strength: number): void {
  const coefficient = Math.fround(strength * layer.scale);
  const rows = layer.shape[0];
  const [row, part] = [weight.length / rows, delta.length / rows];
  for (let o = 0; o < rows; o++) {
    for (let i = 0; i < part; i++) {
      const w = o * row + i;
      weight[w] = Math.fround(weight[w] + Math.fround(coefficient * delta[o * part + i]));
    }
  }
}
