/**
 * Sampling from a loaded LatentDiffusion (ldm.models.diffusion.ddpm.LatentDiffusion), in the shape of diffusers'
 * pipelines: the cond stage's conditioning (a prompt's CLIP or BERTEmbedder context, a layout's, a class
 * embedding, a low-resolution image, a segmentation map, a masked image), torch-compatible CPU noise, a guided sampling loop over the UNet, the
 * first stage's decode. Stable Diffusion (stable-diffusion.ts) is its CLIP text-to-image configuration. The
 * latent scale factor, the conditioning key and the parameterization come from the model's config.
 */
import { Device, defaultDtype, type ParamDType, Tensor } from "@ldm/tensor";
import { conditioningKey, describeCondStage, type LdmConfig } from "@ldm/weights";
import {
  type InitLatents,
  NoiseSchedule,
  NonFiniteLatentsError,
  SAMPLING_DEFAULTS,
  type SamplerName,
  type SamplerRecord,
  type SigmaScheduleName,
  type StepInfo,
  samplerByName,
  sigmaScheduleOf,
} from "../diffusion/index.ts";
import { maskFromImage, pixelsToRgba, resizeNearest, rgbaToPixels } from "../image/pixels.ts";
import type { RgbaImage } from "../image/png.ts";
import { type LoraUse, MergedLoras } from "../lora/merge.ts";
import { loraTags, withoutLoraTags } from "../lora/prompt.ts";
import { DEFAULT_VAE_TILES } from "../models/autoencoder.ts";
import { ClassEmbedder, type CondStageModel, SpatialRescaler } from "../models/cond-stage.ts";
import type { AutoencoderKL, CLIPTextModel, UNetModel, VaeTiling } from "../models/index.ts";
import type { TileOptions } from "../models/tiles.ts";
import { BERTEmbedder, type BertEmbedderConfig } from "../models/x-transformer.ts";
import { Generator, type Seed } from "../random/index.ts";
import {
  BertTokenizer,
  type ClipTokenizer,
  LayoutBuilder,
  type LayoutObject,
  type PadWith,
} from "../tokenizer/index.ts";
import { type ChunkedPrompt, chunkPrompt } from "../tokenizer/prompt-attention.ts";
import {
  assertFinite,
  encodeTokenRows,
  type LatentRequest,
  NonFiniteError,
  sampleConditioned,
  sampleFromTokens,
  type TokenEncoder,
} from "./denoiser.ts";
import { type EmbeddingOrigin, EmbeddingSet, type TextualInversion } from "./embeddings.ts";
import { PipelineOptionError } from "./errors.ts";
import {
  checkGenerateInputs,
  checkImageInput,
  checkPromptList,
  checkSegmentationInput,
  checkString,
} from "./inputs.ts";
import { lossSimple } from "./loss.ts";
import { maskedImageConcat, pasteRepainted } from "./masked-image.ts";
import { estimateMemory, gib, MAX_BATCH, MAX_PROMPTS, MAX_SIDE, parameterCount } from "./memory.ts";
import { type ModelInputs, modelInputs, type Prompted } from "./model-inputs.ts";
import { type GenerationParameters, loraParameters } from "./parameters.ts";
import { checkSplitInput, NOTEBOOK_SPLIT_INPUT, type SplitInput } from "./split-input.ts";

export interface LoadOptions {
  /** The device to run on; one is created (and destroyed by dispose()) when absent. */
  device?: Device;
  /** lavapipe's subgroup size for the device created when `device` is absent (DeviceOptions.cpuLanes). */
  cpuLanes?: number;
  /**
   * Parameter and activation dtype; f16 needs shader-f16. "auto": the adapter's `defaultDtype` (f16 on GPUs with
   * shader-f16, else f32). Default f32.
   */
  dtype?: ParamDType | "auto";
  /** An original-style YAML config; default: `<stem>.yaml` beside a single file if it exists, else detected. */
  config?: string;
  /** Sample with the UNet's EMA weights (`model_ema.*`); default: the config's use_ema where the file has them. */
  ema?: boolean;
  /** Diffusers folders: read the `fp16` variant files (`*.fp16.safetensors`). */
  variant?: "fp16";
  /**
   * CLIP's vocabulary (see loadClipTokenizer); default: the folder the config names in
   * cond_stage_config.params.tokenizer, else a diffusers folder's tokenizer/, else (a single file) the
   * shipped CLIP vocabulary. BERTEmbedder models: a WordPiece vocab.txt; default: the shipped bert-base-uncased.
   */
  vocab?: string;
  /** What the parameters call the model (default: the file or folder name; a hub model: its repository). */
  name?: string;
}

/** Reported after every sampler step. */
export interface Progress {
  step: number;
  steps: number;
  /** The step's model timestep. */
  t: number;
  /** Since sampling began. */
  elapsedMs: number;
  /** The step's x̂₀ decoded, when `preview` asked for it at this step. */
  preview?: RgbaImage[];
  /** The step's x̂₀ latents (scaled, [B, C, h, w]): what decode() turns into the images an interrupted run has. */
  denoised: Float32Array;
}

export interface GenerateOptions extends ConditioningOptions {
  prompt: string;
  /** What the unconditional half of classifier-free guidance is conditioned on (default ""). */
  negativePrompt?: string;
  /** Default 50. */
  steps?: number;
  /** Classifier-free guidance scale (default 7.5); 1 skips the unconditional pass. */
  guidanceScale?: number;
  /** Default "ddim" (SAMPLING_DEFAULTS). */
  sampler?: SamplerName;
  /**
   * A1111's CLIP skip: condition on the n-th layer from the end (1 the last, 2 the penultimate) then the final
   * LayerNorm. Default: the model's own (1 for SD 1.x, 2 for SD 2.x, which conditions on the penultimate).
   */
  clipSkip?: number;
  /** k-samplers: the σ spacing, "normal", "karras" or "exponential" (default: the sampler's own). */
  schedule?: SigmaScheduleName;
  /** Noise amount of DDIM (default 0) and the ancestral/SDE samplers (default 1). */
  eta?: number;
  /** torch seed of the run's one CPU generator; random when absent (the result says which). */
  seed?: Seed;
  /** Pixels, multiples of the VAE's factor (default: the model's trained size or 512; the init image's size). */
  width?: number;
  height?: number;
  /** Images generated together (default 1). */
  batchSize?: number;
  onProgress?: (progress: Progress) => unknown;
  /**
   * Told what the run does differently from what was asked (a prompt past a BERT model's 77 tokens is cut, as
   * scripts/txt2img.py cuts it). Default console.warn.
   */
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
  /** Decode the step's x̂₀ every this many steps into `Progress.preview` (a full VAE decode each time). */
  preview?: number;
  /** Low memory: the guidance halves as two UNet calls of the batch instead of one of twice the batch. */
  sequentialCfg?: boolean;
  /** Low memory: decode in overlapping latent tiles (true: DEFAULT_VAE_TILES), blended; see decodeTiled. */
  vaeTiling?: VaeTiling;
  /**
   * Low memory: the UNet on overlapping latent crops blended as upstream's split_input_params (split-input.ts),
   * its memory that of one crop. Default: one UNet call on the whole latent.
   */
  splitInput?: SplitInput;
}

export interface Img2ImgOptions extends GenerateOptions {
  initImage: RgbaImage;
  /** How much of the schedule runs: 1 = from pure noise; int(strength·steps) steps run. Default 0.75. */
  strength?: number;
}

export interface InpaintOptions extends GenerateOptions {
  initImage: RgbaImage;
  /** Same size as the image; white (luma ≥ 128) is repainted, black kept. */
  mask: RgbaImage;
  /** Default 1 (the masked part from pure noise). */
  strength?: number;
}

