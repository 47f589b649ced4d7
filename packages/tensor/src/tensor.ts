import type { BufferSlice, Device } from "./device.ts";
import { DTYPE_BYTES, type DType, f16ArrayToF32, f32ArrayToF16, type HostArray, hostArrayFor } from "./dtype.ts";
import { assertValidShape, formatShape, type Shape, shapeSize } from "./shape.ts";

/** A pooled GPU buffer shared by a tensor and its reshaped views. */
class Storage {
  refs = 1;
  constructor(
    readonly device: Device,
    readonly buffer: GPUBuffer,
  ) {}

  release(): void {
    if (--this.refs === 0) this.device.pool.release(this.buffer);
  }
}

/** A dense row-major tensor on the GPU. */
export class Tensor {
  readonly shape: Shape;
  readonly size: number;
  private storage: Storage | null;

  private constructor(
    readonly device: Device,
    storage: Storage,
    shape: Shape,
    readonly dtype: DType,
  ) {
    this.storage = storage;
    this.shape = Object.freeze([...shape]);
    this.size = shapeSize(shape);
    device.track(this);
  }

  /**
   * An uninitialised tensor (contents are whatever the pooled buffer held). `exactSize` allocates the
   * buffer without pool size-class rounding — for long-lived tensors like weights.
   */
  static empty(device: Device, shape: Shape, dtype: DType = "f32", opts: { exactSize?: boolean } = {}): Tensor {
    assertValidShape(shape);
    const bytes = Math.max(4, Math.ceil((shapeSize(shape) * DTYPE_BYTES[dtype]) / 4) * 4);
    return new Tensor(device, new Storage(device, device.pool.acquire(bytes, opts.exactSize)), shape, dtype);
  }

  /**
   * Uploads host data. Float data given for an f16 tensor is rounded to half precision;
   * a Uint16Array for an f16 tensor is taken as raw half bits.
   */
  static from(device: Device, data: HostArray | ArrayLike<number>, shape: Shape, dtype: DType = "f32"): Tensor {
    assertValidShape(shape);
    const n = shapeSize(shape);
    if (data.length !== n) {
      throw new Error(`Tensor.from: ${data.length} values do not fill shape ${formatShape(shape)} (${n} elements)`);
    }
    const host = toHostArray(data, dtype);
    const t = Tensor.empty(device, shape, dtype);
    device.write(t.buffer, 0, host);
    return t;
  }

  static zeros(device: Device, shape: Shape, dtype: DType = "f32"): Tensor {
    return Tensor.from(
      device,
      dtype === "f16" ? new Uint16Array(shapeSize(shape)) : new Float32Array(shapeSize(shape)),
      shape,
      dtype,
    );
  }

  get disposed(): boolean {
    return this.storage === null;
  }

  private live(): Storage {
    if (!this.storage) throw new Error(`tensor ${formatShape(this.shape)} ${this.dtype} was used after dispose()`);
    return this.storage;
  }

  get buffer(): GPUBuffer {
    return this.live().buffer;
  }

  get byteLength(): number {
    return this.size * DTYPE_BYTES[this.dtype];
  }

  /** The tensor's bytes as a binding (whole tensor, or a byte range of it). */
  slice(byteOffset = 0, byteSize = this.byteLength): BufferSlice {
    return { buffer: this.buffer, offset: byteOffset, size: Math.ceil(byteSize / 4) * 4 };
  }

  /** The same data under another shape (no copy); one dimension may be -1. */
  reshape(shape: Shape): Tensor {
    const storage = this.live();
    const resolved = resolveReshape(this.shape, shape);
    storage.refs++;
    return new Tensor(this.device, storage, resolved, this.dtype);
  }

  /** Removes this tensor from the enclosing tidy() scope so it outlives it. */
  keep(): this {
    this.device.untrack(this);
    return this;
  }

  dispose(): void {
    if (!this.storage) return;
    this.storage.release();
    this.storage = null;
  }

  /** Reads the data back: f32 → Float32Array, f16 → Uint16Array of half bits, i32 / u32 likewise. */
  async read(): Promise<HostArray> {
    const buf = await this.device.read(this.buffer, 0, this.byteLength);
    return hostArrayFor(this.dtype, buf, this.size);
  }

  /** Reads the data back as float32 whatever the dtype. */
  async toFloat32(): Promise<Float32Array> {
    const host = await this.read();
    if (this.dtype === "f16") return f16ArrayToF32(host as Uint16Array);
    return host instanceof Float32Array ? host : Float32Array.from(host);
  }

  toString(): string {
    return `Tensor(${formatShape(this.shape)}, ${this.dtype}${this.disposed ? ", disposed" : ""})`;
  }
}

function toHostArray(data: HostArray | ArrayLike<number>, dtype: DType): HostArray {
  switch (dtype) {
    case "f32":
      return data instanceof Float32Array ? data : Float32Array.from(data);
    case "f16":
      return data instanceof Uint16Array ? data : f32ArrayToF16(data);
    case "i32":
      return data instanceof Int32Array ? data : Int32Array.from(data);
    case "u32":
      return data instanceof Uint32Array ? data : Uint32Array.from(data);
  }
}

function resolveReshape(from: Shape, to: Shape): number[] {
  const n = shapeSize(from);
  const out = [...to];
  const inferred = out.indexOf(-1);
  if (inferred !== out.lastIndexOf(-1))
    throw new Error(`reshape ${formatShape(from)} → ${formatShape(to)}: at most one -1`);
  if (inferred >= 0) {
    const rest = shapeSize(out.filter((_, i) => i !== inferred));
    if (rest === 0 || n % rest)
      throw new Error(`reshape ${formatShape(from)} → ${formatShape(to)}: sizes do not divide`);
    out[inferred] = n / rest;
  }
  assertValidShape(out, "reshape target");
  if (shapeSize(out) !== n) {
    throw new Error(
      `reshape: shape ${formatShape(from)} (${n} elements) cannot become ${formatShape(to)} (${shapeSize(out)} elements)`,
    );
  }
  return out;
}
