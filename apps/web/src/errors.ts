import { PipelineOptionError } from "@ldm/ldm";
import { DeviceLimitError, DeviceLostError, GpuOutOfMemoryError } from "@ldm/tensor";

/** What the page shows when something fails: a headline naming the kind of problem, and what to do about it. */
export interface Explained {
  kind: "no-webgpu" | "no-adapter" | "limits" | "out-of-memory" | "device-lost" | "settings" | "model" | "other";
  title: string;
  detail: string;
}

/** The browser has no `navigator.gpu` at all. */
export class NoWebGpuError extends Error {}
/** `navigator.gpu` exists but offers no adapter (blocklisted GPU, disabled in the settings). */
export class NoAdapterError extends Error {}
/** The model could not be fetched or read (missing file, bad checkpoint, wrong tokenizer). */
export class ModelError extends Error {}

export function explain(error: unknown): Explained {
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof NoWebGpuError) {
    return {
      kind: "no-webgpu",
      title: "This browser has no WebGPU",
      detail:
        "Use a browser with WebGPU: Chrome or Edge 113+, Safari 18+, or Firefox 141+ (Windows). " +
        "Headless Chromium needs --enable-unsafe-webgpu. WebGPU is only offered on https:// pages and localhost.",
    };
  }
  if (error instanceof NoAdapterError) {
    return {
      kind: "no-adapter",
      title: "WebGPU is present, but no GPU adapter is available",
      detail: `${message} The GPU may be blocklisted or hardware acceleration turned off (see chrome://gpu).`,
    };
  }
  // Before GpuOutOfMemoryError: a limit error is one of those, but no amount of freed memory helps.
  if (error instanceof DeviceLimitError) {
    return {
      kind: "limits",
      title: "This GPU's limits are too small for this model at this size",
      detail: `${message}. Try a smaller width and height, or f16, or a GPU that allows larger buffers.`,
    };
  }
  if (error instanceof GpuOutOfMemoryError) {
    return {
      kind: "out-of-memory",
      title: "Out of GPU memory",
      detail: `${message}. Try a smaller width and height, f16, or close other tabs that use the GPU.`,
    };
  }
  if (error instanceof DeviceLostError) {
    return {
      kind: "device-lost",
      title: "The GPU device was lost",
      detail: `${message}. The next generation starts over on a new device (the model is loaded again).`,
    };
  }
  if (error instanceof PipelineOptionError) return { kind: "settings", title: "Invalid setting", detail: message };
  if (error instanceof ModelError) return { kind: "model", title: "Cannot load the model", detail: message };
  return { kind: "other", title: "Generation failed", detail: message };
}
