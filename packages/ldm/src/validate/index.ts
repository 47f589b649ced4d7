/**
 * `validate`: runs our networks on the inputs of a reference dump (see dump.ts) and compares every output
 * with the reference, reporting max abs error and that error relative to max|reference|.
 */
import { Device, type ParamDType, type Tensor } from "@ldm/tensor";
import { firstStageConfigFromYaml } from "@ldm/weights";
import { readConfigFile } from "@ldm/weights/node";
import { NoiseSchedule } from "../diffusion/index.ts";
import { VQModel } from "../models/autoencoder.ts";
import { ClassEmbedder, SpatialRescaler } from "../models/cond-stage.ts";
import { type Component, type LoadedModel, loadModel } from "../models/index.ts";
import { type LoadedFirstStage, loadFirstStage } from "../models/load-node.ts";
import { BERTEmbedder } from "../models/x-transformer.ts";
import { lossSimple } from "../pipeline/loss.ts";
import { inpaintedPixels } from "../pipeline/masked-image.ts";
import { companionFiles } from "../pipeline/model-files.ts";
import { Dump, type DumpComponent, type HostTensor, KNOWN_COMPONENTS } from "./dump.ts";
import { type Outputs, readOutputs, uploadFloats, uploadIds } from "./io.ts";
import { concatInput, decodeLatents, maskedImageInput, runSample } from "./sample.ts";

export { Dump, type DumpComponent, KNOWN_COMPONENTS } from "./dump.ts";

export interface Tolerance {
  /** Absolute part of the bound. */
  atol: number;
  /** Part of the bound relative to max|reference| of the output. */
  rtol: number;
}

/**
 * An output passes when max|ours − ref| ≤ atol + rtol · max|ref| and it has no NaN or Inf. Measured on the
 * tiny configs (the table in this folder's README.md), the bounds leave several times the observed error:
 * - f32 components, 1e-4: our errors are ≤ 4e-6 relative, the same order as float32's own error against
 *   float64 (reference/README.md), from summation order (GEMM tiles, online softmax, norm reductions).
 *   Every classic mistake (a wrong eps, GEGLU halves, sin/cos order, padding side, activation, heads,
 *   a missing final norm) moves an output by ≥ 1.2e-2 (reference/README.md, sensitivity), 100× the bound.
 * - f32 sample loops, 1e-4: 10–20 guided steps amplify per-call rounding 3–10× (observed ≤ 1.4e-5 on the tiny
 *   configs). A trained model amplifies more on some prompts: on the built-in model's step-5,728 checkpoint,
 *   noise of 1e-6 of max|eps| added to each UNet call of a float64 run moved z_0 by up to 2e-4 and the image
 *   by up to 6e-4; our z_0 was 4.8e-5 from float64 (PyTorch's float32, 6.8e-6) and our decoder, given the
 *   same z_0, 1.7e-6 from PyTorch's. So a sample's image is checked as our decoder's output for the dump's z_0
 *   (at the component bound: one network pass), and the loop by z_0 alone.
 * - f16 components, 1e-2: activations are stored in half precision (unit roundoff 2^-11 ≈ 4.9e-4) at every
 *   op boundary, with f32 accumulation and f32 softmax/norm statistics; after ~50 layers the error is a few
 *   1e-3 (observed ≤ 3.8e-3; 1.9e-3 at full size). f16 checks precision and overflow; semantics are pinned by the f32 checks.
 * - f16 sample loops, 5e-2: guidance scale 7.5 multiplies the error of cond − uncond and steps compound it
 *   (observed ≤ 5.6e-3 on z_0; the end-to-end image, before it was decoded from the dump's z_0: ≤ 1.9e-2).
 */
export const DEFAULT_TOLERANCE: Readonly<Record<ParamDType, { components: Tolerance; sample: Tolerance }>> = {
  f32: { components: { atol: 0, rtol: 1e-4 }, sample: { atol: 0, rtol: 1e-4 } },
  f16: { components: { atol: 0, rtol: 1e-2 }, sample: { atol: 0, rtol: 5e-2 } },
};

export interface ValidateOptions {
  checkpoint: string;
  /** Original-style YAML config; else `<stem>.yaml` beside a single-file checkpoint (as `ldm generate`), else
   * detected from the weights. */
  config?: string;
  dump: string;
  /** Run in f16 (parameters and activations; accumulation stays f32). */
  f16?: boolean;
  /** Override the default bounds (DEFAULT_TOLERANCE) for every output. */
  atol?: number;
  rtol?: number;
  /** A device to use; one is created (and destroyed) otherwise. */
  device?: Device;
}

