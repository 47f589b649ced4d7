/**
 * Builds a uniform block of 4-byte scalars in declaration order. Kernels declare their
 * `Params` struct with scalar u32/i32/f32 fields only, so the byte layout is the field order;
 * the block is padded to 16 bytes as uniform bindings require.
 */
export class Uniforms {
  private readonly words: number[] = [];
  private readonly kinds: ("u" | "i" | "f")[] = [];

  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`uniform u32 out of range: ${v}`);
    this.words.push(v);
    this.kinds.push("u");
    return this;
  }

  i32(v: number): this {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new Error(`uniform i32 out of range: ${v}`);
    this.words.push(v);
    this.kinds.push("i");
    return this;
  }

  f32(v: number): this {
    this.words.push(v);
    this.kinds.push("f");
    return this;
  }

  bytes(): Uint8Array {
    const n = Math.max(4, Math.ceil(this.words.length / 4) * 4);
    const buf = new ArrayBuffer(n * 4);
    const u = new Uint32Array(buf);
    const i = new Int32Array(buf);
    const f = new Float32Array(buf);
    this.words.forEach((w, k) => {
      if (this.kinds[k] === "f") f[k] = w;
      else if (this.kinds[k] === "i") i[k] = w;
      else u[k] = w;
    });
    return new Uint8Array(buf);
  }
}
