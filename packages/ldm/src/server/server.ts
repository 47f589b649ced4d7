/**
 * `ldm serve`: AUTOMATIC1111's `/sdapi/v1` web API over one loaded model, on fastify. Requests are validated by
 * JSON Schema (wrong types: FastAPI's 422 naming the field), run one at a time from a bounded FIFO, and answered
 * with A1111's shapes: base64 PNGs, the `parameters` echo and the `info` JSON string.
 */
import { timingSafeEqual } from "node:crypto";
import fastifyBasicAuth from "@fastify/basic-auth";
import fastifyCors from "@fastify/cors";
import fastifySwagger from "@fastify/swagger";
import fastifySwaggerUi from "@fastify/swagger-ui";
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { type DecodedImage, decodePng, encodePng, type RgbaImage } from "../image/png.ts";
import type { TextualInversion } from "../pipeline/embeddings.ts";
import { PipelineOptionError } from "../pipeline/errors.ts";
import { formatInfotext, INFOTEXT_KEYWORD, parseInfotext } from "../pipeline/infotext.ts";
import type { GenerationResult, LatentDiffusion, LdmGenerateOptions, Progress } from "../pipeline/latent-diffusion.ts";
import { PARAMETERS_KEYWORD, parametersText, parseParameters } from "../pipeline/parameters.ts";
import {
  a1111Samplers,
  DEFAULT_LIMITS,
  img2imgSchema,
  infoJson,
  type JobRecord,
  jobTimestamp,
  type ProcessingRequest,
  type RequestLimits,
  resolveSampler,
  txt2imgSchema,
} from "./a1111.ts";
import { LoraLibrary, LoraNotFoundError } from "./loras.ts";
import { type Checkpoint, findCheckpoint, ModelHost, type PipelineLoader } from "./models.ts";
import { InterruptedError, JobQueue, QueueFullError } from "./queue.ts";

export interface ServeOptions {
  /** What /sd-models lists; the first is loaded at start. */
  checkpoints: Checkpoint[];
  loader: PipelineLoader;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 7860; 0 picks a free port. */
  port?: number;
  /** A1111's --api-auth: "user:password", several separated by commas; HTTP basic over every route. */
  apiAuth?: string;
  /** Origins allowed by CORS (none by default: no CORS headers). */
  corsOrigins?: string[];
  /** A regular expression of allowed origins (A1111's --cors-allow-origins-regex). */
  corsOriginRegex?: string;
  /** Requests that may wait while one runs (default 16); past it: 503. */
  queue?: number;
  limits?: Partial<RequestLimits>;
  /** Largest request body in bytes (default 64 MiB); past it: 413. */
  bodyLimit?: number;
  /** Where prompts' `<lora:name:…>` tags are looked up, and what /loras lists (none: no LoRAs). */
  loraDir?: string;
}

export interface LdmServer {
  app: FastifyInstance;
  /** http://host:port */
  url: string;
  close(): Promise<void>;
}

/** An error answered as A1111 answers it: 422 with FastAPI's `detail` list, or its `{error, detail, body, errors}`. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The request field at fault (422s name it in `loc`). */
    readonly field?: string,
  ) {
    super(message);
  }
}

const fieldError = (field: string, message: string) => new ApiError(422, `${field}: ${message}`, field);

/** The request field of each library option whose errors name it. */
const OPTION_FIELDS: Partial<Record<keyof LdmGenerateOptions, string>> = {
  prompt: "prompt",
  negativePrompt: "negative_prompt",
  classLabel: "class_label",
  uncondClassLabel: "uncond_class_label",
};

/** A1111's cfg_scale default, which CLIP text-to-image models get when a request has none. */
const A1111_CFG_SCALE = 7;

/** A1111's shared.state, as /progress reports it. */
class JobState {
  job = "";
  jobCount = 0;
  jobNo = 0;
  samplingStep = 0;
  samplingSteps = 0;
  jobTimestamp = "0";
  interrupted = false;
  timeStart = 0;
  currentImage: string | null = null;

  begin(job: string, count: number): void {
    Object.assign(this, { job, jobCount: count, jobNo: 0, samplingStep: 0, samplingSteps: 0, interrupted: false });
    this.jobTimestamp = jobTimestamp();
    this.timeStart = Date.now();
    this.currentImage = null;
  }

