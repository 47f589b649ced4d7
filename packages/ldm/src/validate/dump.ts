/**
 * Reference dumps: one safetensors file whose tensors are named `<component>.in.<name>` (inputs) and
 * `<component>.out.<name>` (the reference outputs), with string metadata (e.g. a sampler's settings).
 */
import { formatShape } from "@ldm/tensor";
import { convertElements, isFloatStoredDType, type SafetensorsFile, type TensorEntry } from "@ldm/weights";
import { openSafetensors } from "@ldm/weights/node";

export const KNOWN_COMPONENTS = ["vae.encode", "vae.decode", "unet", "clip", "sample", "cond", "loss"] as const;
export type DumpComponent = (typeof KNOWN_COMPONENTS)[number];

export interface HostTensor<T extends Float32Array | Int32Array = Float32Array> {
  data: T;
  shape: readonly number[];
}

const NAME = /^(.+)\.(in|out)\.([^.]+)$/;

export class Dump {
  /** Input and output names per component, in file order. */
  readonly components = new Map<string, { inputs: string[]; outputs: string[] }>();
  /** Tensors whose names do not follow `<component>.{in,out}.<name>`. */
  readonly unparsed: string[] = [];

  private constructor(readonly file: SafetensorsFile) {
    for (const key of file.tensors.keys()) {
      const m = NAME.exec(key);
      if (!m) {
        this.unparsed.push(key);
        continue;
      }
      const [, component, direction, name] = m;
      const entry = this.components.get(component) ?? { inputs: [], outputs: [] };
      (direction === "in" ? entry.inputs : entry.outputs).push(name);
      this.components.set(component, entry);
    }
  }

  static async open(path: string): Promise<Dump> {
    return new Dump(await openSafetensors(path));
  }

  get path(): string {
    return this.file.name;
  }

  get metadata(): Readonly<Record<string, string>> {
    return this.file.metadata;
  }

  /** The known components present, in the order of KNOWN_COMPONENTS. */
  known(): DumpComponent[] {
    return KNOWN_COMPONENTS.filter((c) => this.components.has(c));
  }

  has(component: string, direction: "in" | "out", name: string): boolean {
    return this.file.tensors.has(`${component}.${direction}.${name}`);
  }

  private entry(component: string, direction: "in" | "out", name: string): TensorEntry {
    const key = `${component}.${direction}.${name}`;
    const e = this.file.tensors.get(key);
    if (!e)
      throw new Error(
        `${this.path}: component ${component} has no ${direction === "in" ? "input" : "output"} "${key}"`,
      );
    return e;
  }

  /** A floating-point (or, for timesteps, integer) tensor as float32. */
  async floats(component: string, direction: "in" | "out", name: string): Promise<HostTensor> {
    const e = this.entry(component, direction, name);
    const bytes = await this.file.readBytes(e.name);
    if (isFloatStoredDType(e.dtype)) {
      const data = new Float32Array(e.size);
      convertElements(e.dtype, "f32", bytes, new Uint8Array(data.buffer), e.size);
      return { data, shape: e.shape };
    }
    const ints = integers(e, bytes, this.path);
    return { data: Float32Array.from(ints), shape: e.shape };
  }

  /** An integer tensor (token ids) as int32. */
  async ints(component: string, direction: "in" | "out", name: string): Promise<HostTensor<Int32Array>> {
    const e = this.entry(component, direction, name);
    return { data: integers(e, await this.file.readBytes(e.name), this.path), shape: e.shape };
  }

  close(): Promise<void> {
    return this.file.close();
  }
}

function integers(e: TensorEntry, bytes: Uint8Array, path: string): Int32Array {
  const buffer = bytes.buffer as ArrayBuffer;
  if (e.dtype === "I32") return new Int32Array(buffer, bytes.byteOffset, e.size);
  if (e.dtype === "I64") {
    const wide = new BigInt64Array(buffer, bytes.byteOffset, e.size);
    const out = new Int32Array(e.size);
    for (let i = 0; i < e.size; i++) {
      if (wide[i] > 0x7fffffffn || wide[i] < -0x80000000n) {
        throw new Error(`${path}: ${e.name} holds ${wide[i]}, outside the 32-bit range`);
      }
      out[i] = Number(wide[i]);
    }
    return out;
  }
  throw new Error(`${path}: ${e.name} ${formatShape(e.shape)} is ${e.dtype}; expected an integer or float tensor`);
}