/** What conditions a LatentDiffusion besides a prompt; which one a model takes depends on its cond stage. */
export interface ConditioningOptions {
  /** ClassEmbedder models: the class (0 ≤ label < n_classes; cin256-v2's last, 1000, is "no class"). */
  classLabel?: number;
  /** ClassEmbedder models: the class of guidance's unconditional half (default: the config's "no class"). */
  uncondClassLabel?: number;
  /**
   * SpatialRescaler models (semantic synthesis): a class index per pixel at the output size, made one-hot over
   * the model's classes as upstream's datasets do (np.eye(n_labels)[segmentation]).
   */
  segmentation?: SegmentationMap;
  /** Identity (super-resolution) models: the low-resolution image, at the latent's size (upscale() sets it). */
  lowRes?: RgbaImage;
  /**
   * Layout models (a BERTEmbedder without tokenizer, layout2img): the objects, each a class index and a box in
   * image fractions; guidance's unconditional half is the empty layout.
   */
  layout?: readonly LayoutObject[];
}

export interface SegmentationMap {
  width: number;
  height: number;
  /** Class index per pixel, row-major (readSegmentationPng reads one from an index or palette PNG). */
  labels: Uint8Array | Uint16Array | Int32Array;
}

/** Options of a LatentDiffusion generation: a prompt only for text models. */
export type LdmGenerateOptions = Omit<GenerateOptions, "prompt"> & { prompt?: string };

export interface UpscaleOptions extends Omit<LdmGenerateOptions, "width" | "height" | "lowRes" | "splitInput"> {
  /** The low-resolution image, opaque (grey or RGB); the result is the first stage's factor (4) times larger. */
  image: RgbaImage;
  /**
   * The UNet on overlapping latent crops (split-input.ts); default the notebook's NOTEBOOK_SPLIT_INPUT (128
   * cells, stride 64), so an image within one crop (512 output pixels for VQ-f4) runs untiled; false: always
   * one UNet call on the whole latent.
   */
  splitInput?: SplitInput | false;
}

/** Super-resolution as ldm/notebook_helpers.py samples it: DDIM with eta 1 (its custom_steps default 100). */
export const UPSCALE_DEFAULTS = { steps: 100, eta: 1 };

export interface LossOptions extends ConditioningOptions {
  image: RgbaImage;
  prompt?: string;
  /** The paper's inpainting model: the region to fill (white), as inpaint() takes it. */
  mask?: RgbaImage;
  /** The training timestep, an integer in [0, T). */
  t: number;
  /** Seeds the latent sample and ε (default 0). */
  seed?: Seed;
}

export interface LossResult {
  /** loss_simple: the mean distance of the prediction from the target, squared (l2) or absolute (l1). */
  loss: number;
  /** The config's loss_type. */
  lossType: "l1" | "l2";
  t: number;
  /** What the prediction was compared with: ε or v, as the model predicts. */
  target: "eps" | "v";
  seed: Seed;
}

export interface GenerationResult {
  images: RgbaImage[];
  /** The clean latents z₀ (scaled by the config's scale_factor, as the UNet sees them), [B, C, h, w]. */
  latents: Float32Array;
  latentShape: number[];
  seed: Seed;
  /** Per image: what regenerates it. */
  parameters: GenerationParameters[];
  /** Sampling includes the text encoder; decoding is the VAE and the conversion to RGBA. */
  timings: { samplingMs: number; decodeMs: number };
}

export interface LdmNetworks {
  config: LdmConfig;
  unet: UNetModel;
  /** The first stage: AutoencoderKL or VQModel. */
  vae: AutoencoderKL;
  /** The CLIP text encoder of text models. */
  clip?: CLIPTextModel;
  /** The cond stage network of ClassEmbedder / SpatialRescaler models. */
  cond?: CondStageModel;
  /** Whether the UNet holds the checkpoint's EMA copy (`model_ema.*`), as load() chose it. */
  ema?: boolean;
}

export { PipelineOptionError };

/**
 * The devices of pipelines made by load(), destroyed when their pipeline is garbage-collected without
 * dispose(): otherwise each dropped pipeline keeps its weights on the GPU until the process ends. The device
 * holds no reference to its pipeline, so holding the device here does not keep the pipeline alive.
 */
const OWNED_DEVICES = new FinalizationRegistry<Device>((device) => device.destroy());

/**
 * Guidance past this multiplies cond − uncond so much that the latents leave any range the UNet saw (at 1e38
 * they overflow float32); AUTOMATIC1111's slider stops at 30.
 */
export const MAX_GUIDANCE_SCALE = 50;

/** A prompt's ids as the text encoder takes them: `chunks` × the context, with an emphasis weight per id. */
export interface PromptTokens {
  ids: Int32Array;
  weights: Float32Array;
  chunks: number;
  /** Tokens cut off because the text stage takes no more (BERT models; CLIP prompts are chunked instead). */
  truncated: number;
  /** The textual-inversion embeddings the prompt uses, by trigger word. */
  embeddings: string[];
}

const DEFAULTS = { ...SAMPLING_DEFAULTS, size: 512, strength: 0.75 };

export class LatentDiffusion {
  readonly schedule: NoiseSchedule;
  private readonly padWith: PadWith;
  private readonly parameters: number;
  private merged?: MergedLoras;
  /** CLIP models: the textual-inversion embeddings prompts can use. */
  private readonly embeddingSet?: EmbeddingSet;

  protected constructor(
    readonly device: Device,
    readonly networks: LdmNetworks,
    /** The text models' tokenizer: CLIP's, or BERT's WordPiece for BERTEmbedder models. */
    readonly tokenizer: ClipTokenizer | BertTokenizer | undefined,
    /** The checkpoint's file or folder name, recorded in the parameters. */
    readonly name: string,
    private readonly ownsDevice: boolean,
    /** The latent scale: the config's scale_factor, or the checkpoint's buffer with scale_by_std. */
    readonly scaleFactor = networks.config.scale_factor,
    /**
     * Bytes of GPU memory a request may need (estimateMemory), checked before any work; undefined: unchecked,
     * as WebGPU does not say how much memory a GPU has. load() sets it on CPU adapters (lavapipe,
     * SwiftShader), whose memory is the system's: 3/4 of it.
     */
    public memoryLimit?: number,
  ) {
    this.parameters = parameterCount(networks.config);
    const { config } = networks;
    this.schedule = NoiseSchedule.create({
      timesteps: config.timesteps,
      linearStart: config.linear_start,
      linearEnd: config.linear_end,
    });
    this.padWith = config.text?.pad_token_id === 0 ? "zero" : "end";
    if (ownsDevice) OWNED_DEVICES.register(this, device, this);
    if (this.prompted === "bert" && !(tokenizer instanceof BertTokenizer)) {
      throw new Error("a BERTEmbedder text model needs BERT's WordPiece tokenizer");
    }
    if (!config.text) return;
    if (!tokenizer || tokenizer instanceof BertTokenizer) throw new Error("a CLIP text model needs CLIP's tokenizer");
    // SD1's CLIP pads with its end token, SD2's OpenCLIP with id 0; the tokenizer knows the end token's id.
    const vocabulary = config.text.vocab_size;
    if (tokenizer.endId >= vocabulary || tokenizer.startId >= vocabulary) {
      throw new Error(
        `the tokenizer's start/end ids (${tokenizer.startId}/${tokenizer.endId}) are outside the text encoder's vocabulary of ${vocabulary}: pass the model's own vocabulary with --vocab`,
      );
    }
    const { hidden_size, max_position_embeddings } = config.text;
    this.embeddingSet = new EmbeddingSet(tokenizer, vocabulary, hidden_size, max_position_embeddings - 2);
  }

  /**
   * A checkpoint (single .safetensors or .ckpt/.pt file, or diffusers folder) with its tokenizer, in Node. The
   * file loaders are imported here, and browser builds swap them for a stub (see ./node-files.ts), so browsers
   * can import this module and build a pipeline with fromNetworks().
   */
  static async load(path: string, options: LoadOptions = {}): Promise<LatentDiffusion> {
    const loaded = await LatentDiffusion.loadParts(path, options);
    return new LatentDiffusion(...loaded);
  }