  end(): void {
    Object.assign(this, { job: "", jobCount: 0, jobNo: 0, samplingStep: 0, samplingSteps: 0, currentImage: null });
  }

  dict() {
    return {
      skipped: false,
      interrupted: this.interrupted,
      stopping_generation: false,
      job: this.job,
      job_count: this.jobCount,
      job_timestamp: this.jobTimestamp,
      job_no: this.jobNo,
      sampling_step: this.samplingStep,
      sampling_steps: this.samplingSteps,
    };
  }

  /** progressapi: 0.01 + finished batches + the current batch's share of steps; the ETA extrapolates it. */
  progress(skipCurrentImage: boolean) {
    if (this.jobCount === 0)
      return { progress: 0, eta_relative: 0, state: this.dict(), current_image: null, textinfo: null };
    let progress = 0.01 + this.jobNo / this.jobCount;
    if (this.samplingSteps > 0) progress += ((1 / this.jobCount) * this.samplingStep) / this.samplingSteps;
    const elapsed = (Date.now() - this.timeStart) / 1000;
    const eta = elapsed / progress - elapsed;
    return {
      progress: Math.min(progress, 1),
      eta_relative: eta,
      state: this.dict(),
      current_image: skipCurrentImage ? null : this.currentImage,
      textinfo: null,
    };
  }
}

/** A1111's options that mean something here, with its defaults (live previews off: each one is a full VAE decode). */
interface Options {
  sd_model_checkpoint: string;
  samples_format: string;
  live_previews_enable: boolean;
  show_progress_every_n_steps: number;
  enable_pnginfo: boolean;
  [key: string]: unknown;
}

