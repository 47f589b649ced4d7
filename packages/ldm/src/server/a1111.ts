/**
 * AUTOMATIC1111's `/sdapi/v1` request and response shapes (modules/api/models.py and processing.py of
 * stable-diffusion-webui): the txt2img / img2img request fields with their defaults, the sampler names, the
 * `info` JSON of a finished job and its infotext lines.
 */
import {
  SAMPLERS,
  type SamplerName,
  type SigmaScheduleName,
  samplerByName,
  sigmaScheduleOf,
} from "../diffusion/index.ts";

/** A JSON Schema for one request field; every A1111 field is Optional, so null is accepted (and means the default). */
type FieldSchema = Record<string, unknown>;

const nullable = (type: string, extra: Record<string, unknown> = {}, fallback: unknown = null): FieldSchema => ({
  type: [type, "null"],
  default: fallback,
  ...extra,
});

export interface RequestLimits {
  /** Largest width × height in pixels. */
  maxPixels: number;
  maxSteps: number;
  /** Images per batch (batch_size) and batches per request (n_iter). */
  maxBatch: number;
  maxIterations: number;
}

export const DEFAULT_LIMITS: RequestLimits = {
  maxPixels: 2048 * 2048,
  maxSteps: 150,
  maxBatch: 8,
  maxIterations: 16,
};

/**
 * Our fields for the paper's class-conditional models (A1111 has none), named as upstream's batch keys and the
 * dumps name them; the other models take neither.
 */
const FAMILY_FIELDS: Record<string, FieldSchema> = {
  class_label: nullable("integer", { minimum: 0, description: "class-conditional models: the class to generate" }),
  uncond_class_label: nullable("integer", {
    minimum: 0,
    description:
      "class-conditional models: the class of guidance's unconditional half (default: the config's 'no class', cin256-v2's 1000; cin-ldm-vq-f8 has none, so guiding it needs one); with cfg_scale other than 1",
  }),
};

/**
 * The fields of StableDiffusionProcessing (and its txt2img / img2img subclasses plus the API's additions) with
 * A1111's defaults. width and height default to null here instead of 512: the loaded model's trained size (or
 * the init image's) is what a request without them gets; cfg_scale to null instead of 7.0, which only CLIP
 * text-to-image models get: the paper's other models sample with their own guidance by default.
 */
function processingFields(limits: RequestLimits): Record<string, FieldSchema> {
  return {
    prompt: nullable("string", {}, ""),
    negative_prompt: nullable("string", {}, ""),
    styles: nullable("array", { items: { type: "string" } }),
    seed: nullable("integer", {}, -1),
    subseed: nullable("integer", {}, -1),
    subseed_strength: nullable("number", {}, 0),
    seed_resize_from_h: nullable("integer", {}, -1),
    seed_resize_from_w: nullable("integer", {}, -1),
    sampler_name: nullable("string"),
    scheduler: nullable("string"),
    batch_size: nullable("integer", { minimum: 1, maximum: limits.maxBatch }, 1),
    n_iter: nullable("integer", { minimum: 1, maximum: limits.maxIterations }, 1),
    steps: nullable("integer", { minimum: 1, maximum: limits.maxSteps }, 50),
    cfg_scale: nullable("number", {
      description:
        "default 7.0 for CLIP text-to-image models, else the model's own: 5.0 for the paper's BERT text model, 3.0 for cin256-v2, 1 (unguided) for the others",
    }),
    width: nullable("integer", { minimum: 8, multipleOf: 8 }),
    height: nullable("integer", { minimum: 8, multipleOf: 8 }),
    restore_faces: nullable("boolean"),
    tiling: nullable("boolean"),
    do_not_save_samples: nullable("boolean", {}, false),
    do_not_save_grid: nullable("boolean", {}, false),
    eta: nullable("number", { minimum: 0 }),
    denoising_strength: nullable("number", { minimum: 0, maximum: 1 }, 0),
    s_min_uncond: nullable("number"),
    s_churn: nullable("number"),
    s_tmax: nullable("number"),
    s_tmin: nullable("number"),
    s_noise: nullable("number"),
    override_settings: nullable("object"),
    override_settings_restore_afterwards: nullable("boolean", {}, true),
    refiner_checkpoint: nullable("string"),
    refiner_switch_at: nullable("number"),
    disable_extra_networks: nullable("boolean", {}, false),
    comments: nullable("object"),
    sampler_index: nullable("string", {}, "Euler"),
    script_name: nullable("string"),
    script_args: nullable("array", {}, []),
    send_images: nullable("boolean", {}, true),
    save_images: nullable("boolean", {}, false),
    alwayson_scripts: nullable("object", {}, {}),
    force_task_id: nullable("string"),
    infotext: nullable("string"),
    ...FAMILY_FIELDS,
  };
}

