import {
  DEFAULT_GUIDANCE,
  decodeLabelPng,
  encodePng,
  type GenerationResult,
  type LatentDiffusion,
  type LayoutObject,
  type LdmGenerateOptions,
  type Lora,
  type LoraUse,
  loraFromBlob,
  type ModelInputs,
  modelInputs,
  PARAMETERS_KEYWORD,
  PipelineOptionError,
  parametersText,
  parseLayout,
  type RgbaImage,
  SAMPLER_NAMES,
  SAMPLING_DEFAULTS,
  type SamplerName,
  type Seed,
  type SegmentationMap,
} from "@ldm/ldm";
import { type Device, DeviceLostError, defaultDtype, GpuOutOfMemoryError, type ParamDType } from "@ldm/tensor";
import { explain, ModelError } from "./errors.ts";
import { createDevice } from "./gpu.ts";
import { describeLocalModel, type LoadedPipeline, type LoadTarget, loadBuiltinModel, loadLocalModel } from "./model.ts";

const element = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  form: element<HTMLFormElement>("controls"),
  files: element<HTMLInputElement>("model-files"),
  useBuiltin: element<HTMLButtonElement>("use-builtin"),
  modelLabel: element("model-label"),
  modelKind: element("model-kind"),
  precision: element<HTMLSelectElement>("precision"),
  promptInputs: element("prompt-inputs"),
  prompt: element<HTMLTextAreaElement>("prompt"),
  negative: element<HTMLInputElement>("negative"),
  loraInputs: element("lora-inputs"),
  loraFiles: element<HTMLInputElement>("lora-files"),
  loraList: element("lora-list"),
  classInputs: element("class-inputs"),
  classLabel: element<HTMLSelectElement>("class-label"),
  uncondClass: element<HTMLSelectElement>("uncond-class"),
  layoutInputs: element("layout-inputs"),
  layout: element<HTMLTextAreaElement>("layout"),
  upscaleInputs: element("upscale-inputs"),
  lowRes: element<HTMLInputElement>("low-res"),
  lowResCanvas: element<HTMLCanvasElement>("low-res-canvas"),
  segmentationInputs: element("segmentation-inputs"),
  segmentation: element<HTMLInputElement>("segmentation"),
  segmentationInfo: element("segmentation-info"),
  segmentationMap: element("segmentation-map"),
  guidanceField: element("guidance-field"),
  widthField: element("width-field"),
  heightField: element("height-field"),
  initInputs: element("init-inputs"),
  initLegend: element("init-legend"),
  sampler: element<HTMLSelectElement>("sampler"),
  steps: element<HTMLInputElement>("steps"),
  guidance: element<HTMLInputElement>("guidance"),
  seed: element<HTMLInputElement>("seed"),
  width: element<HTMLInputElement>("width"),
  height: element<HTMLInputElement>("height"),
  previewEvery: element<HTMLInputElement>("preview-every"),
  batch: element<HTMLInputElement>("batch"),
  initImage: element<HTMLInputElement>("init-image"),
  initArea: element("init-area"),
  initCanvas: element<HTMLCanvasElement>("init-canvas"),
  maskCanvas: element<HTMLCanvasElement>("mask-canvas"),
  strength: element<HTMLInputElement>("strength"),
  brush: element<HTMLInputElement>("brush"),
  clearMask: element<HTMLButtonElement>("clear-mask"),
  clearInit: element<HTMLButtonElement>("clear-init"),
  generate: element<HTMLButtonElement>("generate"),
  cancel: element<HTMLButtonElement>("cancel"),
  batchResults: element("batch-results"),
  error: element("error"),
  errorTitle: element("error-title"),
  errorDetail: element("error-detail"),
  device: element("device"),
  progress: element<HTMLProgressElement>("progress"),
  status: element("status"),
  preview: element<HTMLCanvasElement>("preview"),
  result: element<HTMLCanvasElement>("result"),
  resultCaption: element("result-caption"),
  download: element<HTMLButtonElement>("download"),
};

type ModelChoice = { kind: "builtin" } | { kind: "files"; files: File[] };