export interface OutputCheck {
  /** The dump key, e.g. `unet.out.eps`. */
  key: string;
  maxAbs: number;
  maxRef: number;
  /** maxAbs / maxRef. */
  relative: number;
  /** NaN and ±Inf values in our output. */
  nonFinite: number;
  bound: number;
  pass: boolean;
  /** Why the output could not be compared (shape mismatch, not produced). */
  problem?: string;
  /** What our output was computed from, where not the component's inputs alone. */
  note?: string;
}

export interface ValidationReport {
  dtype: ParamDType;
  components: DumpComponent[];
  checks: OutputCheck[];
  /** Dump entries that were not checked, with the reason. */
  skipped: string[];
  /** The YAML config the model was built from; undefined: detected from the weights. */
  config?: string;
  /** Configuration values that detection assumed (no config): wrong ones make outputs fail. */
  assumptions: string[];
  pass: boolean;
}

/** The networks a dump component runs. */
const NEEDS: Readonly<Record<DumpComponent, readonly Component[]>> = {
  "vae.encode": ["vae"],
  "vae.decode": ["vae"],
  unet: ["unet"],
  clip: ["clip"],
  // The big inpainting model's cond stage is its first stage.
  cond: ["cond", "vae"],
  sample: ["unet", "vae", "clip", "cond"],
  loss: ["unet", "vae", "cond"],
};

export async function validate(options: ValidateOptions): Promise<ValidationReport> {
  const dtype: ParamDType = options.f16 ? "f16" : "f32";
  const { config } = companionFiles(options.checkpoint, { config: options.config });
  const dump = await Dump.open(options.dump);
  const tolerance = (component: DumpComponent, name: string): Tolerance => {
    const loop = component === "sample" && !decodesReference(dump, component, name);
    const defaults = DEFAULT_TOLERANCE[dtype][loop ? "sample" : "components"];
    return { atol: options.atol ?? defaults.atol, rtol: options.rtol ?? defaults.rtol };
  };
  try {
    const components = dump.known();
    const skipped = [...dump.components.keys()]
      .filter((c) => !(KNOWN_COMPONENTS as readonly string[]).includes(c))
      .map((c) => `${c}: unknown component`);
    skipped.push(...dump.unparsed.map((k) => `${k}: not named <component>.in.<name> or <component>.out.<name>`));
    if (!components.length) {
      const found = [...dump.components.keys(), ...dump.unparsed].slice(0, 8).join(", ") || "no tensors";
      throw new Error(
        `${dump.path}: no known components in the dump (found: ${found}); expected tensors named <component>.in.<name> and <component>.out.<name> with component one of ${KNOWN_COMPONENTS.join(", ")}`,
      );
    }
    for (const component of components) {
      const { inputs, outputs } = dump.components.get(component) ?? { inputs: [], outputs: [] };
      if (!outputs.length) {
        throw new Error(
          `${dump.path}: component ${component} has inputs (${inputs.join(", ")}) but no outputs (${component}.out.<name>): nothing of it would be checked`,
        );
      }
    }
    const device = options.device ?? (await Device.create({ disableF16: !options.f16 }));
    try {
      const firstStage = config ? firstStageConfigFromYaml(readConfigFile(config), config) : undefined;
      const beyond = components.filter((c) => !(FIRST_STAGE_COMPONENTS as readonly string[]).includes(c));
      if (firstStage && beyond.length) {
        throw new Error(
          `${config}: a first stage alone (${firstStage.target}) is checked on ${FIRST_STAGE_COMPONENTS.join(" and ")}; the dump's ${beyond.join(", ")} need a LatentDiffusion`,
        );
      }
      const networks = [...new Set(components.flatMap((c) => NEEDS[c]))];
      const model: ValidatedModel = firstStage
        ? { ...(await loadFirstStage(options.checkpoint, { device, dtype, config: firstStage })), assumptions: [] }
        : await loadModel(options.checkpoint, { device, dtype, config, components: networks });
      const checks: OutputCheck[] = [];
      try {
        for (const component of components) {
          const outputs = await run(component, model, dump, device);
          for (const name of dump.components.get(component)?.outputs ?? []) {
            const reference = await dump.floats(component, "out", name);
            const check = compare(`${component}.out.${name}`, outputs.get(name), reference, tolerance(component, name));
            if (decodesReference(dump, component, name)) check.note = "our decoder on the dump's z_0";
            checks.push(check);
          }
        }
      } finally {
        model.dispose();
      }
      return {
        dtype,
        components,
        checks,
        skipped,
        config,
        assumptions: model.assumptions,
        pass: checks.every((c) => c.pass),
      };
    } finally {
      if (!options.device) device.destroy();
    }
  } finally {
    await dump.close();
  }
}

/** The components a first stage saved alone (VQModel, AutoencoderKL at the top of its YAML) is checked on. */
const FIRST_STAGE_COMPONENTS = ["vae.encode", "vae.decode"] as const;

