import { avxLog, avxSinCos } from "./avx-mathfun.ts";
import { f32 } from "./float32.ts";
import { Mt19937 } from "./mt19937.ts";

/** A seed as PyTorch's `manual_seed` accepts it: an integer in [−2⁶³, 2⁶⁴), negatives taken as two's complement. */
export type Seed = number | bigint;

/**
 * Which of PyTorch's CPU kernels for `normal_` on float tensors of ≥ 16 elements to reproduce:
 * - `"avx2"`: every x86-64 build on a CPU with AVX2 (AVX-512 CPUs too: normal_ is never dispatched to AVX-512);
 *   float32 Cephes polynomials, reproduced bit for bit.
 * - `"scalar"`: builds or CPUs without AVX2 (e.g. `ATEN_CPU_CAPABILITY=default`, ARM); libm's logf/cosf/sinf,
 *   which we evaluate in double and round, so a value may rarely differ from a given libm in its last bit.
 * Draws of fewer than 16 elements use the same double-precision path under both.
 */
export type NormalKernel = "avx2" | "scalar";

export interface GeneratorOptions {
  kernel?: NormalKernel;
}

/** PyTorch's default_rng_seed_val: the seed of a fresh `torch.Generator()`. */
export const TORCH_DEFAULT_SEED = 67280421310721n;

const TWO_PI_F32 = f32(2 * Math.PI);
const FLOAT_MANTISSA_MASK = 0xffffff;
const VECTOR_BLOCK = 16;
const HALF_BLOCK = 8;

/** Number of elements of a shape, validating it. */
export function shapeSize(shape: number | readonly number[]): number {
  const dims = typeof shape === "number" ? [shape] : shape;
  let size = 1;
  for (const d of dims) {
    if (!Number.isSafeInteger(d) || d < 0)
      throw new RangeError(`shape [${dims.join(", ")}]: dimension ${d} is not a non-negative integer`);
    size *= d;
  }
  return size;
}

function seedToUint64(seed: Seed): bigint {
  if (typeof seed === "number" && !Number.isSafeInteger(seed)) {
    throw new RangeError(`seed ${seed} is not an integer in the safe range; pass a bigint for large seeds`);
  }
  const big = BigInt(seed);
  if (big < -(2n ** 63n) || big >= 2n ** 64n) throw new RangeError(`seed ${big} is outside [-2^63, 2^64)`);
  return BigInt.asUintN(64, big);
}

/**
 * A random generator whose streams equal `torch.Generator()` on the CPU: after `manualSeed(s)`, successive
 * `randn`/`rand` calls return what the same sequence of `torch.randn(shape, generator=g)` /
 * `torch.rand(shape, generator=g)` calls returns, bit for bit, including the normal value PyTorch caches between
 * draws of fewer than 16 elements.
 */
export class Generator {
  readonly kernel: NormalKernel;
  private engine!: Mt19937;
  private seedValue!: bigint;
  private cachedNormal: number | undefined;

  constructor(seed: Seed = TORCH_DEFAULT_SEED, options: GeneratorOptions = {}) {
    const kernel = options.kernel ?? "avx2";
    if (kernel !== "avx2" && kernel !== "scalar")
      throw new RangeError(`unknown normal kernel "${kernel}" (avx2 or scalar)`);
    this.kernel = kernel;
    this.manualSeed(seed);
  }

  /** Re-seeds, as `torch.Generator.manual_seed`: resets the engine and drops any cached normal. */
  manualSeed(seed: Seed): this {
    this.seedValue = seedToUint64(seed);
    this.engine = new Mt19937(this.seedValue);
    this.cachedNormal = undefined;
    return this;
  }

  /** The seed last set, as `initial_seed()` reports it (unsigned 64-bit). */
  initialSeed(): bigint {
    return this.seedValue;
  }

  /** Standard normal float32 values: `torch.randn(shape, generator=this)`. */
  randn(shape: number | readonly number[]): Float32Array {
    const out = new Float32Array(shapeSize(shape));
    if (out.length >= VECTOR_BLOCK) this.fillNormalVectorised(out);
    else for (let i = 0; i < out.length; i++) out[i] = this.nextNormalDouble();
    return out;
  }