let device: Promise<Device> | undefined;
let model: { choice: ModelChoice; dtype: ParamDType; loaded: LoadedPipeline } | undefined;
let choice: ModelChoice = { kind: "builtin" };
/** The last image as a PNG with its parameters, for the download button. */
let download: { url: string; name: string } | undefined;

for (const name of SAMPLER_NAMES) {
  const isDefault = name === SAMPLING_DEFAULTS.sampler;
  ui.sampler.add(new Option(name, name, isDefault, isDefault));
}

/** The init image's size once chosen (its canvas holds it), and whether a mask was painted on it. */
let init: { width: number; height: number; masked: boolean } | undefined;
/** Super-resolution models: the chosen low-resolution image. */
let lowRes: RgbaImage | undefined;
/** Semantic synthesis models: the chosen segmentation map. */
let segmentation: SegmentationMap | undefined;
/** The chosen LoRA files, each read once (when first merged), and its strength field. */
let loras: { file: File; strength: HTMLInputElement; read?: Promise<Lora> }[] = [];
/**
 * The built-in model's inputs: its pipeline's once loaded; before, those of a CLIP text-to-image model (the
 * server serves it with CLIP's tokenizer files), which the page's form starts with.
 */
let builtinInputs: ModelInputs = {
  prompted: "clip",
  upscale: false,
  inpainting: false,
  guidable: true,
  guidanceFamily: "clip",
  guidanceScale: DEFAULT_GUIDANCE.clip,
};
/** Aborts the running generation (the Cancel button). */
let running: AbortController | undefined;

/** `data-state` on <body>: idle, running, done, cancelled or error (what the end-to-end test waits for). */
function setState(state: "idle" | "running" | "done" | "cancelled" | "error"): void {
  document.body.dataset.state = state;
}

function showError(error: unknown): void {
  const { kind, title, detail } = explain(error);
  ui.error.dataset.kind = kind;
  ui.errorTitle.textContent = title;
  ui.errorDetail.textContent = detail;
  ui.error.hidden = false;
  setState("error");
  console.error(error);
}

function getDevice(): Promise<Device> {
  device ??= createDevice().then((d) => {
    ui.device.textContent = `WebGPU: ${d.describe()}`;
    return d;
  });
  return device;
}

/** After a lost device nothing on it can be used: the next run creates a device and loads the model again. */
function forgetDevice(): void {
  model = undefined;
  device = undefined;
  ui.device.textContent = "WebGPU: device lost; a new one is created on the next run";
}

function wantedDtype(d: Device): ParamDType {
  const asked = ui.precision.value;
  if (asked === "auto") return defaultDtype({ isCpu: d.info.isCpu, shaderF16: d.features.shaderF16 });
  return asked as ParamDType;
}

async function getPipeline(d: Device): Promise<LoadedPipeline> {
  const dtype = wantedDtype(d);
  if (model && model.choice === choice && model.dtype === dtype) return model.loaded;
  model?.loaded.dispose();
  model = undefined;
  const target: LoadTarget = {
    device: d,
    dtype,
    onSource: (source) => {
      document.body.dataset.weights = source;
    },
    onBytes: (loaded, total) => {
      ui.progress.value = total ? loaded / total : 0;
      ui.status.textContent = `Loading weights: ${(loaded / 2 ** 20).toFixed(1)} MiB${total ? ` of ${(total / 2 ** 20).toFixed(1)} MiB` : ""}`;
    },
  };
  ui.status.textContent = "Loading the model…";
  const current = choice;
  let loaded: LoadedPipeline;
  try {
    loaded = current.kind === "builtin" ? await loadBuiltinModel(target) : await loadLocalModel(current.files, target);
  } catch (e) {
    // GPU failures keep their kind; everything else is about the model's files.
    if (e instanceof GpuOutOfMemoryError || e instanceof DeviceLostError || e instanceof ModelError) throw e;
    throw new ModelError((e as Error).message);
  }
  model = { choice: current, dtype, loaded };
  ui.modelLabel.textContent = `Model: ${loaded.label}`;
  if (current.kind === "builtin") builtinInputs = loaded.pipeline.inputs;
  showInputs(loaded.pipeline.inputs);
  return loaded;
}

