/**
 * Checks of what callers of the library pass in, at the public methods, so that a wrong type gets a message
 * naming the option (as the CLI names its flag) instead of a TypeError from deep inside the tokenizer.
 */
import { PipelineOptionError } from "./errors.ts";

/** How a value reads in a message: its type, and the value itself where short. */
export function described(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (typeof value === "object") return `an object (${value.constructor?.name ?? "no prototype"})`;
  return typeof value;
}

const fail = (method: string, name: string, wanted: string, value: unknown): never => {
  throw new PipelineOptionError(`${method}: ${name} must be ${wanted}, got ${described(value)}`);
};

/**
 * The option object and the fields every generation method shares: types only, ranges come later. The prompt is
 * required of text models, optional (and refused later) for the others.
 */
export function checkGenerateInputs(method: string, options: unknown, promptRequired = true): void {
  if (typeof options !== "object" || options === null) fail(method, "options", "an object", options);
  const o = options as Record<string, unknown>;
  if ((promptRequired || o.prompt !== undefined) && typeof o.prompt !== "string") {
    fail(method, "prompt", "a string", o.prompt);
  }
  const optional: [string, string, (v: unknown) => boolean][] = [
    ["negativePrompt", "a string", (v) => typeof v === "string"],
    ["steps", "a number", (v) => typeof v === "number"],
    ["guidanceScale", "a number", (v) => typeof v === "number"],
    ["eta", "a number", (v) => typeof v === "number"],
    ["strength", "a number", (v) => typeof v === "number"],
    ["width", "a number", (v) => typeof v === "number"],
    ["height", "a number", (v) => typeof v === "number"],
    ["batchSize", "a number", (v) => typeof v === "number"],
    ["sampler", "a string", (v) => typeof v === "string"],
    ["schedule", "a string", (v) => typeof v === "string"],
    ["clipSkip", "a number", (v) => typeof v === "number"],
    ["seed", "an integer or a bigint", (v) => typeof v === "bigint" || Number.isSafeInteger(v)],
    ["onProgress", "a function", (v) => typeof v === "function"],
    ["signal", "an AbortSignal", (v) => typeof v === "object" && v !== null && "aborted" in v],
  ];
  for (const [name, wanted, ok] of optional) {
    if (o[name] !== undefined && !ok(o[name])) fail(method, name, wanted, o[name]);
  }
}

/** An RGBA image as the methods take it: integer sizes and width·height·4 bytes. */
export function checkImageInput(method: string, name: string, image: unknown): void {
  const wanted = "an RGBA image ({ width, height, data: Uint8ClampedArray of width·height·4 })";
  if (typeof image !== "object" || image === null) fail(method, name, wanted, image);
  const { width, height, data } = image as Record<string, unknown>;
  if (!Number.isInteger(width) || !Number.isInteger(height) || (width as number) < 1 || (height as number) < 1) {
    throw new PipelineOptionError(
      `${method}: ${name}'s width and height must be positive integers, got ${described(width)} and ${described(height)}`,
    );
  }
  const length = (width as number) * (height as number) * 4;
  if (!(data instanceof Uint8ClampedArray || data instanceof Uint8Array) || data.length !== length) {
    fail(method, `${name}.data`, `${length} bytes (${width}×${height} RGBA) in a Uint8ClampedArray`, data);
  }
}

/** A segmentation map: positive integer sizes and one non-negative integer class id per pixel. */
export function checkSegmentationInput(map: unknown): void {
  const method = "generate";
  const wanted = "{ width, height, labels: Uint8Array | Uint16Array | Int32Array of width·height class ids }";
  if (typeof map !== "object" || map === null) fail(method, "segmentation", wanted, map);
  const { width, height, labels } = map as Record<string, unknown>;
  if (!Number.isInteger(width) || !Number.isInteger(height) || (width as number) < 1 || (height as number) < 1) {
    throw new PipelineOptionError(
      `${method}: segmentation's width and height must be positive integers, got ${described(width)} and ${described(height)}`,
    );
  }
  const length = (width as number) * (height as number);
  const typed = labels instanceof Uint8Array || labels instanceof Uint16Array || labels instanceof Int32Array;
  if (!typed || labels.length !== length) {
    fail(
      method,
      "segmentation.labels",
      `${length} class ids (${width}×${height}) in a Uint8Array, Uint16Array or Int32Array`,
      labels,
    );
  }
  const negative = (labels as Int32Array).findIndex((v) => v < 0);
  if (negative >= 0) {
    throw new PipelineOptionError(
      `${method}: segmentation.labels has class ${(labels as Int32Array)[negative]} at (${negative % (width as number)}, ${Math.floor(negative / (width as number))}): class ids are ≥ 0`,
    );
  }
}

/** A prompt or other text option. */
export function checkString(method: string, name: string, value: unknown): void {
  if (typeof value !== "string") fail(method, name, "a string", value);
}

/** A list of prompts: a non-empty array of strings. */
export function checkPromptList(method: string, prompts: unknown): void {
  if (!Array.isArray(prompts) || prompts.length === 0) fail(method, "prompts", "a non-empty array of strings", prompts);
  (prompts as unknown[]).forEach((p, i) => {
    if (typeof p !== "string") fail(method, `prompts[${i}]`, "a string", p);
  });
}
