/**
 * A WeightSource of random parameters for given keys and shapes, so a benchmark can run a full-size network
 * without a checkpoint file (SD 1.5's UNet is 3.4 GB in f32). Timing does not depend on the values, but they
 * must stay finite through the network in f16: matrices get uniform values of variance 1/fan-in (so activations
 * keep their scale layer to layer), 1-D `weight`s (norm scales) are 1 and other 1-D tensors (biases) 0.
 * A block of at most BLOCK values is drawn per tensor and repeated to fill it: cheap for 860M parameters, and
 * repetition changes no kernel's work.
 */
import { buildModel, COMPONENT_PREFIX, type Component, firstStageModel, type Networks } from "@ldm/ldm";
import { VarBuilder } from "@ldm/nn";
import {
  type Device,
  f32ArrayToF16,
  type ParamDType,
  type StoredTensorInfo,
  type WeightRequest,
  type WeightSource,
} from "@ldm/tensor";
import { type LdmConfig, modelParamShapes, type VaeConfig, vaeParamShapes } from "@ldm/weights";

const BLOCK = 1 << 16;

function xorshift(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

/** The first min(count, BLOCK) values of a parameter; the rest repeats them. */
export function randomBlock(key: string, shape: readonly number[], seed: number): Float32Array {
  const count = shape.reduce((a, b) => a * b, 1);
  const block = new Float32Array(Math.min(count, BLOCK));
  if (shape.length === 1) return block.fill(key.endsWith(".weight") ? 1 : 0);
  const fanIn = count / shape[0];
  // Uniform on [−a, a) has variance a²/3.
  const bound = Math.sqrt(3 / fanIn);
  const next = xorshift(seed);
  for (let i = 0; i < block.length; i++) block[i] = (2 * next() - 1) * bound;
  return block;
}

/** `count` values: `block` repeated. */
export function tiled<T extends Float32Array | Uint16Array>(block: T, count: number): T {
  const out = new (block.constructor as new (n: number) => T)(count);
  for (let at = 0; at < count; at += block.length) out.set(block.subarray(0, Math.min(block.length, count - at)), at);
  return out;
}

export class RandomWeightSource implements WeightSource {
  readonly origin = "random weights";

  constructor(private readonly shapes: ReadonlyMap<string, readonly number[]>) {}

  describe(key: string): StoredTensorInfo | undefined {
    const shape = this.shapes.get(key);
    return shape && { shape, dtype: "F32" };
  }

  keys(): Iterable<string> {
    return this.shapes.keys();
  }

  async load(requests: readonly WeightRequest[]): Promise<void> {
    let seed = 1;
    for (const { key, tensor } of requests) {
      const block = randomBlock(key, tensor.shape, seed++);
      const count = tensor.shape.reduce((a, b) => a * b, 1);
      tensor.device.write(
        tensor.buffer,
        0,
        tensor.dtype === "f16" ? tiled(f32ArrayToF16(block), count) : tiled(block, count),
      );
      // Bounds the upload staging Dawn holds at once.
      if (seed % 64 === 0) await tensor.device.sync();
    }
  }
}

/** The networks of `config` on `device`, their parameters random; `dispose` frees them. */
export async function randomNetworks(
  device: Device,
  config: LdmConfig,
  dtype: ParamDType,
  components: readonly Component[],
): Promise<Networks & { dispose: () => void }> {
  const vb = VarBuilder.from(device, new RandomWeightSource(modelParamShapes(config)), dtype);
  const networks = buildModel(vb, config, components);
  await vb.load(components.map((c) => COMPONENT_PREFIX[c]));
  return { ...networks, dispose: () => vb.dispose() };
}

/** A first stage alone (AutoencoderKL or VQModel) of `vae`, its parameters random; `dispose` frees them. */
export async function randomFirstStage(device: Device, vae: VaeConfig, dtype: ParamDType) {
  const vb = VarBuilder.from(device, new RandomWeightSource(vaeParamShapes(vae)), dtype);
  const model = firstStageModel(vb.pp(COMPONENT_PREFIX.vae), vae);
  await vb.load([COMPONENT_PREFIX.vae]);
  return { unet: undefined, vae: model, dispose: () => vb.dispose() };
}