/** What each kind of model is called in the page, by what it is conditioned on. */
function kindOf(inputs: ModelInputs): string {
  const prompts = {
    clip: "text-to-image (CLIP prompt)",
    bert: "text-to-image (BERT prompt)",
    layout: "layout-to-image",
  };
  if (inputs.prompted) return `${prompts[inputs.prompted]}${inputs.inpainting ? ", inpainting" : ""}`;
  if (inputs.classes !== undefined) {
    return `class-conditional (${inputs.guidanceFamily === "class" ? inputs.classes - 1 : inputs.classes} classes)`;
  }
  if (inputs.segmentationClasses !== undefined) return `semantic synthesis (${inputs.segmentationClasses} classes)`;
  if (inputs.upscale) return "super-resolution";
  if (inputs.inpainting) return "inpainting (an image and a painted mask)";
  return "unconditional";
}

/**
 * Shows the inputs the model takes and hides the others: a prompt (CLIP or BERT), a layout, a class, a
 * segmentation map or a low-resolution image; guidance only where there is an unconditional input; the image to
 * image part everywhere but super-resolution, required (with a mask) for inpainting models.
 */
function showInputs(inputs: ModelInputs): void {
  const { prompted, classes, segmentationClasses, upscale } = inputs;
  ui.modelKind.textContent = kindOf(inputs);
  ui.promptInputs.hidden = prompted !== "clip" && prompted !== "bert";
  // LoRA files name CLIP text encoder and SD UNet modules (kohya/A1111, diffusers/PEFT).
  ui.loraInputs.hidden = prompted !== "clip";
  ui.layoutInputs.hidden = prompted !== "layout";
  ui.classInputs.hidden = classes === undefined;
  if (classes !== undefined) {
    // cin256-v2's last class is "no class", guidance's unconditional half by default; a table without one
    // (cin-ldm-vq-f8) is guided only against a class chosen here, as ldm generate's --uncond-class.
    const noClass = inputs.guidanceFamily === "class" ? classes - 1 : undefined;
    const classOptions = () =>
      Array.from({ length: classes }, (_, i) => new Option(i === noClass ? `${i}: no class` : String(i), String(i)));
    const chosen = [ui.classLabel.value, ui.uncondClass.value];
    ui.classLabel.replaceChildren(...classOptions());
    ui.uncondClass.replaceChildren(
      new Option(
        noClass === undefined ? 'none (no "no class": choose one to guide)' : `default: ${noClass}: no class`,
        "",
      ),
      ...classOptions(),
    );
    // Kept when the same model's inputs are shown again (once it has loaded); else the first option.
    [ui.classLabel, ui.uncondClass].forEach((select, i) => {
      if (chosen[i] !== "" && Number(chosen[i]) < classes) select.value = chosen[i];
    });
  }
  ui.segmentationInputs.hidden = segmentationClasses === undefined;
  ui.segmentationInfo.textContent =
    segmentationClasses === undefined
      ? ""
      : `This model has ${segmentationClasses} classes (0 to ${segmentationClasses - 1}).`;
  ui.upscaleInputs.hidden = !upscale;
  // A class model without a "no class" is guided against a chosen unconditional class.
  ui.guidanceField.hidden = !inputs.guidable && classes === undefined;
  // The output size follows the low-resolution image or the segmentation map.
  ui.widthField.hidden = ui.heightField.hidden = upscale || segmentationClasses !== undefined;
  ui.initInputs.hidden = upscale;
  ui.initLegend.textContent = inputs.inpainting
    ? "Inpainting (this model needs an image and a painted mask)"
    : "Image to image";
}

/** A newly chosen model: its inputs, its default guidance, and its own size unless one is typed in. */
function modelChosen(inputs: ModelInputs): void {
  showInputs(inputs);
  ui.guidance.value = String(inputs.guidanceScale);
  ui.width.value = ui.height.value = "";
  // An inpainting UNet only inpaints, by default from pure noise (inpaint's strength 1, as scripts/inpaint.py).
  ui.strength.value = inputs.inpainting ? "1" : ui.strength.defaultValue;
}

