/** What the network predicts: the noise ε (SD1, SD2-base) or v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD2 768-v). */
export type Parameterization = "eps" | "v";

/**
 * The network as samplers see it: given latents x (the whole batch, flattened NCHW, float32) and the discrete
 * timestep t shared by the batch, resolve to its prediction (ε or v) with x's length. t is an integer for DDPM,
 * DDIM and PLMS and may be fractional for the k-samplers (σ mapped back to t by interpolating log σ), which
 * also pass x already scaled by c_in = 1/√(σ²+1). Implementations must not modify or keep x.
 * Conditioning and classifier-free guidance live inside the callback: see `guided`.
 */
export type DiffusionModel = (x: Float32Array, t: number) => Promise<Float32Array>;

/** Classifier-free guidance: uncond + scale · (cond − uncond), elementwise. */
export function cfg(uncond: Float32Array, cond: Float32Array, scale: number): Float32Array {
  if (uncond.length !== cond.length)
    throw new RangeError(`cfg: uncond has ${uncond.length} elements, cond ${cond.length}`);
  return uncond.map((u, i) => u + scale * (cond[i] - u));
}

/**
 * Wraps a network call of batch 2B into a guided model of batch B, as the original samplers batch it: the network
 * gets [x; x] and is expected to pair the first half with the unconditional context and the second half with the
 * conditional one (the caller binds the contexts in that order); the halves of its output are combined by `cfg`.
 * For scale 1 call the conditional network directly instead: the unconditional pass is then wasted work.
 */
export function guided(doubleBatchModel: DiffusionModel, scale: number): DiffusionModel {
  if (!Number.isFinite(scale)) throw new RangeError(`guidance scale ${scale} is not a finite number`);
  return async (x, t) => {
    const doubled = new Float32Array(x.length * 2);
    doubled.set(x, 0);
    doubled.set(x, x.length);
    const out = await doubleBatchModel(doubled, t);
    if (out.length !== doubled.length) {
      throw new RangeError(`guided model returned ${out.length} values for a doubled batch of ${doubled.length}`);
    }
    return cfg(out.subarray(0, x.length), out.subarray(x.length), scale);
  };
}

/** ε and x̂₀ from a prediction at noise level ᾱ (DDPM/DDIM form: x = √ᾱ·x₀ + √(1−ᾱ)·ε). */
export function epsAndDenoised(
  x: Float32Array,
  prediction: Float32Array,
  alphaCumprod: number,
  parameterization: Parameterization,
): { eps: Float32Array; denoised: Float32Array } {
  const signal = Math.sqrt(alphaCumprod);
  const noise = Math.sqrt(1 - alphaCumprod);
  if (parameterization === "eps") {
    return { eps: prediction, denoised: x.map((xi, i) => (xi - noise * prediction[i]) / signal) };
  }
  return {
    eps: x.map((xi, i) => signal * prediction[i] + noise * xi),
    denoised: x.map((xi, i) => signal * xi - noise * prediction[i]),
  };
}
