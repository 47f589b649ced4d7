import {
  encodePng,
  type GenerateOptions,
  PARAMETERS_KEYWORD,
  PipelineOptionError,
  parametersText,
  type RgbaImage,
  SAMPLER_NAMES,
  SAMPLING_DEFAULTS,
  type SamplerName,
  type Seed,
} from "@ldm/ldm";
import { type Device, DeviceLostError, GpuOutOfMemoryError, type ParamDType } from "@ldm/tensor";
import { explain, ModelError } from "./errors.ts";
import { createDevice } from "./gpu.ts";
import { type LoadedPipeline, type LoadTarget, loadBuiltinModel, loadLocalModel } from "./model.ts";

const element = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  form: element<HTMLFormElement>("controls"),
  files: element<HTMLInputElement>("model-files"),
  useBuiltin: element<HTMLButtonElement>("use-builtin"),
  modelLabel: element("model-label"),
  precision: element<HTMLSelectElement>("precision"),
  prompt: element<HTMLTextAreaElement>("prompt"),
  negative: element<HTMLInputElement>("negative"),
  sampler: element<HTMLSelectElement>("sampler"),
  steps: element<HTMLInputElement>("steps"),
  guidance: element<HTMLInputElement>("guidance"),
  seed: element<HTMLInputElement>("seed"),
  width: element<HTMLInputElement>("width"),
  height: element<HTMLInputElement>("height"),
  previewEvery: element<HTMLInputElement>("preview-every"),
  generate: element<HTMLButtonElement>("generate"),
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

/** `data-state` on <body>: idle, running, done or error (what the end-to-end test waits for). */
function setState(state: "idle" | "running" | "done" | "error"): void {
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
  if (asked === "auto") return d.features.shaderF16 ? "f16" : "f32";
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
  return loaded;
}

function parseSeed(text: string): Seed | undefined {
  const trimmed = text.trim();
  if (trimmed === "") return undefined;
  if (!/^\d+$/.test(trimmed)) throw new PipelineOptionError(`seed "${trimmed}" must be a whole number ≥ 0`);
  const value = BigInt(trimmed);
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

function readOptions(): GenerateOptions {
  const previewEvery = ui.previewEvery.valueAsNumber;
  return {
    prompt: ui.prompt.value,
    negativePrompt: ui.negative.value,
    sampler: ui.sampler.value as SamplerName,
    steps: ui.steps.valueAsNumber,
    guidanceScale: ui.guidance.valueAsNumber,
    seed: parseSeed(ui.seed.value),
    width: ui.width.valueAsNumber,
    height: ui.height.valueAsNumber,
    preview: previewEvery > 0 ? previewEvery : undefined,
  };
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
    const options = readOptions();
    const d = await getDevice();
    const { pipeline } = await getPipeline(d);
    ui.progress.value = 0;
    ui.status.textContent = "Encoding the prompt…";
    const result = await pipeline.txt2img({
      ...options,
      onProgress: ({ step, steps, elapsedMs, preview }) => {
        ui.progress.value = (step + 1) / steps;
        ui.status.textContent = `Step ${step + 1} of ${steps} (${(elapsedMs / 1000).toFixed(1)} s)`;
        if (preview) draw(ui.preview, preview[0]);
      },
    });
    const [image] = result.images;
    const [parameters] = result.parameters;
    draw(ui.result, image);
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
    if (e instanceof DeviceLostError) forgetDevice();
    ui.status.textContent = "Stopped.";
    showError(e);
  } finally {
    ui.generate.disabled = false;
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  void generate();
});

ui.files.addEventListener("change", () => {
  const files = Array.from(ui.files.files ?? []);
  if (!files.length) return;
  choice = { kind: "files", files };
  ui.modelLabel.textContent = `Model: ${files.map((f) => f.name).join(", ")} (loaded on Generate)`;
  ui.useBuiltin.hidden = false;
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
});

// Probe WebGPU at once, so a browser without it says so before anyone clicks.
getDevice().catch((e) => {
  device = undefined;
  ui.device.textContent = "WebGPU: unavailable";
  showError(e);
});