function parseSeed(text: string): Seed | undefined {
  const trimmed = text.trim();
  if (trimmed === "") return undefined;
  if (!/^\d+$/.test(trimmed)) throw new PipelineOptionError(`seed "${trimmed}" must be a whole number ≥ 0`);
  const value = BigInt(trimmed);
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

function parseLayoutField(): LayoutObject[] {
  try {
    return parseLayout(ui.layout.value);
  } catch (e) {
    throw new PipelineOptionError((e as Error).message);
  }
}

/** A number field's value; empty: undefined (the model's own). */
const optionalNumber = (input: HTMLInputElement) => (input.value.trim() === "" ? undefined : input.valueAsNumber);

/** The form's settings for the model's inputs (those shown). */
function readOptions(inputs: ModelInputs): LdmGenerateOptions {
  const previewEvery = ui.previewEvery.valueAsNumber;
  const sized = !ui.widthField.hidden;
  return {
    ...(ui.promptInputs.hidden ? {} : { prompt: ui.prompt.value, negativePrompt: ui.negative.value }),
    ...(inputs.prompted === "layout" ? { layout: parseLayoutField() } : {}),
    ...(inputs.classes === undefined ? {} : { classLabel: Number(ui.classLabel.value) }),
    ...(inputs.classes === undefined || ui.uncondClass.value === ""
      ? {}
      : { uncondClassLabel: Number(ui.uncondClass.value) }),
    ...(inputs.segmentationClasses === undefined ? {} : { segmentation }),
    sampler: ui.sampler.value as SamplerName,
    steps: ui.steps.valueAsNumber,
    guidanceScale: ui.guidanceField.hidden ? undefined : ui.guidance.valueAsNumber,
    seed: parseSeed(ui.seed.value),
    width: sized ? optionalNumber(ui.width) : undefined,
    height: sized ? optionalNumber(ui.height) : undefined,
    batchSize: ui.batch.valueAsNumber,
    preview: previewEvery > 0 ? previewEvery : undefined,
  };
}

/** A canvas's pixels at `width` × `height` (drawn scaled when its size differs). */
function canvasImage(canvas: HTMLCanvasElement, width: number, height: number): RgbaImage {
  const scaled = document.createElement("canvas");
  scaled.width = width;
  scaled.height = height;
  const context = scaled.getContext("2d");
  if (!context) throw new Error("this browser gives no 2D canvas context");
  context.drawImage(canvas, 0, 0, width, height);
  return { width, height, data: context.getImageData(0, 0, width, height).data };
}

/** The painted strokes (any alpha) as the pipeline's mask: white repainted, black kept. */
function maskImage(width: number, height: number): RgbaImage {
  const strokes = canvasImage(ui.maskCanvas, width, height);
  const data = new Uint8ClampedArray(strokes.data.length);
  for (let p = 0; p < data.length; p += 4)
    data.fill(strokes.data[p + 3] >= 128 ? 255 : 0, p, p + 3).fill(255, p + 3, p + 4);
  return { width, height, data };
}

/** Generation, upscaling, img2img (an init image) or inpainting (an init image with a painted mask). */
function run(pipeline: LatentDiffusion, options: LdmGenerateOptions): Promise<GenerationResult> {
  if (pipeline.inputs.upscale) {
    if (!lowRes) throw new PipelineOptionError("choose the low-resolution image to upscale");
    const { width: _, height: __, ...rest } = options;
    return pipeline.upscale({ ...rest, image: lowRes });
  }
  if (!init) return pipeline.generate(options);
  const width = options.width ?? init.width;
  const height = options.height ?? init.height;
  const initImage = canvasImage(ui.initCanvas, width, height);
  const strength = ui.strength.valueAsNumber;
  if (!init.masked) return pipeline.img2img({ ...options, initImage, strength });
  return pipeline.inpaint({ ...options, initImage, mask: maskImage(width, height), strength });
}

function draw(canvas: HTMLCanvasElement, image: RgbaImage): void {
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d");
  if (!context) throw new Error("this browser gives no 2D canvas context");
  context.putImageData(new ImageData(new Uint8ClampedArray(image.data), image.width, image.height), 0, 0);
}

async function generate(): Promise<void> {
  ui.generate.disabled = true;
  ui.error.hidden = true;
  ui.download.hidden = true;
  ui.progress.value = 0;
  setState("running");
  try {
    const d = await getDevice();
    const { pipeline } = await getPipeline(d);
    const options = readOptions(pipeline.inputs);
    await pipeline.setLoras(await loraUses());
    ui.progress.value = 0;
    ui.status.textContent = "Sampling…";
    running = new AbortController();
    ui.cancel.disabled = false;
    const result = await run(pipeline, {
      ...options,
      signal: running.signal,
      onProgress: ({ step, steps, elapsedMs, preview }) => {
        ui.progress.value = (step + 1) / steps;
        ui.status.textContent = `Step ${step + 1} of ${steps} (${(elapsedMs / 1000).toFixed(1)} s)`;
        if (preview) draw(ui.preview, preview[0]);
      },
    });
    const [image, ...others] = result.images;
    const [parameters] = result.parameters;
    draw(ui.result, image);
    ui.batchResults.replaceChildren(
      ...others.map((other, i) => {
        const canvas = document.createElement("canvas");
        canvas.id = `result-${i + 1}`;
        draw(canvas, other);
        return canvas;
      }),
    );
    ui.result.dataset.seed = String(result.seed);
    ui.resultCaption.textContent = `seed ${result.seed}`;
    const { samplingMs, decodeMs } = result.timings;
    ui.status.textContent = `Done: sampling ${(samplingMs / 1000).toFixed(1)} s, decoding ${(decodeMs / 1000).toFixed(1)} s.`;
    if (download) URL.revokeObjectURL(download.url);
    const png = encodePng(image, { [PARAMETERS_KEYWORD]: parametersText(parameters) });
    const blob = new Blob([png as Uint8Array<ArrayBuffer>], { type: "image/png" });
    download = { url: URL.createObjectURL(blob), name: `ldm-${result.seed}.png` };
    ui.download.hidden = false;
    setState("done");
  } catch (e) {
    if (running?.signal.aborted) {
      ui.status.textContent = "Cancelled.";
      setState("cancelled");
      return;
    }
    if (e instanceof DeviceLostError) forgetDevice();
    ui.status.textContent = "Stopped.";
    showError(e);
  } finally {
    running = undefined;
    ui.cancel.disabled = true;
    ui.generate.disabled = false;
  }
}

ui.cancel.addEventListener("click", () => {
  ui.status.textContent = "Cancelling after this step…";
  running?.abort(new Error("cancelled"));
});

/** The chosen image, drawn at its size rounded down to the VAE's multiple of 8, becomes width × height. */
ui.initImage.addEventListener("change", async () => {
  const file = ui.initImage.files?.[0];
  if (!file) return;
  try {
    const bitmap = await createImageBitmap(file);
    const width = Math.max(8, bitmap.width - (bitmap.width % 8));
    const height = Math.max(8, bitmap.height - (bitmap.height % 8));
    for (const canvas of [ui.initCanvas, ui.maskCanvas]) {
      canvas.width = width;
      canvas.height = height;
    }
    ui.initCanvas.getContext("2d")?.drawImage(bitmap, 0, 0, width, height);
    ui.maskCanvas.getContext("2d")?.clearRect(0, 0, width, height);
    init = { width, height, masked: false };
    ui.width.value = String(width);
    ui.height.value = String(height);
    ui.initArea.hidden = false;
  } catch (e) {
    showError(
      new PipelineOptionError(`${file.name}: the browser cannot read it as an image (${(e as Error).message})`),
    );
  }
});

ui.clearInit.addEventListener("click", () => {
  init = undefined;
  ui.initImage.value = "";
  ui.initArea.hidden = true;
});

ui.clearMask.addEventListener("click", () => {
  ui.maskCanvas.getContext("2d")?.clearRect(0, 0, ui.maskCanvas.width, ui.maskCanvas.height);
  if (init) init.masked = false;
});

/** Paints a round brush stroke on the mask at the pointer, in the image's pixels. */
function paint(event: PointerEvent): void {
  if (!init || !(event.buttons & 1)) return;
  const box = ui.maskCanvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * ui.maskCanvas.width;
  const y = ((event.clientY - box.top) / box.height) * ui.maskCanvas.height;
  const context = ui.maskCanvas.getContext("2d");
  if (!context) return;
  context.fillStyle = "#f00";
  context.beginPath();
  context.arc(x, y, ui.brush.valueAsNumber / 2, 0, 2 * Math.PI);
  context.fill();
  init.masked = true;
}
ui.maskCanvas.addEventListener("pointerdown", (event) => {
  ui.maskCanvas.setPointerCapture(event.pointerId);
  paint(event);
});
ui.maskCanvas.addEventListener("pointermove", paint);

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  void generate();
});

