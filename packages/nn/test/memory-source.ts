import { randomArray } from "@ldm/kernels/testing";
import { f32ArrayToF16, type StoredTensorInfo, type WeightRequest, type WeightSource } from "@ldm/tensor";

export interface HostParam {
  shape: readonly number[];
  data: Float32Array;
}

/** A WeightSource over float32 arrays in memory, for tests. */
export class MemorySource implements WeightSource {
  readonly origin = "memory";
  readonly entries: Map<string, HostParam>;

  constructor(entries: Record<string, HostParam> | Map<string, HostParam>) {
    this.entries = entries instanceof Map ? entries : new Map(Object.entries(entries));
  }

  describe(key: string): StoredTensorInfo | undefined {
    const e = this.entries.get(key);
    return e && { shape: e.shape, dtype: "F32" };
  }

  keys(): Iterable<string> {
    return this.entries.keys();
  }

  async load(requests: readonly WeightRequest[]): Promise<void> {
    for (const { key, tensor } of requests) {
      const { data } = this.entries.get(key) as HostParam;
      tensor.device.write(tensor.buffer, 0, tensor.dtype === "f16" ? f32ArrayToF16(data) : data);
    }
  }

  /** The stored values of `key` (throws when absent, so a test cannot read a key it never stored). */
  get(key: string): Float32Array {
    const e = this.entries.get(key);
    if (!e) throw new Error(`MemorySource: no ${key}`);
    return e.data;
  }
}

/** Seeded uniform values in [−scale, scale) for every key of `shapes`. */
export function randomSource(shapes: Record<string, readonly number[]>, seed = 1, scale = 0.5): MemorySource {
  const entries = new Map<string, HostParam>();
  Object.entries(shapes).forEach(([key, shape], i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    entries.set(key, { shape, data: randomArray(n, seed * 1000 + i + 1, scale) });
  });
  return new MemorySource(entries);
}