const TXT2IMG_EXTRA: Record<string, FieldSchema> = {
  enable_hr: nullable("boolean", {}, false),
  firstphase_width: nullable("integer", {}, 0),
  firstphase_height: nullable("integer", {}, 0),
  hr_scale: nullable("number", {}, 2.0),
  hr_upscaler: nullable("string"),
  hr_second_pass_steps: nullable("integer", {}, 0),
  hr_resize_x: nullable("integer", {}, 0),
  hr_resize_y: nullable("integer", {}, 0),
  hr_checkpoint_name: nullable("string"),
  hr_sampler_name: nullable("string"),
  hr_scheduler: nullable("string"),
  hr_prompt: nullable("string", {}, ""),
  hr_negative_prompt: nullable("string", {}, ""),
};

const IMG2IMG_EXTRA: Record<string, FieldSchema> = {
  init_images: nullable("array", { items: { type: "string" } }),
  resize_mode: nullable("integer", {}, 0),
  image_cfg_scale: nullable("number"),
  mask: nullable("string"),
  mask_blur_x: nullable("integer", {}, 4),
  mask_blur_y: nullable("integer", {}, 4),
  mask_blur: nullable("integer"),
  mask_round: nullable("boolean", {}, true),
  inpainting_fill: nullable("integer", {}, 0),
  inpaint_full_res: nullable("boolean", {}, true),
  inpaint_full_res_padding: nullable("integer", {}, 0),
  inpainting_mask_invert: nullable("integer", { enum: [0, 1, null] }, 0),
  initial_noise_multiplier: nullable("number"),
  latent_mask: nullable("string"),
  include_init_images: nullable("boolean", {}, false),
};

/** Unknown fields are dropped before the handler sees them (removeAdditional), as pydantic ignores them. */
function objectSchema(title: string, properties: Record<string, FieldSchema>): Record<string, unknown> {
  return { title, type: "object", properties, additionalProperties: false };
}

export function txt2imgSchema(limits: RequestLimits): Record<string, unknown> {
  return objectSchema("StableDiffusionProcessingTxt2Img", {
    ...processingFields(limits),
    ...TXT2IMG_EXTRA,
  });
}

export function img2imgSchema(limits: RequestLimits): Record<string, unknown> {
  const fields = processingFields(limits);
  return objectSchema("StableDiffusionProcessingImg2Img", {
    ...fields,
    denoising_strength: nullable("number", { minimum: 0, maximum: 1 }, 0.75),
    ...IMG2IMG_EXTRA,
  });
}

/** A validated request: every field present (null where the client sent null), unknown ones dropped. */
export type ProcessingRequest = Record<string, unknown> & {
  prompt: string | null;
  negative_prompt: string | null;
  seed: number | null;
  sampler_name: string | null;
  sampler_index: string | null;
  scheduler: string | null;
  batch_size: number | null;
  n_iter: number | null;
  steps: number | null;
  cfg_scale: number | null;
  width: number | null;
  height: number | null;
  eta: number | null;
  denoising_strength: number | null;
  class_label: number | null;
  uncond_class_label: number | null;
  override_settings: Record<string, unknown> | null;
  send_images: boolean | null;
  init_images?: string[] | null;
  mask?: string | null;
  inpainting_mask_invert?: number | null;
  include_init_images?: boolean | null;
};