/** Starts the server: loads the first checkpoint, then listens. */
export async function serve(options: ServeOptions): Promise<LdmServer> {
  const { checkpoints } = options;
  if (!checkpoints.length) throw new Error("serve: no checkpoint to load");
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const host = new ModelHost(options.loader);
  await host.use(checkpoints[0]);
  const queue = new JobQueue(options.queue ?? 16);
  const loras = new LoraLibrary(options.loraDir);
  const state = new JobState();
  const settings: Options = {
    sd_model_checkpoint: checkpoints[0].title,
    samples_format: "png",
    live_previews_enable: false,
    show_progress_every_n_steps: 10,
    enable_pnginfo: true,
  };

  const app = Fastify({
    bodyLimit: options.bodyLimit ?? 64 * 2 ** 20,
    ajv: { customOptions: { allErrors: true, coerceTypes: true, removeAdditional: true, useDefaults: true } },
  });
  app.setErrorHandler(answerError);
  app.setNotFoundHandler((_request, reply) => reply.code(404).send({ detail: "Not Found" }));
  if (options.apiAuth) {
    const credentials = parseApiAuth(options.apiAuth);
    await app.register(fastifyBasicAuth, {
      authenticate: { realm: "ldm" },
      validate: async (user, password) => {
        if (!credentials.some((c) => same(c.user, user) && same(c.password, password))) {
          return new ApiError(401, "Incorrect username or password");
        }
      },
    });
    // A browser's CORS preflight carries no credentials: it is answered by the CORS plugin, never 401.
    app.addHook("onRequest", (request, reply, done) => {
      if (request.method === "OPTIONS" && request.headers["access-control-request-method"]) return done();
      (app.basicAuth as (req: FastifyRequest, rep: FastifyReply, next: (err?: Error) => void) => void)(
        request,
        reply,
        done,
      );
    });
  }
  if (options.corsOrigins?.length || options.corsOriginRegex) {
    const regex = options.corsOriginRegex ? new RegExp(options.corsOriginRegex) : undefined;
    await app.register(fastifyCors, {
      origin: (origin, callback) =>
        callback(null, origin !== undefined && (options.corsOrigins?.includes(origin) || regex?.test(origin) === true)),
      methods: ["GET", "POST"],
      credentials: true,
    });
  }
  await app.register(fastifySwagger, {
    openapi: { info: { title: "ldm.ts: AUTOMATIC1111-compatible API", version: "1" } },
  });
  await app.register(fastifySwaggerUi, { routePrefix: "/docs" });
  app.get("/openapi.json", { schema: { hide: true } }, () => app.swagger());

  /** The checkpoint a request runs on: override_settings' sd_model_checkpoint, else the options'. */
  const checkpointFor = (request: ProcessingRequest): Checkpoint => {
    const name = request.override_settings?.sd_model_checkpoint;
    if (name === undefined || name === null) {
      return findCheckpoint(checkpoints, settings.sd_model_checkpoint) ?? checkpoints[0];
    }
    const found = typeof name === "string" ? findCheckpoint(checkpoints, name) : undefined;
    if (!found) throw new ApiError(404, `Model not found: ${JSON.stringify(name)}`);
    return found;
  };

  const generate = async (kind: "txt2img" | "img2img", body: ProcessingRequest, abort: AbortSignal) => {
    const plan = planJob(kind, body, limits);
    const checkpoint = checkpointFor(body);
    const uses = await lorasOf(loras, plan.options.prompt);
    const previewEvery = settings.live_previews_enable ? settings.show_progress_every_n_steps : 0;
    const { images, record } = await queue.run(async (signal) => {
      state.begin(kind, plan.iterations);
      try {
        const pipe = await host.use(checkpoint);
        // The loaded pipeline keeps the last request's LoRAs merged; this request's replace them (none: restored).
        await pipe.setLoras(uses).catch((e: Error) => {
          throw fieldError("prompt", e.message);
        });
        return await runJob(pipe, plan, signal, state, previewEvery > 0 ? previewEvery : undefined);
      } finally {
        state.end();
      }
    }, abort);
    const parameters: Record<string, unknown> = {
      ...body,
      width: record.width,
      height: record.height,
      cfg_scale: record.cfgScale,
    };
    if (kind === "img2img" && !body.include_init_images) Object.assign(parameters, { init_images: null, mask: null });
    return {
      images: body.send_images === false ? [] : images.map((png) => Buffer.from(png).toString("base64")),
      parameters,
      info: infoJson(record, images.length),
    };
  };

  const txt2imgBody = txt2imgSchema(limits);
  const img2imgBody = img2imgSchema(limits);
  app.post("/sdapi/v1/txt2img", { schema: { body: txt2imgBody } }, (request, reply) =>
    generate("txt2img", request.body as ProcessingRequest, clientGone(request, reply)),
  );
  app.post("/sdapi/v1/img2img", { schema: { body: img2imgBody } }, (request, reply) =>
    generate("img2img", request.body as ProcessingRequest, clientGone(request, reply)),
  );
  app.get(
    "/sdapi/v1/progress",
    {
      schema: {
        querystring: { type: "object", properties: { skip_current_image: { type: "boolean", default: false } } },
      },
    },
    (request) => state.progress((request.query as { skip_current_image: boolean }).skip_current_image),
  );
  app.post("/sdapi/v1/interrupt", () => {
    if (queue.interrupt()) state.interrupted = true;
    return {};
  });
  app.get("/sdapi/v1/sd-models", () => checkpoints);
  app.get("/sdapi/v1/samplers", () => a1111Samplers());
  app.get("/sdapi/v1/loras", () => loras.list());
  app.get("/sdapi/v1/embeddings", () => embeddingsOf(host.pipe));
  // The folder is read on every /loras and every tag: there is nothing to refresh.
  app.post("/sdapi/v1/refresh-loras", () => null);
  app.get("/sdapi/v1/options", () => ({ ...settings, sd_checkpoint_hash: null }));
  app.post("/sdapi/v1/options", { schema: { body: { type: "object" } } }, async (request, reply) => {
    const changes = request.body as Record<string, unknown>;
    const name = changes.sd_model_checkpoint;
    if (name !== undefined) {
      const checkpoint = typeof name === "string" ? findCheckpoint(checkpoints, name) : undefined;
      if (!checkpoint) throw new ApiError(500, `model ${JSON.stringify(name)} not found`);
      await queue.run(() => host.use(checkpoint), clientGone(request, reply));
      changes.sd_model_checkpoint = checkpoint.title;
    }
    Object.assign(settings, changes);
    return null;
  });
  app.post(
    "/sdapi/v1/png-info",
    { schema: { body: { type: "object", required: ["image"], properties: { image: { type: "string" } } } } },
    (request) => pngInfo((request.body as { image: string }).image.trim()),
  );

  await app.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 7860 });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : (options.port ?? 7860);
  return {
    app,
    url: `http://${formatHost(options.host ?? "127.0.0.1")}:${port}`,
    close: async () => {
      queue.interrupt();
      await app.close();
      host.dispose();
    },
  };
}