  /** Uniform float32 values in [0, 1): `torch.rand(shape, generator=this)`. */
  rand(shape: number | readonly number[]): Float32Array {
    const out = new Float32Array(shapeSize(shape));
    for (let i = 0; i < out.length; i++) out[i] = this.nextUniformFloat();
    return out;
  }

  /** One raw 32-bit output of the engine. */
  nextUint32(): number {
    return this.engine.nextUint32();
  }

  /** uniform_real_distribution<float>(0, 1): the low 24 bits of one draw, scaled. */
  private nextUniformFloat(): number {
    return (this.engine.nextUint32() & FLOAT_MANTISSA_MASK) * 2 ** -24;
  }

  /** uniform_real_distribution<double>(0, 1): the low 53 bits of random64() (first draw is the high word). */
  private nextUniformDouble(): number {
    const high = this.engine.nextUint32() & 0x1fffff;
    const low = this.engine.nextUint32();
    return (high * 2 ** 32 + low) * 2 ** -53;
  }

  /** at::normal_distribution<double>: Box–Muller on two doubles, the sine half cached for the next call. */
  private nextNormalDouble(): number {
    if (this.cachedNormal !== undefined) {
      const cached = this.cachedNormal;
      this.cachedNormal = undefined;
      return cached;
    }
    const angleUniform = this.nextUniformDouble();
    const radiusUniform = this.nextUniformDouble();
    const radius = Math.sqrt(-2 * Math.log(1 - radiusUniform));
    const theta = 2 * Math.PI * angleUniform;
    this.cachedNormal = radius * Math.sin(theta);
    return radius * Math.cos(theta);
  }

  /**
   * normal_fill: all elements first become uniform floats; each block of 16 then turns (u[j], u[j+8]) into a
   * Box–Muller pair. A ragged end is handled by drawing 16 fresh uniforms over the last 16 elements and
   * transforming them again, so those elements consume the stream twice.
   */
  private fillNormalVectorised(out: Float32Array): void {
    for (let i = 0; i < out.length; i++) out[i] = this.nextUniformFloat();
    const transform = this.kernel === "avx2" ? boxMullerBlockAvx2 : boxMullerBlockScalar;
    for (let start = 0; start + VECTOR_BLOCK <= out.length; start += VECTOR_BLOCK) transform(out, start);
    if (out.length % VECTOR_BLOCK !== 0) {
      const start = out.length - VECTOR_BLOCK;
      for (let i = 0; i < VECTOR_BLOCK; i++) out[start + i] = this.nextUniformFloat();
      transform(out, start);
    }
  }
}

function boxMullerBlockAvx2(data: Float32Array, start: number): void {
  for (let j = start; j < start + HALF_BLOCK; j++) {
    const radius = f32(Math.sqrt(f32(-2 * avxLog(f32(1 - data[j])))));
    const [sin, cos] = avxSinCos(f32(TWO_PI_F32 * data[j + HALF_BLOCK]));
    // Both kernels end with `n * std + mean`; with std 1 and mean 0 only its turning −0 into +0 shows.
    data[j] = f32(radius * cos) + 0;
    data[j + HALF_BLOCK] = f32(radius * sin) + 0;
  }
}

function boxMullerBlockScalar(data: Float32Array, start: number): void {
  for (let j = start; j < start + HALF_BLOCK; j++) {
    const radius = f32(Math.sqrt(f32(-2 * f32(Math.log(f32(1 - data[j]))))));
    // theta = 2.0f * pi<double> * u2: computed in double, then stored as float.
    const theta = f32(2 * Math.PI * data[j + HALF_BLOCK]);
    data[j] = f32(radius * f32(Math.cos(theta))) + 0;
    data[j + HALF_BLOCK] = f32(radius * f32(Math.sin(theta))) + 0;
  }
}

/** `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` on the CPU, float32. */
export function randn(seed: Seed, shape: number | readonly number[], options: GeneratorOptions = {}): Float32Array {
  return new Generator(seed, options).randn(shape);
}