  /** What load() builds a pipeline from (StableDiffusion.load checks it is a text model first). */
  protected static async loadParts(
    path: string,
    options: LoadOptions,
    check: (config: LdmConfig) => void = () => {},
  ): Promise<
    [Device, LdmNetworks, ClipTokenizer | BertTokenizer | undefined, string, boolean, number, number | undefined]
  > {
    const requested = options.dtype ?? "f32";
    const { companionFiles, loadBertTokenizer, loadClipTokenizer, loadModel, systemMemory } = await import(
      "#node-files"
    );
    const files = companionFiles(path, { config: options.config, vocab: options.vocab });
    const device =
      options.device ?? (await Device.create({ disableF16: requested === "f32", cpuLanes: options.cpuLanes }));
    const dtype =
      requested === "auto"
        ? defaultDtype({ isCpu: device.info.isCpu, shaderF16: device.features.shaderF16 })
        : requested;
    try {
      const loaded = await loadModel(path, {
        device,
        dtype,
        config: files.config,
        ema: options.ema,
        variant: options.variant,
        check,
      });
      const { config, unet, vae, clip, cond } = loaded;
      if (!unet || !vae) throw new Error("internal: loadModel did not build every network");
      const bert = config.cond_stage?.target === "BERTEmbedder" && config.cond_stage.use_tokenizer;
      const tokenizer = config.text
        ? loadClipTokenizer({ vocab: files.vocab, model: path }).tokenizer
        : bert
          ? loadBertTokenizer(files.vocab).tokenizer
          : undefined;
      const name =
        options.name ??
        path
          .replace(/[\\/]+$/, "")
          .split(/[\\/]/)
          .pop() ??
        path;
      const memoryLimit = device.info.isCpu ? Math.floor(systemMemory() * 0.75) : undefined;
      const networks = { config, unet, vae, clip, cond, ema: loaded.ema };
      return [device, networks, tokenizer, name, !options.device, loaded.scaleFactor, memoryLimit];
    } catch (e) {
      if (!options.device) device.destroy();
      throw e;
    }
  }

  /**
   * A pipeline over networks loaded elsewhere (a browser's loader); the caller keeps the device. `scaleFactor`:
   * the loader's (LoadedModel.scaleFactor: the checkpoint's buffer for scale_by_std), default the config's.
   */
  static fromNetworks(
    networks: LdmNetworks,
    tokenizer: ClipTokenizer | BertTokenizer | undefined,
    name: string,
    scaleFactor = networks.config.scale_factor,
  ): LatentDiffusion {
    return new LatentDiffusion(networks.unet.vb.device, networks, tokenizer, name, false, scaleFactor);
  }

  get config(): LdmConfig {
    return this.networks.config;
  }

  /** How the cond stage's output enters the UNet; null: unconditional. */
  get conditioningKey() {
    return conditioningKey(this.config);
  }

  get dtype(): ParamDType {
    return this.networks.unet.vb.dtype;
  }

  /** Pixels per side when none are asked for: the size the model was trained at if known, else 512. */
  get defaultSize(): number {
    const latent = this.config.image_size;
    return latent === undefined ? DEFAULTS.size : latent * this.networks.vae.downscale;
  }

  /** Whether the UNet takes a mask and masked-image latents besides the latents (SD's 9 channels, LDM's 7). */
  get isInpainting(): boolean {
    return this.config.inpainting;
  }

  private get latentChannels(): number {
    return this.config.vae.embed_dim;
  }

  /** The BERTEmbedder's configuration, where the cond stage is one. */
  private get bert(): BertEmbedderConfig | undefined {
    const stage = this.config.cond_stage;
    return stage?.target === "BERTEmbedder" ? stage : undefined;
  }

  /** What the model is conditioned on (prompt, layout, class, segmentation map, low-res image, mask). */
  get inputs(): ModelInputs {
    return modelInputs(this.config);
  }

  /** What the cond stage reads: a prompt (CLIP's or BERT's tokens), a layout, or neither. */
  get prompted(): Prompted {
    return this.inputs.prompted;
  }

  /** Whether the cond stage reads a text prompt (CLIP or BERT), which generation then requires. */
  get textPrompted(): boolean {
    return this.prompted === "clip" || this.prompted === "bert";
  }

  /** Guidance by default: SD's 7.5, scripts/txt2img.py's 5.0 for BERT text models, else none (1). */
  get defaultGuidanceScale(): number {
    return this.inputs.guidanceScale;
  }

  /** The LoRAs merged into the weights (setLoras), with their multipliers. */
  get loras(): readonly LoraUse[] {
    return this.merged?.uses ?? [];
  }

  /**
   * Merges `uses` into the weights in place of the LoRAs merged before: each resolved against the model first
   * (one error lists every key that does not fit), then the weights they touched before are restored bit for
   * bit and the new ones merged. `[]` gives back the checkpoint's weights without reading it again.
   */
  async setLoras(uses: readonly LoraUse[]): Promise<void> {
    const { unet, clip } = this.networks;
    this.merged ??= new MergedLoras(new Map([...unet.vb.parameters, ...(clip?.vb.parameters ?? [])]), this.config);
    await this.merged.set(uses);
  }

  /**
   * A prompt as AUTOMATIC1111 reads it: emphasis weights, BREAK, and chunks of the encoder's context (77: start,
   * 75 tokens, end) as many as the prompt needs, padded, with a weight per id; checked against the vocabulary.
   * BERTEmbedder models read the text as scripts/txt2img.py gives it to BERT: one chunk of max_seq_len ids, the
   * rest truncated, no emphasis syntax.
   */
  tokenize(prompt: string, chunks = 1): PromptTokens {
    checkString("tokenize", "prompt", prompt);
    const { text } = this.config;
    const bert = this.bert;
    if (bert?.use_tokenizer && this.tokenizer instanceof BertTokenizer) {
      const { padded, truncated } = this.tokenizer.tokenize(prompt, { maxLength: bert.max_seq_len });
      const ids = Int32Array.from(padded);
      this.bertEncoder.checkIds(ids, `prompt ${JSON.stringify(prompt)}`);
      return { ids, weights: new Float32Array(ids.length).fill(1), chunks: 1, truncated, embeddings: [] };
    }
    if (!text || !this.tokenizer || this.tokenizer instanceof BertTokenizer) {
      throw new PipelineOptionError(`this model is ${describeCondStage(this.config)}: it takes no prompt`);
    }
    const { max_position_embeddings: length } = text;
    const vocabulary = text.vocab_size + (this.embeddingSet?.vectorCount ?? 0);
    const triggers = this.embeddingSet?.triggers;
    let chunked: ChunkedPrompt;
    try {
      chunked = chunkPrompt(this.tokenizer, prompt, { length, padWith: this.padWith, triggers });
    } catch (e) {
      if (e instanceof RangeError) throw new PipelineOptionError(e.message);
      throw e;
    }
    const { chunks: rows, triggers: embeddings } = chunked;
    // Padded to `chunks` with the empty prompt's chunk, as A1111 pads the shorter of cond and uncond.
    const empty = chunkPrompt(this.tokenizer, "", { length, padWith: this.padWith }).chunks[0];
    while (rows.length < chunks) rows.push(empty);
    const ids = Int32Array.from(rows.flatMap((c) => c.ids));
    const outside = ids.find((id) => id >= vocabulary);
    if (outside !== undefined) {
      throw new Error(
        `prompt ${JSON.stringify(prompt)} has token id ${outside}, outside the text encoder's vocabulary of ${vocabulary}: the tokenizer does not belong to this model`,
      );
    }
    const weights = Float32Array.from(rows.flatMap((c) => c.weights));
    return { ids, weights, chunks: rows.length, truncated: 0, embeddings };
  }

  /** The textual-inversion embeddings prompts can use (CLIP models), in the order of their vector ids. */
  get embeddings(): readonly TextualInversion[] {
    return this.embeddingSet?.list ?? [];
  }