/** A LatentDiffusion's networks, or a first stage alone. */
type ValidatedModel = LoadedModel | (LoadedFirstStage & { assumptions: string[] });

/** The LatentDiffusion the non-first-stage components run (validate refuses them for a first stage alone). */
function ldm(model: ValidatedModel): LoadedModel {
  if (!("config" in model)) throw new Error("internal: a first stage alone runs only vae.encode and vae.decode");
  return model;
}

/** What a component runner reads from the dump: its inputs, uploaded; the names present. */
interface ComponentInputs {
  floats(name: string): Promise<Tensor>;
  ids(name: string): Promise<Tensor>;
  has(direction: "in" | "out", name: string): boolean;
}

const RUNNERS: Readonly<
  Record<DumpComponent, (model: ValidatedModel, io: ComponentInputs, dump: Dump) => Promise<Outputs>>
> = {
  "vae.encode": async (model, io) => {
    const vae = need(model.vae);
    const encoded = vae.encodeMoments(await io.floats("x"));
    if (!(vae instanceof VQModel)) return readOutputs({ moments: encoded });
    // VQModelInterface.encode's h, and what the quantizer makes of it.
    const h = { data: await encoded.toFloat32(), shape: encoded.shape };
    encoded.dispose();
    const { quant, indices } = await vae.quantize(h.data, h.shape);
    const [b, , height, width] = h.shape;
    return new Map([
      ["h", h],
      ["quant", { data: quant, shape: h.shape }],
      ["indices", { data: Float32Array.from(indices), shape: [b, height, width] }],
    ]);
  },
  // VQ: decode quantizes first (VQModelInterface.decode without force_not_quantize).
  "vae.decode": async (model, _io, dump) => {
    const { data, shape } = await dump.floats("vae.decode", "in", "z");
    const [b, , h, w] = shape;
    const vae = need(model.vae);
    const f = vae.downscale;
    return new Map([
      ["x", { data: await vae.decodeToHost(data, shape), shape: [b, vae.cfg.ddconfig.out_ch, h * f, w * f] }],
    ]);
  },
  unet: async (model, io) => {
    const unet = need(ldm(model).unet);
    const eps = unet.forward({
      x: await io.floats("x"),
      timesteps: await io.floats("timesteps"),
      // UNets without cross-attention (unconditional and concat models) take no context.
      context: unet.cfg.context_dim === undefined ? undefined : await io.floats("context"),
      cConcat: io.has("in", "c_concat") ? await io.floats("c_concat") : undefined,
    });
    return readOutputs({ eps });
  },
  clip: async (model, io) => {
    const out = need(ldm(model).clip).forward(await io.ids("input_ids"), {
      last: io.has("out", "last_hidden_state"),
      penultimate: io.has("out", "penultimate_hidden_state"),
    });
    return readOutputs({
      last_hidden_state: out.lastHiddenState,
      penultimate_hidden_state: out.penultimateHiddenState,
    });
  },
  /**
   * The cond stage: a ClassEmbedder on class_label, a BERTEmbedder on input_ids (prompt or layout tokens), or a
   * SpatialRescaler on a one-hot segmentation map (→ c_concat).
   */
  cond: async (loaded, io, dump) => {
    const model = ldm(loaded);
    const stage = model.cond;
    if (io.has("in", "masked_image")) return new Map([["c_concat", await maskedImageInput(model, dump, "cond")]]);
    if (io.has("in", "segmentation")) {
      if (!(stage instanceof SpatialRescaler)) {
        throw new Error("the cond component's segmentation is a SpatialRescaler's (→ c_concat); this model has none");
      }
      return readOutputs({ c_concat: stage.forward(await io.floats("segmentation")) });
    }
    if (io.has("in", "input_ids")) {
      if (!(stage instanceof BERTEmbedder)) {
        throw new Error("the cond component's input_ids are a BERTEmbedder's (→ c_crossattn); this model has none");
      }
      return readOutputs({ c_crossattn: stage.forward(await io.ids("input_ids")) });
    }
    if (!(stage instanceof ClassEmbedder)) {
      throw new Error("the cond component checks a ClassEmbedder (class_label → c_crossattn); this model has none");
    }
    return readOutputs({ c_crossattn: stage.forward(await io.ids("class_label")) });
  },
  /**
   * LatentDiffusion.p_losses' loss_simple on the dump's x_start, noise and t, conditioned on its class_label or a
   * concat model's input (mask + masked_image, LR_image, segmentation).
   */
  loss: async (loaded, io, dump) => {
    const model = ldm(loaded);
    const [xStart, noise, t] = await Promise.all(["x_start", "noise", "t"].map((n) => dump.floats("loss", "in", n)));
    if (new Set(t.data).size !== 1) throw new Error(`${dump.path}: loss.in.t must hold one timestep for the batch`);
    const stage = model.cond;
    const context = io.has("in", "class_label")
      ? stage instanceof ClassEmbedder
        ? stage.forward(await io.ids("class_label"))
        : undefined
      : undefined;
    if (io.has("in", "class_label") && !context) {
      throw new Error(`${dump.path}: the loss has class labels, the model no ClassEmbedder`);
    }
    const cConcat = await concatInput(model, dump, "loss");
    const { config } = model;
    const schedule = NoiseSchedule.create({
      timesteps: config.timesteps,
      linearStart: config.linear_start,
      linearEnd: config.linear_end,
    });
    try {
      const loss = await lossSimple(need(model.unet), schedule, config, {
        xStart: xStart.data,
        shape: xStart.shape,
        t: t.data[0],
        noise: noise.data,
        context,
        cConcat,
      });
      return new Map([["loss_simple", { data: loss, shape: [loss.length] }]]);
    } finally {
      context?.dispose();
    }
  },
  sample: async (loaded, _io, dump) => {
    const model = ldm(loaded);
    const z0 = await runSample(model, dump);
    const outputs: Outputs = new Map([["z_0", z0]]);
    if (!dump.has("sample", "out", "image") && !dump.has("sample", "out", "inpainted")) return outputs;
    const image = await decodeLatents(model, await imageLatents(dump, z0));
    outputs.set("image", image);
    if (dump.has("sample", "out", "inpainted")) {
      const [original, mask] = await Promise.all(["image", "mask"].map((name) => dump.floats("sample", "in", name)));
      outputs.set("inpainted", inpaintedPixels(original, mask, image));
    }
    return outputs;
  },
};