/** The chosen files' model: its inputs are shown at once (from its config), its weights loaded on Generate. */
ui.files.addEventListener("change", async () => {
  const files = Array.from(ui.files.files ?? []);
  if (!files.length) return;
  choice = { kind: "files", files };
  ui.modelLabel.textContent = `Model: ${files.map((f) => f.name).join(", ")} (loaded on Generate)`;
  ui.useBuiltin.hidden = false;
  ui.error.hidden = true;
  document.body.dataset.model = "reading";
  try {
    modelChosen(modelInputs(await describeLocalModel(files)));
    document.body.dataset.model = "described";
  } catch (e) {
    document.body.dataset.model = "error";
    showError(e);
  }
});

/** The LoRAs chosen for a CLIP model, with their strengths; none for other models (their fieldset is hidden). */
async function loraUses(): Promise<LoraUse[]> {
  if (ui.loraInputs.hidden || !loras.length) return [];
  ui.status.textContent = "Merging the LoRAs…";
  const uses: LoraUse[] = [];
  for (const entry of loras) {
    entry.read ??= loraFromBlob(entry.file, entry.file.name);
    uses.push({ lora: await entry.read, strength: entry.strength.valueAsNumber });
  }
  return uses;
}

/** A strength field per chosen LoRA file (1 by default), under the name prompts call it by. */
ui.loraFiles.addEventListener("change", () => {
  loras = Array.from(ui.loraFiles.files ?? [], (file, i) => {
    const strength = Object.assign(document.createElement("input"), { type: "number", step: "0.05", value: "1" });
    strength.id = `lora-strength-${i}`;
    return { file, strength };
  });
  ui.loraList.replaceChildren(
    ...loras.map(({ file, strength }) => {
      const label = document.createElement("label");
      label.append(`${file.name} — strength`, strength);
      return label;
    }),
  );
});