  /** Embeddings from a folder that prompts may not use: their width is not the text encoder's. */
  get skippedEmbeddings(): readonly TextualInversion[] {
    return this.embeddingSet?.skipped ?? [];
  }

  /**
   * Makes textual-inversion embeddings available to prompts (A1111's): each occurrence of an embedding's name,
   * its trigger word, becomes its vectors. One of the same name replaces the earlier. An embedding of another
   * width than the text encoder's is refused, or, from a folder, set aside and refused when a prompt uses it.
   */
  addEmbeddings(embeddings: Iterable<TextualInversion>, origin: EmbeddingOrigin = "file"): void {
    const set = this.embeddingSet;
    if (!set) {
      throw new PipelineOptionError(`this model is ${describeCondStage(this.config)}: it takes no embeddings`);
    }
    for (const embedding of embeddings) set.add(embedding, origin);
    this.uploadEmbeddings();
  }

  /** Removes the named embeddings, or all of them. */
  removeEmbeddings(names?: readonly string[]): void {
    this.embeddingSet?.remove(names);
    this.uploadEmbeddings();
  }

  /**
   * Node: embedding files (.pt, .bin, .safetensors), and every one under a folder, as A1111's embeddings folder
   * (a file it cannot read is skipped with a warning, as A1111 skips it). Returns those read.
   */
  async loadEmbeddings(
    from: { files?: readonly string[]; dir?: string },
    onWarning: (message: string) => void = console.warn,
  ): Promise<TextualInversion[]> {
    const { embeddingFilesIn, readEmbeddingFile } = await import("#node-files");
    const added: TextualInversion[] = [];
    if (from.dir !== undefined) {
      for (const path of await embeddingFilesIn(from.dir)) {
        try {
          const embedding = await readEmbeddingFile(path);
          this.addEmbeddings([embedding], "folder");
          added.push(embedding);
        } catch (e) {
          onWarning(`embedding ${path} skipped: ${(e as Error).message}`);
        }
      }
    }
    for (const path of from.files ?? []) {
      const embedding = await readEmbeddingFile(path);
      this.addEmbeddings([embedding]);
      added.push(embedding);
    }
    return added;
  }

  private uploadEmbeddings(): void {
    const set = this.embeddingSet;
    const clip = this.networks.clip;
    if (!set || !clip) return;
    const count = set.vectorCount;
    const vectors = count ? Tensor.from(this.device, set.vectors(), [count, set.width]) : undefined;
    try {
      clip.setAddedTokens(vectors);
    } finally {
      vectors?.dispose();
    }
  }

  /**
   * Samples from noise: text-to-image for text models, a class for ClassEmbedder models, a segmentation map for
   * SpatialRescaler models, nothing for unconditional models (scripts/sample_diffusion.py).
   */
  async generate(options: LdmGenerateOptions): Promise<GenerationResult> {
    checkGenerateInputs(this.config.text ? "txt2img" : "generate", options, this.textPrompted);
    if (this.isInpainting) {
      throw new PipelineOptionError(
        "this is an inpainting model (its UNet takes a mask): use inpaint with an image and a mask",
      );
    }
    if (this.config.cond_stage?.target === "Identity" && !options.lowRes) {
      throw new PipelineOptionError("this is a super-resolution model: use upscale with a low-resolution image");
    }
    const segmentation = options.segmentation;
    if (segmentation !== undefined) checkSegmentationInput(segmentation);
    const f = this.networks.vae.downscale;
    const lowRes = options.lowRes;
    // A model without a SpatialRescaler refuses any map (in conditioning()), whatever its size.
    const map = this.config.cond_stage?.target === "SpatialRescaler" ? segmentation : undefined;
    if (map && (map.width % f || map.height % f)) {
      throw new PipelineOptionError(
        `the segmentation map is ${map.width}×${map.height}: its sides must be multiples of ${f} (the image's, for the first stage)`,
      );
    }
    const width = options.width ?? map?.width ?? (lowRes && lowRes.width * f) ?? this.defaultSize;
    const height = options.height ?? map?.height ?? (lowRes && lowRes.height * f) ?? this.defaultSize;
    const job = this.prepare(options, width, height);
    const xT = job.generator.randn(job.latentShape);
    return this.run(job, options, { xT });
  }

  /**
   * Super-resolution (bsr_sr) as ldm/notebook_helpers.py runs it: the image in [−1, 1] (ToTensor, 2c − 1) is the
   * c_concat of a latent its own size, sampled by DDIM (default 100 steps, eta 1) and decoded f× larger. Past one
   * UNet crop the UNet runs on overlapping crops (splitInput) and the first stage decodes in tiles
   * (DEFAULT_VAE_TILES unless vaeTiling says otherwise), so memory stays that of a crop and a tile.
   */
  async upscale(options: UpscaleOptions): Promise<GenerationResult> {
    if (this.config.cond_stage?.target !== "Identity") {
      throw new PipelineOptionError(
        `this model is ${describeCondStage(this.config)}, not a super-resolution model (cond stage torch.nn.Identity on the low-resolution image)`,
      );
    }
    checkGenerateInputs("upscale", options, false);
    checkImageInput("upscale", "image", options.image);
    const { image } = options;
    const transparent = image.data.findIndex((v, i) => i % 4 === 3 && v !== 255);
    if (transparent >= 0) {
      const p = (transparent - 3) / 4;
      throw new PipelineOptionError(
        `the image has transparent pixels (alpha ${image.data[transparent]} at (${p % image.width}, ${Math.floor(p / image.width)})): super-resolution takes RGB; flatten it onto a background first`,
      );
    }
    const levels = this.config.unet.channel_mult.length - 1;
    const min = 2 ** levels;
    if (image.width < min || image.height < min) {
      throw new PipelineOptionError(
        `the image is ${image.width}×${image.height}, too small: this model upscales images of at least ${min}×${min} (its UNet halves the size ${levels} times)`,
      );
    }
    const f = this.networks.vae.downscale;
    if (image.width * f > MAX_SIDE || image.height * f > MAX_SIDE) {
      throw new PipelineOptionError(
        `the image is ${image.width}×${image.height}: its ${f}× upscale would pass ${MAX_SIDE} pixels a side (at most ${MAX_SIDE / f}×${MAX_SIDE / f})`,
      );
    }
    const split = options.splitInput === false ? undefined : (options.splitInput ?? NOTEBOOK_SPLIT_INPUT);
    if (split) {
      try {
        checkSplitInput(split);
      } catch (e) {
        throw new PipelineOptionError((e as Error).message);
      }
    }
    const tiled = split !== undefined && Math.max(image.width, image.height) > split.size;
    return this.generate({
      ...options,
      steps: options.steps ?? UPSCALE_DEFAULTS.steps,
      eta:
        options.eta ?? (options.sampler === undefined || options.sampler === "ddim" ? UPSCALE_DEFAULTS.eta : undefined),
      lowRes: image,
      splitInput: tiled ? split : undefined,
      vaeTiling: options.vaeTiling ?? tiled,
    });
  }

  /**
   * Diffusers' StableDiffusionImg2ImgPipeline order: the image is encoded once and its latent sampled with the
   * run's generator (as diffusers' retrieve_latents and the original get_first_stage_encoding do), repeated
   * over the batch and scaled, then the noise is drawn; the last int(strength·steps) steps run from it.
   */
  async img2img(
    options: Img2ImgOptions | (Omit<Img2ImgOptions, "prompt"> & { prompt?: string }),
  ): Promise<GenerationResult> {
    checkGenerateInputs("img2img", options, this.textPrompted);
    checkImageInput("img2img", "initImage", options.initImage);
    if (this.isInpainting) {
      throw new PipelineOptionError("this is an inpainting model (its UNet takes a mask): use inpaint with a mask");
    }
    const { width, height } = options.initImage;
    const job = this.prepare(options, options.width ?? width, options.height ?? height, options.initImage);
    const strength = options.strength ?? DEFAULTS.strength;
    const latents = await this.encodeLatents(rgbaToPixels([options.initImage]), job, job.batchSize);
    const xT = job.generator.randn(job.latentShape);
    return this.run(job, options, { xT, init: { latents }, strength });
  }