/**
 * Whether an output is our decoder run on the dump's own z_0: a sample's image, where the dump has z_0. The
 * loop's z_0 is checked on its own, and its error reaches the image amplified by the decoder (4× on the
 * built-in model, DEFAULT_TOLERANCE says why), so the image checks the decoder, at the component bound.
 */
function decodesReference(dump: Dump, component: DumpComponent, name: string): boolean {
  return component === "sample" && (name === "image" || name === "inpainted") && dump.has("sample", "out", "z_0");
}

/** The z_0 a sample's image is decoded from: the dump's own where it has one, else ours. */
async function imageLatents(dump: Dump, ours: HostTensor): Promise<HostTensor> {
  return decodesReference(dump, "sample", "image") ? await dump.floats("sample", "out", "z_0") : ours;
}

async function run(component: DumpComponent, model: ValidatedModel, dump: Dump, device: Device): Promise<Outputs> {
  const uploaded: Tensor[] = [];
  const keep = (t: Tensor) => {
    uploaded.push(t);
    return t;
  };
  const io: ComponentInputs = {
    floats: async (name) => keep(await uploadFloats(device, dump, component, name)),
    ids: async (name) => keep(await uploadIds(device, dump, component, name)),
    has: (direction, name) => dump.has(component, direction, name),
  };
  try {
    return await RUNNERS[component](model, io, dump);
  } finally {
    for (const t of uploaded) t.dispose();
  }
}

function need<T>(network: T | undefined): T {
  if (!network) throw new Error("internal: a network the dump needs was not loaded");
  return network;
}

function compare(
  key: string,
  actual: { data: Float32Array; shape: readonly number[] } | undefined,
  reference: { data: Float32Array; shape: readonly number[] },
  tol: Tolerance,
): OutputCheck {
  let maxRef = 0;
  for (const v of reference.data) maxRef = Math.max(maxRef, Math.abs(v));
  const bound = tol.atol + tol.rtol * maxRef;
  const failed = (problem: string): OutputCheck => ({
    key,
    maxAbs: Number.NaN,
    maxRef,
    relative: Number.NaN,
    nonFinite: 0,
    bound,
    pass: false,
    problem,
  });
  if (!actual) return failed("not produced by this component (unknown output name)");
  const same = actual.shape.length === reference.shape.length && actual.shape.every((d, i) => d === reference.shape[i]);
  if (!same) return failed(`our output is [${actual.shape.join(", ")}], the reference [${reference.shape.join(", ")}]`);
  let maxAbs = 0;
  let nonFinite = 0;
  actual.data.forEach((v, i) => {
    if (!Number.isFinite(v)) nonFinite++;
    else maxAbs = Math.max(maxAbs, Math.abs(v - reference.data[i]));
  });
  const relative = maxRef > 0 ? maxAbs / maxRef : maxAbs;
  return { key, maxAbs, maxRef, relative, nonFinite, bound, pass: nonFinite === 0 && maxAbs <= bound };
}