/** The segmentation map: an index or palette PNG of class ids (decodeLabelPng); the output takes its size. */
ui.segmentation.addEventListener("change", async () => {
  const file = ui.segmentation.files?.[0];
  segmentation = undefined;
  ui.segmentationMap.textContent = "";
  if (!file) return;
  try {
    segmentation = decodeLabelPng(new Uint8Array(await file.arrayBuffer()), file.name);
    ui.segmentationMap.textContent = `${file.name}: ${segmentation.width}×${segmentation.height}`;
  } catch (e) {
    showError(new PipelineOptionError((e as Error).message));
  }
});

/** The low-resolution image to upscale, at its own size (the result is the first stage's factor larger). */
ui.lowRes.addEventListener("change", async () => {
  const file = ui.lowRes.files?.[0];
  lowRes = undefined;
  ui.lowResCanvas.hidden = true;
  if (!file) return;
  try {
    const bitmap = await createImageBitmap(file);
    ui.lowResCanvas.width = bitmap.width;
    ui.lowResCanvas.height = bitmap.height;
    ui.lowResCanvas.getContext("2d")?.drawImage(bitmap, 0, 0);
    lowRes = canvasImage(ui.lowResCanvas, bitmap.width, bitmap.height);
    ui.lowResCanvas.hidden = false;
  } catch (e) {
    showError(
      new PipelineOptionError(`${file.name}: the browser cannot read it as an image (${(e as Error).message})`),
    );
  }
});

ui.download.addEventListener("click", () => {
  if (!download) return;
  const link = document.createElement("a");
  link.href = download.url;
  link.download = download.name;
  link.click();
});

ui.useBuiltin.addEventListener("click", () => {
  choice = { kind: "builtin" };
  ui.files.value = "";
  ui.useBuiltin.hidden = true;
  ui.modelLabel.textContent = "Model: built-in (loaded on Generate)";
  modelChosen(builtinInputs);
});

// Probe WebGPU at once, so a browser without it says so before anyone clicks.
getDevice().catch((e) => {
  device = undefined;
  ui.device.textContent = "WebGPU: unavailable";
  showError(e);
});