/** The LoRAs a prompt's `<lora:…>` tags name: an unknown name is a 404 (as an unknown sampler), bad syntax a 422. */
async function lorasOf(loras: LoraLibrary, prompt: string) {
  try {
    return await loras.uses(prompt);
  } catch (e) {
    if (e instanceof LoraNotFoundError) throw new ApiError(404, e.message);
    throw fieldError("prompt", (e as Error).message.split("\n")[0]);
  }
}

/** What a request asks for, checked before it waits in the queue. */
interface JobPlan {
  kind: "txt2img" | "img2img";
  /** guidanceScale absent: the model's default (A1111's for CLIP models), known once it is loaded. */
  options: Omit<LdmGenerateOptions, "seed" | "signal" | "onProgress" | "preview"> & { prompt: string };
  /** The first batch's seed; batch n runs from seed + n · batch size, as A1111 numbers its seeds. */
  seed: number;
  iterations: number;
  initImage?: RgbaImage;
  mask?: RgbaImage;
  strength?: number;
}

/** Fields this server cannot honour when a client turns them on: an error, not a silently different image. */
const UNSUPPORTED: [string, (v: unknown) => boolean, string][] = [
  ["enable_hr", (v) => v === true, "hires fix is not supported"],
  ["restore_faces", (v) => v === true, "face restoration is not supported"],
  ["tiling", (v) => v === true, "tiling is not supported"],
  ["subseed_strength", (v) => typeof v === "number" && v > 0, "variation seeds are not supported"],
  ["script_name", (v) => typeof v === "string" && v !== "", "scripts are not supported"],
  [
    "alwayson_scripts",
    (v) => typeof v === "object" && v !== null && Object.keys(v).length > 0,
    "scripts are not supported",
  ],
  [
    "refiner_checkpoint",
    (v) => typeof v === "string" && !["", "None", "none"].includes(v),
    "refiners are not supported",
  ],
];

function planJob(kind: "txt2img" | "img2img", body: ProcessingRequest, limits: RequestLimits): JobPlan {
  for (const [field, isOn, why] of UNSUPPORTED) if (isOn(body[field])) throw fieldError(field, why);
  let resolved: ReturnType<typeof resolveSampler>;
  try {
    resolved = resolveSampler(body);
  } catch (e) {
    throw fieldError("scheduler", (e as Error).message);
  }
  if (!resolved) {
    const name = body.sampler_name || body.sampler_index;
    throw new ApiError(
      404,
      `Sampler not found: ${JSON.stringify(name)}${body.scheduler ? ` with scheduler ${JSON.stringify(body.scheduler)}` : ""}`,
    );
  }
  const width = body.width ?? undefined;
  const height = body.height ?? undefined;
  if (width !== undefined && height !== undefined) checkPixels(width, height, limits);
  let initImage: RgbaImage | undefined;
  let mask: RgbaImage | undefined;
  if (kind === "img2img") {
    const first = body.init_images?.[0];
    if (first === undefined) throw new ApiError(404, "Init image not found");
    initImage = decodeImage(first, "init_images", limits);
    if (body.mask) {
      mask = maskImage(decodeImage(body.mask, "mask", limits), body.inpainting_mask_invert === 1);
      if (mask.width !== initImage.width || mask.height !== initImage.height) {
        throw fieldError(
          "mask",
          `${mask.width}×${mask.height}, the init image ${initImage.width}×${initImage.height}: they must match`,
        );
      }
    }
    const w = width ?? initImage.width;
    const h = height ?? initImage.height;
    if (w !== initImage.width || h !== initImage.height) {
      throw fieldError(
        "init_images",
        `the image is ${initImage.width}×${initImage.height}, the request asks for ${w}×${h}: resizing is not supported, send it at that size`,
      );
    }
  }
  const seed = body.seed === null || body.seed === -1 ? Math.floor(Math.random() * 4294967294) : body.seed;
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw fieldError("seed", `${seed} must be -1 (random) or an integer ≥ 0`);
  return {
    kind,
    options: {
      prompt: body.prompt ?? "",
      negativePrompt: body.negative_prompt ?? "",
      steps: body.steps ?? 50,
      ...(body.cfg_scale !== null ? { guidanceScale: body.cfg_scale } : {}),
      ...(body.class_label !== null ? { classLabel: body.class_label } : {}),
      ...(body.uncond_class_label !== null ? { uncondClassLabel: body.uncond_class_label } : {}),
      ...resolved,
      ...(body.eta !== null ? { eta: body.eta } : {}),
      width,
      height,
      batchSize: body.batch_size ?? 1,
    },
    seed,
    iterations: body.n_iter ?? 1,
    initImage,
    mask,
    strength: kind === "img2img" ? (body.denoising_strength ?? 0.75) : undefined,
  };
}