/** A1111's sampler list: each A1111 name once, with our names that run it as aliases. */
export function a1111Samplers(): { name: string; aliases: string[]; options: Record<string, unknown> }[] {
  const labels = [...new Set(SAMPLERS.map((s) => s.a1111))];
  return labels.map((name) => ({
    name,
    aliases: SAMPLERS.filter((s) => s.a1111 === name).map((s) => s.name),
    options: {},
  }));
}

/** A1111's `scheduler` values (names and labels, lower-cased) → our σ spacings; "automatic": the sampler's own. */
const SCHEDULERS: Record<string, SigmaScheduleName | undefined> = {
  automatic: undefined,
  uniform: "normal",
  normal: "normal",
  karras: "karras",
  exponential: "exponential",
};

/**
 * The sampler a request names: sampler_name, else sampler_index (A1111's order), by A1111 name or ours,
 * case-insensitively; the older names with " Karras" appended, and `scheduler`, pick the σ spacing. Undefined:
 * no such sampler; a RangeError: a scheduler the sampler does not take.
 */
export function resolveSampler(
  request: ProcessingRequest,
): { sampler: SamplerName; schedule?: SigmaScheduleName } | undefined {
  let name = (request.sampler_name || request.sampler_index || "Euler").toLowerCase();
  let scheduler = (request.scheduler || "automatic").toLowerCase();
  const byName = (n: string) => SAMPLERS.find((s) => s.a1111.toLowerCase() === n || s.name === n);
  if (!byName(name) && name.endsWith(" karras") && byName(name.slice(0, -7))) {
    name = name.slice(0, -7);
    scheduler = "karras";
  }
  const record = byName(name);
  if (!record) return undefined;
  if (!(scheduler in SCHEDULERS)) throw new RangeError(`unknown scheduler "${request.scheduler}"`);
  const requested = SCHEDULERS[scheduler];
  if (requested === undefined) return { sampler: record.name };
  return { sampler: record.name, schedule: sigmaScheduleOf(record, requested) };
}

/** One job's facts that `info` and the infotexts report. */
export interface JobRecord {
  prompt: string;
  negativePrompt: string;
  /** Per image: the seed of the run that made it (A1111: seed + index; here one seed per batch run). */
  seeds: string[];
  /** Per image: its A1111 parameters text ("" for an interrupted run's images). */
  infotexts: string[];
  sampler: SamplerName;
  /** The σ spacing when the request chose one ("Schedule type"). */
  schedule?: SigmaScheduleName;
  steps: number;
  cfgScale: number;
  width: number;
  height: number;
  batchSize: number;
  denoisingStrength: number | null;
  modelName: string;
  inpainting: boolean;
  eta: number | null;
  jobTimestamp: string;
}

/** Processed.js(): the `info` string of a txt2img / img2img answer. */
export function infoJson(job: JobRecord, imageCount: number): string {
  const seed = (s: string) => (Number.isSafeInteger(Number(s)) ? Number(s) : s);
  return JSON.stringify({
    prompt: job.prompt,
    all_prompts: Array(imageCount).fill(job.prompt),
    negative_prompt: job.negativePrompt,
    all_negative_prompts: Array(imageCount).fill(job.negativePrompt),
    seed: seed(job.seeds[0] ?? "-1"),
    all_seeds: job.seeds.map(seed),
    subseed: -1,
    all_subseeds: Array(imageCount).fill(-1),
    subseed_strength: 0,
    width: job.width,
    height: job.height,
    sampler_name: samplerByName(job.sampler).a1111,
    cfg_scale: job.cfgScale,
    steps: job.steps,
    batch_size: job.batchSize,
    restore_faces: false,
    face_restoration_model: null,
    sd_model_name: job.modelName,
    sd_model_hash: null,
    sd_vae_name: null,
    sd_vae_hash: null,
    seed_resize_from_w: -1,
    seed_resize_from_h: -1,
    denoising_strength: job.denoisingStrength,
    extra_generation_params: {},
    index_of_first_image: 0,
    infotexts: job.infotexts,
    styles: [],
    job_timestamp: job.jobTimestamp,
    clip_skip: 1,
    is_using_inpainting_conditioning: job.inpainting,
  });
}

/** A1111's job_timestamp: local time as YYYYmmddHHMMSS. */
export function jobTimestamp(date = new Date()): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
}