  /**
   * Inpainting UNets (9 channels) as diffusers' StableDiffusionInpaintPipeline and Stability's scripts: the
   * mask binarised at 0.5, c_concat = [mask resized nearest to the latent, latents of image·(mask < 0.5)]
   * (mask first), the same for both guidance halves. Draw order: init latents when strength < 1, the noise, the
   * masked-image latent. The paper's big inpainting model (7 channels, cond stage __is_first_stage__) as
   * scripts/inpaint.py: c_concat = [first stage's h of the image with masked pixels −1, mask in {−1, 1} resized
   * nearest], the images the prediction pasted into the init image where the mask is 1. Ordinary UNets: the init
   * latents kept outside the mask at every step (the original DDIM's x0/mask blending).
   */
  async inpaint(
    options: InpaintOptions | (Omit<InpaintOptions, "prompt"> & { prompt?: string }),
  ): Promise<GenerationResult> {
    checkGenerateInputs("inpaint", options, this.textPrompted);
    checkImageInput("inpaint", "initImage", options.initImage);
    checkImageInput("inpaint", "mask", options.mask);
    const { initImage, mask } = options;
    if (mask.width !== initImage.width || mask.height !== initImage.height) {
      throw new PipelineOptionError(
        `the mask is ${mask.width}×${mask.height}, the init image ${initImage.width}×${initImage.height}: they must match`,
      );
    }
    const job = this.prepare(options, options.width ?? initImage.width, options.height ?? initImage.height, initImage);
    const strength = options.strength ?? 1;
    const repaint = maskFromImage(mask);
    const [, , h, w] = job.latentShape;
    const latentMask = resizeNearest(repaint, job.height, job.width, h, w);
    const pixels = rgbaToPixels([initImage]);
    const needInit = !this.isInpainting || strength < 1;
    const latents = needInit ? await this.encodeLatents(pixels, job, job.batchSize) : undefined;
    const xT = job.generator.randn(job.latentShape);
    if (!this.isInpainting) {
      const keep = repeatPlane(
        latentMask.map((m) => 1 - m),
        job.latentShape,
      );
      return this.run(job, options, { xT, init: { latents: latents as Float32Array, keep }, strength });
    }
    const plane = job.width * job.height;
    if (this.config.cond_stage?.target === "__is_first_stage__") {
      // The paper's big inpainting model, as scripts/inpaint.py (masked-image.ts): masked pixels −1, the mask in
      // {−1, 1}; the result is the prediction pasted into the image where the mask is 1.
      const c = await this.maskedImageConcat(pixels, mask, job.width, job.height);
      const cConcat = concatChannels([c.data], [c.shape[1]], job.latentShape);
      const result = await this.run(job, options, { xT, cConcat, init: latents && { latents }, strength });
      return { ...result, images: result.images.map((image) => pasteRepainted(image, initImage, repaint)) };
    }
    const masked = pixels.map((v, i) => (repaint[i % plane] < 0.5 ? v : 0));
    const maskedLatents = await this.encodeLatents(masked, job, 1);
    const cConcat = concatChannels([latentMask, maskedLatents], [1, this.latentChannels], job.latentShape);
    return this.run(job, options, { xT, cConcat, init: latents && { latents }, strength });
  }

  /**
   * Classifier-free guided sampling from token ids and noise to clean latents: the context of [uncond; cond]
   * encoded once, one UNet call of batch 2B per model evaluation (B when guidanceScale is 1).
   */
  async sampleLatents(request: LatentRequest): Promise<Float32Array> {
    return sampleFromTokens({ ...this.networks, textEncoder: this.textEncoder }, this.schedule, request);
  }

  private get textEncoder(): TokenEncoder {
    if (this.prompted === "bert") return this.bertEncoder;
    const clip = this.networks.clip;
    if (!clip) throw new PipelineOptionError(`this model is ${describeCondStage(this.config)}: it takes no prompt`);
    return clip;
  }

  private get bertEncoder(): BERTEmbedder {
    const stage = this.networks.cond;
    if (!(stage instanceof BERTEmbedder)) throw new Error("internal: a BERTEmbedder model without its network");
    return stage;
  }

  /**
   * The text encoder's context for prompts, [N, k·L, D], k the most chunks any prompt needs (the others padded
   * with empty chunks), emphasis applied (the caller disposes it).
   */
  async encodeText(prompts: readonly string[], options: { clipSkip?: number } = {}): Promise<Tensor> {
    checkPromptList("encodeText", prompts);
    if (prompts.length > MAX_PROMPTS) {
      throw new PipelineOptionError(`encodeText: ${prompts.length} prompts; at most ${MAX_PROMPTS} per call`);
    }
    const chunks = Math.max(...prompts.map((p) => this.tokenize(p).chunks));
    const tokens = prompts.map((p) => this.tokenize(p, chunks));
    return encodeTokenRows(
      this.device,
      this.textEncoder,
      tokens.map((t) => t.ids),
      { weights: tokens.map((t) => t.weights), clipSkip: options.clipSkip },
    );
  }

  /**
   * L_simple of the original training objective at one timestep, without gradients (LatentDiffusion.p_losses'
   * loss_simple, loss.ts): the image encoded as get_input does (the latent sampled with the generator, scaled),
   * noised by q_sample with ε drawn next, the UNet's prediction with the model's conditioning (a prompt, a class,
   * a low-resolution image at the latent's size, a segmentation map at the image's, the big inpainting model's mask
   * and masked image) compared with ε — or v for v-models — by the config's
   * loss_type (l2, or l1 for inpainting_big and LSUN-churches). The seed seeds both draws, as torch.manual_seed
   * before a training step.
   */
  async loss(options: LossOptions): Promise<LossResult> {
    if (typeof options !== "object" || options === null) checkGenerateInputs("loss", options);
    if (this.config.text) checkString("loss", "prompt", options.prompt);
    checkImageInput("loss", "image", options.image);
    const { image, t, mask } = options;
    if (this.isInpainting && this.config.cond_stage?.target !== "__is_first_stage__") {
      throw new PipelineOptionError("loss needs an ordinary UNet or the paper's inpainting model; this one is SD's");
    }
    if (this.isInpainting) checkImageInput("loss", "mask", mask);
    else if (mask !== undefined) throw new PipelineOptionError("this is not an inpainting model: it takes no mask");
    this.checkSize(image.width, image.height);
    const T = this.schedule.numTimesteps;
    if (!Number.isInteger(t) || t < 0 || t >= T)
      throw new PipelineOptionError(`t ${t}: must be an integer in [0, ${T})`);
    const seed = options.seed ?? 0;
    const generator = new Generator(seed);
    const pixels = rgbaToPixels([image]);
    const xStart = await this.encodeLatents(pixels, { width: image.width, height: image.height, generator }, 1);
    const f = this.networks.vae.downscale;
    const shape = [1, this.latentChannels, image.height / f, image.width / f];
    const noise = generator.randn(shape);
    const job = { batchSize: 1, guidanceScale: 1, width: image.width, height: image.height, latentShape: shape };
    const { context, cConcat } = mask
      ? { context: undefined, cConcat: (await this.maskedImageConcat(pixels, mask, image.width, image.height)).data }
      : await this.conditioning(options, job);
    try {
      const [loss] = await lossSimple(this.networks.unet, this.schedule, this.config, {
        xStart,
        shape,
        t,
        noise,
        context,
        cConcat,
      });
      return { loss, lossType: this.config.loss_type ?? "l2", t, target: this.config.parameterization, seed };
    } finally {
      context?.dispose();
    }
  }