function checkPixels(width: number, height: number, limits: RequestLimits): void {
  if (width * height > limits.maxPixels) {
    throw fieldError("width", `${width}×${height} is over this server's limit of ${limits.maxPixels} pixels`);
  }
}

/** A base64 PNG (or data: URL) as RGBA; its header's size is checked before the pixels are decoded. */
function decodeImage(encoded: string, field: string, limits: RequestLimits): DecodedImage {
  if (/^https?:\/\//.test(encoded)) throw new ApiError(500, "Requests not allowed");
  const data = encoded.startsWith("data:") ? encoded.slice(encoded.indexOf(",") + 1) : encoded;
  const bytes = Buffer.from(data, "base64");
  if (bytes.length >= 24 && bytes.readUInt32BE(12) === 0x49484452) {
    const width = bytes.readUInt32BE(16);
    const height = bytes.readUInt32BE(20);
    if (width * height > limits.maxPixels) {
      throw new ApiError(413, `${field}: ${width}×${height} is over this server's limit of ${limits.maxPixels} pixels`);
    }
  }
  try {
    return decodePng(bytes, field);
  } catch (e) {
    throw fieldError(field, (e as Error).message);
  }
}

/**
 * A1111's create_binary_mask: a mask with transparency is its alpha channel (> 128 repaints), else its
 * brightness; inpainting_mask_invert swaps the two sides.
 */
function maskImage(image: RgbaImage, invert: boolean): RgbaImage {
  const { data } = image;
  let translucent = false;
  for (let p = 3; p < data.length; p += 4) if (data[p] !== 255) translucent = true;
  const out = new Uint8ClampedArray(data.length);
  for (let p = 0; p < data.length; p += 4) {
    const luma = (data[p] * 19595 + data[p + 1] * 38470 + data[p + 2] * 7471 + 0x8000) >> 16;
    const repaint = translucent ? data[p + 3] > 128 : luma >= 128;
    out.fill(repaint !== invert ? 255 : 0, p, p + 3);
    out[p + 3] = 255;
  }
  return { width: image.width, height: image.height, data: out };
}

/** A1111's /embeddings: the loaded model's embeddings by trigger word, and those of another width it skipped. */
function embeddingsOf(pipe: LatentDiffusion | undefined) {
  const entries = (list: readonly TextualInversion[]) =>
    Object.fromEntries(
      list.map((e) => [
        e.name,
        { step: null, sd_checkpoint: null, sd_checkpoint_name: null, shape: e.width, vectors: e.count },
      ]),
    );
  return { loaded: entries(pipe?.embeddings ?? []), skipped: entries(pipe?.skippedEmbeddings ?? []) };
}

/** Runs a planned job's batches on the loaded pipeline, keeping /progress current; an interrupt ends it early. */
async function runJob(pipe: LatentDiffusion, plan: JobPlan, signal: AbortSignal, state: JobState, preview?: number) {
  const pngs: Uint8Array[] = [];
  const seeds: string[] = [];
  const infotexts: string[] = [];
  let width = plan.options.width ?? plan.initImage?.width ?? pipe.defaultSize;
  let height = plan.options.height ?? plan.initImage?.height ?? pipe.defaultSize;
  const batchSize = plan.options.batchSize ?? 1;
  const guidanceScale =
    plan.options.guidanceScale ?? (pipe.prompted === "clip" ? A1111_CFG_SCALE : pipe.defaultGuidanceScale);
  // A model without a text encoder takes no prompt: A1111's default "" is none, any other the pipeline refuses.
  const { prompt, negativePrompt } = plan.options;
  const text = pipe.textPrompted
    ? { prompt, negativePrompt }
    : { prompt: prompt || undefined, negativePrompt: negativePrompt || undefined };
  for (let n = 0; n < plan.iterations && !state.interrupted; n++) {
    state.jobNo = n;
    const seed = plan.seed + n * batchSize;
    let last: Progress | undefined;
    const options: LdmGenerateOptions = {
      ...plan.options,
      ...text,
      guidanceScale,
      width,
      height,
      seed,
      signal,
      preview,
      onProgress: (p) => {
        last = p;
        state.samplingStep = p.step + 1;
        state.samplingSteps = p.steps;
        if (p.preview?.[0]) state.currentImage = Buffer.from(encodePng(p.preview[0])).toString("base64");
      },
    };
    let result: GenerationResult;
    try {
      const { initImage, mask, strength } = plan;
      result = await (initImage && mask
        ? pipe.inpaint({ ...options, initImage, mask, strength })
        : initImage
          ? pipe.img2img({ ...options, initImage, strength })
          : pipe.generate(options));
    } catch (e) {
      if (!(signal.reason instanceof InterruptedError)) {
        if (e instanceof RangeError) {
          const field = e instanceof PipelineOptionError && e.option ? OPTION_FIELDS[e.option] : undefined;
          throw field ? fieldError(field, e.message) : new ApiError(422, e.message);
        }
        throw e;
      }
      // A1111 answers an interrupted job with the images of the last step's x̂₀.
      if (last) {
        const f = pipe.networks.vae.downscale;
        const shape = [
          batchSize,
          last.denoised.length / batchSize / ((width / f) * (height / f)),
          height / f,
          width / f,
        ];
        for (const image of await pipe.decode(last.denoised, shape)) {
          pngs.push(encodePng(image, { Software: "ldm.ts" }));
          seeds.push(String(seed));
          infotexts.push("");
        }
      }
      break;
    }
    width = result.parameters[0]?.width ?? width;
    height = result.parameters[0]?.height ?? height;
    result.images.forEach((image, i) => {
      const parameters = result.parameters[i];
      infotexts.push(formatInfotext(parameters));
      pngs.push(
        encodePng(image, {
          [INFOTEXT_KEYWORD]: infotexts[infotexts.length - 1],
          [PARAMETERS_KEYWORD]: parametersText(parameters),
          Software: "ldm.ts",
        }),
      );
      seeds.push(String(result.seed));
    });
  }
  const record: JobRecord = {
    prompt: plan.options.prompt,
    negativePrompt: plan.options.negativePrompt ?? "",
    seeds,
    infotexts,
    sampler: plan.options.sampler ?? "euler",
    schedule: plan.options.schedule,
    steps: plan.options.steps ?? 50,
    cfgScale: guidanceScale,
    width,
    height,
    batchSize,
    denoisingStrength: plan.strength ?? null,
    modelName: pipe.name,
    inpainting: pipe.isInpainting && plan.mask !== undefined,
    eta: plan.options.eta ?? null,
    jobTimestamp: state.jobTimestamp,
  };
  return { images: pngs, record };
}

/**
 * /png-info: the A1111 `parameters` text (else one made from our ldm-parameters), the other text chunks, and the
 * text's fields as A1111's parse_generation_parameters names them (Prompt, Negative prompt, Size-1, Size-2, …).
 */
function pngInfo(encoded: string) {
  const data = encoded.startsWith("data:") ? encoded.slice(encoded.indexOf(",") + 1) : encoded;
  let text: Record<string, string>;
  try {
    text = decodePng(Buffer.from(data, "base64"), "image").text;
  } catch (e) {
    throw new ApiError(500, `Invalid encoded image (${(e as Error).message})`);
  }
  const { [INFOTEXT_KEYWORD]: stored, ...items } = text;
  const ours = text[PARAMETERS_KEYWORD];
  const info = stored ?? (ours === undefined ? "" : formatInfotext(parseParameters(ours, "image")));
  if (!info) return { info, items, parameters: {} };
  const { prompt, negativePrompt, values } = parseInfotext(info);
  const size = /^(\d+)x(\d+)$/.exec(values.Size ?? "");
  const sizes = size ? { "Size-1": size[1], "Size-2": size[2] } : {};
  return { info, items, parameters: { Prompt: prompt, "Negative prompt": negativePrompt, ...values, ...sizes } };
}

/** A signal that aborts when the client closes the connection before the answer is sent. */
function clientGone(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  reply.raw.once("close", () => {
    if (!reply.raw.writableFinished) controller.abort(new Error(`${request.url}: the client disconnected`));
  });
  return controller.signal;
}

/** ajv's errors as FastAPI's 422 `detail` entries (pydantic v1 wording). */
function validationDetail(errors: NonNullable<FastifyError["validation"]>) {
  return errors.map((e) => {
    const path = e.instancePath.split("/").filter(Boolean);
    const params = e.params as Record<string, unknown>;
    const loc = ["body", ...path.map((p) => (/^\d+$/.test(p) ? Number(p) : p))];
    switch (e.keyword) {
      case "type": {
        const type = String(params.type).split(",")[0];
        const words: Record<string, [string, string]> = {
          integer: ["value is not a valid integer", "type_error.integer"],
          number: ["value is not a valid float", "type_error.float"],
          string: ["str type expected", "type_error.str"],
          boolean: ["value could not be parsed to a boolean", "type_error.bool"],
          array: ["value is not a valid list", "type_error.list"],
          object: ["value is not a valid dict", "type_error.dict"],
        };
        const [msg, type_] = words[type] ?? [e.message ?? "invalid", "type_error"];
        return { loc, msg, type: type_ };
      }
      case "minimum":
        return {
          loc,
          msg: `ensure this value is greater than or equal to ${params.limit}`,
          type: "value_error.number.not_ge",
        };
      case "maximum":
        return {
          loc,
          msg: `ensure this value is less than or equal to ${params.limit}`,
          type: "value_error.number.not_le",
        };
      case "multipleOf":
        return {
          loc,
          msg: `ensure this value is a multiple of ${params.multipleOf}`,
          type: "value_error.number.not_multiple",
        };
      case "required":
        return { loc: [...loc, String(params.missingProperty)], msg: "field required", type: "value_error.missing" };
      default:
        return { loc, msg: e.message ?? e.keyword, type: `value_error.${e.keyword}` };
    }
  });
}

const a1111Error = (error: string, detail: string) => ({ error, detail, body: "", errors: detail });

function answerError(error: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  if (error.validation) return reply.code(422).send({ detail: validationDetail(error.validation) });
  if (error instanceof ApiError) {
    if (error.status === 422) {
      const loc = error.field ? ["body", error.field] : ["body"];
      return reply.code(422).send({ detail: [{ loc, msg: error.message, type: "value_error" }] });
    }
    return reply.code(error.status).send(a1111Error("HTTPException", error.message));
  }
  if (error instanceof QueueFullError) return reply.code(503).send(a1111Error("HTTPException", error.message));
  switch (error.code) {
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return reply
        .code(422)
        .send({ detail: [{ loc: ["body", 0], msg: error.message, type: "value_error.jsondecode" }] });
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return reply.code(413).send(a1111Error("PayloadTooLarge", error.message));
    case "FST_BASIC_AUTH_MISSING_OR_BAD_AUTHORIZATION_HEADER":
      return reply.code(401).send(a1111Error("HTTPException", "Not authenticated"));
  }
  if (error.statusCode === 401) return reply.code(401).send(a1111Error("HTTPException", error.message));
  if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
    return reply.code(error.statusCode).send(a1111Error("HTTPException", error.message));
  }
  request.log.error(error);
  return reply.code(500).send(a1111Error(error.name, error.message.split("\n")[0]));
}

function parseApiAuth(text: string): { user: string; password: string }[] {
  return text.split(",").map((pair) => {
    const at = pair.indexOf(":");
    if (at <= 0) throw new Error(`--api-auth "${pair}": expected user:password`);
    return { user: pair.slice(0, at), password: pair.slice(at + 1) };
  });
}

/** Compares without leaking where two strings differ. */
function same(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function formatHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}