  /** Scaled latents [B, C, h, w] → float pixels [B, 3, H, W] (nominally [−1, 1]). */
  async decodePixels(latents: Float32Array, latentShape: readonly number[], tiling?: VaeTiling): Promise<Float32Array> {
    const scale = this.scaleFactor;
    const pixels = await this.networks.vae.decodeToHost(
      latents.map((v) => v / scale),
      latentShape,
      tiling,
    );
    assertFinite("VAE decoder", pixels, " (its latents were finite)");
    return pixels;
  }

  /** Scaled latents → images. */
  async decode(latents: Float32Array, latentShape: readonly number[], tiling?: VaeTiling): Promise<RgbaImage[]> {
    const [b, , h, w] = latentShape;
    const f = this.networks.vae.downscale;
    return pixelsToRgba(await this.decodePixels(latents, latentShape, tiling), [b, 3, h * f, w * f]);
  }

  /**
   * Destroys the device when load() created it, freeing everything. The weights on a device passed in stay
   * until that device is destroyed (VarBuilder has no way to free them yet). A pipeline that load() made and
   * that is dropped without dispose() has its device destroyed when it is garbage-collected, as a backstop.
   */
  dispose(): void {
    OWNED_DEVICES.unregister(this);
    if (this.ownsDevice) this.device.destroy();
  }

  /** `await using pipe = await StableDiffusion.load(…)` disposes it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  /** Validates the options common to every method; makes the run's generator. */
  private prepare(options: LdmGenerateOptions, width: number, height: number, initImage?: RgbaImage): Job {
    const steps = options.steps ?? DEFAULTS.steps;
    const sampler = options.sampler ?? DEFAULTS.sampler;
    // Guidance needs an unconditional input: text and class models have one; the others sample unguided.
    const guidanceScale = options.guidanceScale ?? this.defaultGuidanceScale;
    const batchSize = options.batchSize ?? 1;
    let record: SamplerRecord;
    let schedule: SigmaScheduleName | undefined;
    try {
      record = samplerByName(sampler);
      schedule = sigmaScheduleOf(record, options.schedule);
    } catch (e) {
      throw new PipelineOptionError((e as Error).message);
    }
    if (!Number.isInteger(steps) || steps < 1) throw new PipelineOptionError(`steps ${steps}: must be an integer ≥ 1`);
    const { clipSkip } = options;
    const depth = this.config.text?.num_hidden_layers;
    if (clipSkip !== undefined && !(depth && Number.isInteger(clipSkip) && clipSkip >= 1 && clipSkip <= depth)) {
      throw new PipelineOptionError(
        depth
          ? `CLIP skip ${clipSkip}: must be an integer in [1, ${depth}] (the text encoder's layers)`
          : `this model is ${describeCondStage(this.config)}: it has no CLIP layers to skip`,
      );
    }
    if (!(guidanceScale >= 0 && guidanceScale <= MAX_GUIDANCE_SCALE)) {
      throw new PipelineOptionError(
        `guidance scale ${guidanceScale}: must be a number in [0, ${MAX_GUIDANCE_SCALE}] (usually 1–15; 1 skips the unconditional pass)`,
      );
    }
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH) {
      throw new PipelineOptionError(
        `batch size ${batchSize}: must be an integer in [1, ${MAX_BATCH}] (more images: several calls)`,
      );
    }
    if (steps > this.schedule.numTimesteps) {
      throw new PipelineOptionError(`steps ${steps}: at most the schedule's ${this.schedule.numTimesteps} timesteps`);
    }
    if (options.preview !== undefined && !(Number.isInteger(options.preview) && options.preview >= 1)) {
      throw new PipelineOptionError(`preview ${options.preview}: must be an integer ≥ 1 (every n steps)`);
    }
    this.checkSize(width, height);
    if (initImage && (initImage.width !== width || initImage.height !== height)) {
      throw new PipelineOptionError(
        `the init image is ${initImage.width}×${initImage.height}, the requested size ${width}×${height}: resize the image`,
      );
    }
    this.checkMemory(
      width,
      height,
      batchSize,
      guidanceScale !== 1 && !options.sequentialCfg,
      options.vaeTiling,
      options.splitInput?.size,
    );
    const f = this.networks.vae.downscale;
    const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
    return {
      steps,
      sampler,
      schedule,
      eta: options.eta ?? record.defaultEta,
      guidanceScale,
      batchSize,
      width,
      height,
      seed,
      generator: new Generator(seed),
      latentShape: [batchSize, this.latentChannels, height / f, width / f],
    };
  }

  /** Multiples of the VAE's factor (8); the UNet upsamples to its skip connections, so any latent size works. */
  private checkSize(width: number, height: number): void {
    const f = this.networks.vae.downscale;
    for (const [name, value] of [
      ["width", width],
      ["height", height],
    ] as const) {
      if (!Number.isInteger(value) || value < f || value % f) {
        throw new PipelineOptionError(`${name} ${value} must be a positive multiple of ${f}`);
      }
      if (value > MAX_SIDE) throw new PipelineOptionError(`${name} ${value}: at most ${MAX_SIDE} pixels`);
    }
  }

  /** Refuses a request whose estimated peak exceeds memoryLimit, naming a batch size or a setting that fits. */
  private checkMemory(
    width: number,
    height: number,
    batchSize: number,
    doubled: boolean,
    tiling?: VaeTiling,
    unetCrop?: number,
  ): void {
    const limit = this.memoryLimit;
    if (limit === undefined) return;
    const tiles = tiling === true ? DEFAULT_VAE_TILES : tiling || undefined;
    const rows = doubled ? 2 : 1;
    const estimate = (batch: number, rowsPerImage: number, t?: TileOptions) =>
      estimateMemory(this.config, this.parameters, {
        width,
        height,
        batchSize: batch,
        unetRows: batch * rowsPerImage,
        dtype: this.dtype,
        tiles: t,
        unetCrop,
      });
    const need = estimate(batchSize, rows, tiles);
    if (need.total <= limit) return;
    const fits: string[] = [];
    let batch = batchSize - 1;
    while (batch >= 1 && estimate(batch, rows, tiles).total > limit) batch--;
    if (batch >= 1) fits.push(`a batch size of ${batch}`);
    if (!tiles && estimate(batchSize, rows, DEFAULT_VAE_TILES).total <= limit) fits.push("VAE tiling (--vae-tiling)");
    if (doubled && estimate(batchSize, 1, tiles).total <= limit) fits.push("sequential guidance (--sequential-cfg)");
    const f = this.networks.vae.downscale;
    throw new PipelineOptionError(
      `${width}×${height}, batch ${batchSize} needs about ${gib(need.total)} of GPU memory (weights ${gib(need.weights)}, UNet ${gib(need.unet)} for ${batchSize * rows} rows of ${width / f}×${height / f} latents, VAE decode ${gib(need.vae)}), more than the ${gib(limit)} limit: ${fits.length ? `${fits.join(" or ")} fits` : "a smaller size is needed"}`,
    );
  }

  /** The big inpainting model's c_concat for an image's pixels [1, 3, H, W] and its mask (white: fill). */
  private async maskedImageConcat(pixels: Float32Array, mask: RgbaImage, width: number, height: number) {
    if (mask.width !== width || mask.height !== height) {
      throw new PipelineOptionError(
        `the mask is ${mask.width}×${mask.height}, the image ${width}×${height}: they must match`,
      );
    }
    const repaint = maskFromImage(mask);
    const plane = width * height;
    return maskedImageConcat(
      this.networks.vae,
      { data: pixels.map((v, i) => (repaint[i % plane] < 0.5 ? v : -1)), shape: [1, 3, height, width] },
      { data: repaint.map((m) => 2 * m - 1), shape: [1, 1, height, width] },
    );
  }

  /**
   * Pixels [1, 3, H, W] → the first stage's latent (KL: sampled with the run's generator), scaled, repeated
   * `copies` times.
   */
  private async encodeLatents(
    pixels: Float32Array,
    job: Pick<Job, "width" | "height" | "generator">,
    copies: number,
  ): Promise<Float32Array> {
    const input = Tensor.from(this.device, pixels, [1, 3, job.height, job.width]);
    try {
      const scale = this.scaleFactor;
      const latent = (await this.networks.vae.encodeLatent(input, job.generator)).map((v) => v * scale);
      assertFinite("VAE encoder", latent);
      const out = new Float32Array(latent.length * copies);
      for (let i = 0; i < copies; i++) out.set(latent, i * latent.length);
      return out;
    } finally {
      input.dispose();
    }
  }

  /**
   * The cond stage's conditioning for a run (LatentDiffusion.get_learned_conditioning, and with guidance the
   * unconditional rows first): a CLIP context of the prompts, a class embedding, or c_concat (host).
   */
  protected async conditioning(
    options: LdmGenerateOptions,
    job: Pick<Job, "batchSize" | "guidanceScale" | "width" | "height" | "latentShape">,
  ): Promise<{ context?: Tensor; cConcat?: Float32Array; embeddings?: string[] }> {
    const config = this.config;
    const guide = job.guidanceScale !== 1;
    const rows = <T>(cond: T, uncond: T): T[] => [
      ...(guide ? Array(job.batchSize).fill(uncond) : []),
      ...Array(job.batchSize).fill(cond),
    ];
    const takes = (what: string, given: unknown, option?: keyof LdmGenerateOptions) => {
      if (given !== undefined)
        throw new PipelineOptionError(`this model is ${describeCondStage(config)}: it takes no ${what}`, option);
    };
    if (config.cond_stage?.target !== "ClassEmbedder") takes("class label", options.classLabel, "classLabel");
    if (config.cond_stage?.target !== "ClassEmbedder") {
      takes("unconditional class", options.uncondClassLabel, "uncondClassLabel");
    }
    if (config.cond_stage?.target !== "SpatialRescaler") takes("segmentation map", options.segmentation);
    if (config.cond_stage?.target !== "Identity") takes("low-resolution image", options.lowRes);
    if (this.prompted !== "layout") takes("layout", options.layout);
    if (this.prompted === "layout") {
      takes("prompt", options.prompt);
      takes("negative prompt", options.negativePrompt);
      const { vocab_size, max_seq_len } = this.bert as BertEmbedderConfig;
      const builder = LayoutBuilder.forCondStage(vocab_size, max_seq_len);
      if (!options.layout) {
        throw new PipelineOptionError(
          "this is a layout-to-image model: it needs a layout (objects with a class and a box)",
        );
      }
      let cond: Int32Array;
      try {
        cond = Int32Array.from(builder.build(options.layout));
      } catch (e) {
        throw new PipelineOptionError((e as Error).message);
      }
      const uncond = Int32Array.from(builder.build([]));
      return { context: await encodeTokenRows(this.device, this.bertEncoder, rows(cond, uncond)) };
    }
    if (this.prompted) {
      // As A1111, the prompt's <lora:…> tags are read (they must name merged LoRAs) and taken out; the negative
      // prompt's are text.
      const prompt = this.checkLoraTags(options.prompt ?? "");
      const negative = options.negativePrompt ?? "";
      const chunks = Math.max(this.tokenize(prompt).chunks, guide ? this.tokenize(negative).chunks : 1);
      const cond = this.tokenize(prompt, chunks);
      const uncond = this.tokenize(negative, chunks);
      const warn = options.onWarning ?? console.warn;
      const used = guide
        ? ([
            ["prompt", cond],
            ["negative prompt", uncond],
          ] as const)
        : ([["prompt", cond]] as const);
      for (const [what, tokens] of used) {
        if (tokens.truncated) {
          const length = (this.bert as BertEmbedderConfig).max_seq_len;
          warn(
            `the ${what} is ${tokens.truncated} token${tokens.truncated === 1 ? "" : "s"} past this model's ${length} (with [CLS] and [SEP]): they are dropped`,
          );
        }
      }
      const context = await encodeTokenRows(this.device, this.textEncoder, rows(cond.ids, uncond.ids), {
        weights: rows(cond.weights, uncond.weights),
        clipSkip: options.clipSkip,
      });
      return { context, embeddings: [...new Set(used.flatMap(([, tokens]) => tokens.embeddings))] };
    }
    takes("prompt", options.prompt, "prompt");
    if (options.negativePrompt) takes("negative prompt", options.negativePrompt, "negativePrompt");
    const stage = this.networks.cond;
    if (config.cond_stage?.target === "ClassEmbedder" && stage instanceof ClassEmbedder) {
      const classes = config.cond_stage.n_classes;
      const label = checkClass("class", options.classLabel, classes, "classLabel");
      if (!guide && options.uncondClassLabel !== undefined) {
        throw new PipelineOptionError(
          `unconditional class ${options.uncondClassLabel}: it is guidance's, and guidance scale 1 runs no unconditional pass; set a guidance scale`,
          "uncondClassLabel",
        );
      }
      const unconditional = options.uncondClassLabel ?? config.cond_stage.unconditional_class;
      if (guide && unconditional === undefined) {
        throw new PipelineOptionError(
          `this model's ClassEmbedder has ${classes} classes and no "no class" (its config sets no n_classes): guidance needs an unconditional class (uncondClassLabel), or use guidance scale 1`,
          "uncondClassLabel",
        );
      }
      const uncond = guide ? checkClass("unconditional class", unconditional, classes, "uncondClassLabel") : label;
      const ids = Tensor.from(this.device, Int32Array.from(rows(label, uncond)), [rows(0, 0).length], "i32");
      try {
        return { context: stage.forward(ids) };
      } finally {
        ids.dispose();
      }
    }
    if (guide) {
      throw new PipelineOptionError(
        `this model is ${describeCondStage(config)}: classifier-free guidance needs an unconditional input it has none of (use guidance scale 1)`,
      );
    }
    const [, , h, w] = job.latentShape;
    if (config.cond_stage?.target === "SpatialRescaler" && stage instanceof SpatialRescaler) {
      const map = options.segmentation;
      if (!map) throw new PipelineOptionError("this is a semantic synthesis model: it needs a segmentation map");
      const onehot = oneHot(map, config.cond_stage.in_channels, job.width, job.height);
      const input = Tensor.from(this.device, onehot, [1, config.cond_stage.in_channels, job.height, job.width]);
      const out = stage.forward(input);
      try {
        if (out.shape[2] !== h || out.shape[3] !== w) {
          throw new PipelineOptionError(
            `the segmentation map rescales to ${out.shape[3]}×${out.shape[2]}, the latent is ${w}×${h}: the model's SpatialRescaler does not fit this size`,
          );
        }
        const channels = out.shape[1];
        return { cConcat: concatChannels([await out.toFloat32()], [channels], job.latentShape) };
      } finally {
        input.dispose();
        out.dispose();
      }
    }
    if (config.cond_stage?.target === "Identity") {
      const image = options.lowRes;
      if (!image) throw new PipelineOptionError("this is a super-resolution model: it needs a low-resolution image");
      if (image.width !== w || image.height !== h) {
        throw new PipelineOptionError(
          `the low-resolution image is ${image.width}×${image.height}; this model upscales ${w}×${h} to ${job.width}×${job.height}`,
        );
      }
      return { cConcat: concatChannels([rgbaToPixels([image])], [3], job.latentShape) };
    }
    return {};
  }

  /** The prompt without its `<lora:…>` tags, once each tag is found among the merged LoRAs at its multipliers. */
  private checkLoraTags(prompt: string): string {
    for (const tag of loraTags(prompt)) {
      const use = this.loras.find((u) => [u.name, u.lora.name, u.lora.alias].includes(tag.name));
      const unet = tag.unetStrength ?? tag.strength;
      if (!use || use.strength !== tag.strength || (use.unetStrength ?? use.strength) !== unet) {
        throw new PipelineOptionError(
          `the prompt's ${tag.text} is not merged into the weights${use ? ` at those multipliers (${use.strength}, ${use.unetStrength ?? use.strength})` : ""}: setLoras first (ldm looks the name up in --lora-dir)`,
        );
      }
    }
    return withoutLoraTags(prompt);
  }

  private async run(
    job: Job,
    options: LdmGenerateOptions,
    start: { xT: Float32Array; init?: InitLatents; strength?: number; cConcat?: Float32Array },
  ): Promise<GenerationResult> {
    try {
      return await this.runChecked(job, options, start);
    } catch (e) {
      if (e instanceof NonFiniteLatentsError) {
        throw new NonFiniteError("UNet", `${e.message}: ${this.nonFiniteCause("UNet", job.guidanceScale)}`);
      }
      if (e instanceof NonFiniteError)
        throw new NonFiniteError(e.stage, `${e.message}: ${this.nonFiniteCause(e.stage)}`);
      throw e;
    }
  }

  /** What likely made a stage's output NaN or infinite, for the error: no image is better than a black one. */
  private nonFiniteCause(stage: NonFiniteError["stage"], guidanceScale?: number): string {
    const causes: string[] = [];
    if (guidanceScale !== undefined && Math.abs(guidanceScale) > 30) {
      causes.push(`the guidance scale ${guidanceScale} is far past the usual 1–15`);
    }
    if (this.dtype === "f16") causes.push(`the ${stage} overflowed in f16 (run in f32)`);
    causes.push(`the checkpoint holds NaN/Inf weights (ldm info --check ${this.name} scans them)`);
    return `likely ${causes.join(", or ")}`;
  }

  private async runChecked(
    job: Job,
    options: LdmGenerateOptions,
    start: { xT: Float32Array; init?: InitLatents; strength?: number; cConcat?: Float32Array },
  ): Promise<GenerationResult> {
    const negativePrompt = options.negativePrompt ?? "";
    const samplingStart = performance.now();
    const conditioning = await this.conditioning(options, job);
    const embeddings = conditioning.embeddings ?? [];
    let latents: Float32Array;
    try {
      latents = await sampleConditioned(this.networks, this.schedule, {
        context: conditioning.context,
        contextStage: this.config.text ? "text encoder" : "cond stage",
        xT: start.xT,
        latentShape: job.latentShape,
        sampler: job.sampler,
        schedule: job.schedule,
        steps: job.steps,
        guidanceScale: job.guidanceScale,
        eta: job.eta,
        generator: job.generator,
        init: start.init,
        strength: start.strength,
        cConcat: start.cConcat ?? conditioning.cConcat,
        signal: options.signal,
        onStep: options.onProgress && (async (info) => this.progress(info, options, job, samplingStart)),
        sequentialCfg: options.sequentialCfg,
        splitInput: options.splitInput,
      });
    } finally {
      conditioning.context?.dispose();
    }
    const decodeStart = performance.now();
    const images = await this.decode(latents, job.latentShape, options.vaeTiling);
    // The pool's free buffers back, as A1111 empties torch's cache after a job (DeviceOptions.releaseMemory): the
    // decode leaves its large maps' buffers free, and the next run's UNet calls would make their own beside them.
    if (this.device.pool.releasesMemory) this.device.pool.trim();
    const done = performance.now();
    const parameters = images.map(
      (_, batchIndex): GenerationParameters => ({
        prompt: options.prompt ?? "",
        negativePrompt,
        seed: String(job.generator.initialSeed()),
        sampler: job.sampler,
        steps: job.steps,
        guidanceScale: job.guidanceScale,
        ...(job.schedule === samplerByName(job.sampler).schedules[0] ? {} : { schedule: job.schedule }),
        eta: job.eta,
        ...(options.clipSkip === undefined ? {} : { clipSkip: options.clipSkip }),
        width: job.width,
        height: job.height,
        batchSize: job.batchSize,
        batchIndex,
        ...(options.classLabel === undefined ? {} : { classLabel: options.classLabel }),
        ...(options.uncondClassLabel === undefined ? {} : { uncondClassLabel: options.uncondClassLabel }),
        ...(options.layout === undefined ? {} : { layout: options.layout.map((o) => ({ ...o, box: [...o.box] })) }),
        model: this.name,
        dtype: this.dtype,
        ...(start.init || start.cConcat ? { strength: start.strength } : {}),
        ...(this.loras.length ? { loras: this.loras.map(loraParameters) } : {}),
        ...(embeddings.length ? { embeddings: this.embeddingSet?.hashes(embeddings) } : {}),
      }),
    );
    return {
      images,
      latents,
      latentShape: [...job.latentShape],
      seed: job.seed,
      parameters,
      timings: {
        samplingMs: decodeStart - samplingStart,
        decodeMs: done - decodeStart,
      },
    };
  }

  private async progress(info: StepInfo, options: LdmGenerateOptions, job: Job, start: number): Promise<void> {
    const every = options.preview;
    const wantPreview = every !== undefined && ((info.step + 1) % every === 0 || info.step === info.steps - 1);
    const preview = wantPreview ? await this.decode(info.denoised, job.latentShape, options.vaeTiling) : undefined;
    await options.onProgress?.({
      step: info.step,
      steps: info.steps,
      t: info.t,
      elapsedMs: performance.now() - start,
      preview,
      denoised: info.denoised,
    });
  }
}

interface Job {
  steps: number;
  sampler: SamplerName;
  schedule?: SigmaScheduleName;
  eta: number;
  guidanceScale: number;
  batchSize: number;
  width: number;
  height: number;
  seed: Seed;
  generator: Generator;
  latentShape: number[];
}

/** One [h, w] plane repeated over [B, C, h, w]. */
function repeatPlane(plane: Float32Array, shape: readonly number[]): Float32Array {
  const [b, c] = shape;
  const out = new Float32Array(b * c * plane.length);
  for (let i = 0; i < b * c; i++) out.set(plane, i * plane.length);
  return out;
}

/** Per-item tensors [1, c_k, h, w] (host) joined along channels and repeated over the batch of `shape`. */
function concatChannels(parts: Float32Array[], channels: number[], shape: readonly number[]): Float32Array {
  const [b, , h, w] = shape;
  const item = new Float32Array(channels.reduce((a, c) => a + c, 0) * h * w);
  let at = 0;
  parts.forEach((part, k) => {
    item.set(part.subarray(0, channels[k] * h * w), at);
    at += channels[k] * h * w;
  });
  const out = new Float32Array(b * item.length);
  for (let i = 0; i < b; i++) out.set(item, i * item.length);
  return out;
}

/** A class label checked against the ClassEmbedder's table. */
function checkClass(
  what: string,
  label: number | undefined,
  classes: number,
  option: "classLabel" | "uncondClassLabel",
): number {
  if (label === undefined)
    throw new PipelineOptionError(`this is a class-conditional model: give a ${what} (0 to ${classes - 1})`, option);
  if (!Number.isInteger(label) || label < 0 || label >= classes) {
    throw new PipelineOptionError(
      `${what} ${label} is out of range: this model has classes 0 to ${classes - 1}`,
      option,
    );
  }
  return label;
}

/** A segmentation map as the one-hot [C, H, W] float planes the SpatialRescaler takes (ldm.data's one-hot). */
function oneHot(map: SegmentationMap, classes: number, width: number, height: number): Float32Array {
  if (map.width !== width || map.height !== height) {
    throw new PipelineOptionError(
      `the segmentation map is ${map.width}×${map.height}, the output ${width}×${height}: they must match`,
    );
  }
  const plane = width * height;
  const out = new Float32Array(classes * plane);
  for (let p = 0; p < plane; p++) {
    const label = map.labels[p];
    if (label >= classes) {
      let most = 0;
      for (const l of map.labels) most = Math.max(most, l);
      throw new PipelineOptionError(
        `the segmentation map has class ${label} at (${p % width}, ${Math.floor(p / width)}): this model has ${classes} classes (0 to ${classes - 1}), the map's ids go up to ${most}`,
      );
    }
    out[label * plane + p] = 1;
  }
  return out;
}
