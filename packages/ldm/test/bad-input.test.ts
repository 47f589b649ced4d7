/**
 * Bad and extreme input, as a new user tries it: every case ends in one clear line on stderr and exit code 1,
 * or a correct result; never a crash, a hang or a silent wrong result. Cases run in-process (runCli) unless the
 * process itself is what is tested; those are spawned with a time limit, so a hang fails instead of stalling.
 * (The malformed-file corpus of the safetensors reader is in @ldm/weights' safetensors.test.ts.)
 */
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Device } from "@ldm/tensor";
import type { TensorToWrite } from "@ldm/weights";
import { openSafetensors, writeSafetensors } from "@ldm/weights/node";
import { encode } from "fast-png";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { DawnLineFilter } from "../src/cli/dawn-stderr.js";
import { estimateMemory, parameterCount } from "../src/pipeline/memory.ts";
import { PipelineOptionError, StableDiffusion } from "../src/pipeline/stable-diffusion.ts";
import { runCli } from "./helpers/run-cli.ts";
import { spawnCli } from "./helpers/spawn-cli.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
/** The tiny checkpoint without a vocabulary: had the model loaded, the tokenizer would be the error. */
const MODEL = ["--model", join(DUMPS, "tiny-sd1.safetensors"), "--config", join(DUMPS, "tiny-sd1.yaml")];

let dir: string;
/** MODEL with a vocabulary of its size: runs. */
let tiny: string[];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ldm-bad-input-"));
  tiny = [...MODEL, "--vocab", writeTinyVocab(join(dir, "tokenizer"), 1000)];
});

/** A copy of the tiny checkpoint whose tensor `key` has a NaN as its first value. */
async function poisoned(key: string): Promise<string> {
  const file = await openSafetensors(join(DUMPS, "tiny-sd1.safetensors"));
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, entry] of file.tensors) {
    const data = await file.readBytes(name);
    if (name === key) {
      if (entry.dtype === "F16") data.set([0x00, 0x7e]);
      else if (entry.dtype === "F32") data.set([0, 0, 0xc0, 0x7f]);
      else throw new Error(`poisoned: ${key} is ${entry.dtype}`);
    }
    tensors[name] = { dtype: entry.dtype, shape: entry.shape, data };
  }
  await file.close();
  const path = join(dir, `nan-${key}.safetensors`);
  await writeSafetensors(path, tensors, file.metadata);
  return path;
}
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Every case's limit: each takes a few seconds on lavapipe (a 2-core machine under load: up to 15), so a case
 * that runs past this hangs, and fails instead of stalling CI until the suite's own limit.
 */
const CASE_TIMEOUT_MS = 60_000;

/**
 * Lines a run prints to stderr before it fails: progress (loading, sampling, steps on a non-terminal) and which
 * UNet weights a model with an EMA copy samples with.
 */
const PROGRESS =
  /^(loading .*…|loaded in [\d.]+ s on .*|UNet weights: .*|(sampling|upscaling) \d+×\d+,? .*…|step \d+\/\d+ .*)$/;

/** One line on stderr besides progress, exit code 1. */
function expectOneLineError(run: { code: number | null; err: string }, message: RegExp): void {
  const lines = run.err
    .trim()
    .split("\n")
    .filter((line) => !PROGRESS.test(line));
  expect(lines, run.err).toHaveLength(1);
  expect(lines[0]).toMatch(message);
  expect(run.code).toBe(1);
}

describe("--out and --grid: decided before the model loads", { timeout: CASE_TIMEOUT_MS }, () => {
  it("a name with another image extension is refused (only PNG is written), and nothing is made", async () => {
    for (const name of ["new.jpg", "new.JPEG", "new.webp"]) {
      const run = await runCli("generate", "a cat", ...MODEL, "--out", join(dir, name));
      expectOneLineError(
        run,
        new RegExp(`--out .*${name.replace(".", "\\.")}: only PNG is written; name a \\.png file`),
      );
      expect(existsSync(join(dir, name))).toBe(false);
    }
  });

  it("a folder named x.png where the file must go", async () => {
    mkdirSync(join(dir, "x.png"));
    const run = await runCli("generate", "a cat", ...MODEL, "--out", join(dir, "x.png"));
    expectOneLineError(run, /--out .*x\.png is a folder: a name ending in \.png is written as a file/);
    const grid = await runCli("generate", "a cat", ...MODEL, "--grid", join(dir, "x.png"));
    expectOneLineError(grid, /--grid .*x\.png is a folder/);
  });

  it("a file on the way is named", async () => {
    writeFileSync(join(dir, "a-file"), "");
    const run = await runCli("generate", "a cat", ...MODEL, "--out", join(dir, "a-file", "sub", "cat.png"));
    expectOneLineError(run, /cannot write into folder .*a-file\/sub \(.*a-file is not a folder\)/);
  });

  it("a new folder is made, and no probe file is left in it", async () => {
    // The model then fails on its vocabulary: the folder was made and checked first.
    const out = join(dir, "new", "deeper");
    const run = await runCli("generate", "a cat", ...MODEL, "--out", out);
    expect(run.code).toBe(1);
    expect(statSync(out).isDirectory()).toBe(true);
    expect(readdirSync(out)).toEqual([]);
  });

  it.skipIf(process.platform !== "linux")("under /proc and /sys: an error at once, no endless loop", async () => {
    // Node 20's recursive mkdirSync retries ENOENT under /proc forever: a process, so a hang can be killed.
    for (const out of ["/proc/ldm-x", "/proc/ldm-x/y.png", "/sys/ldm-x.png"]) {
      const run = await spawnCli(["generate", "a cat", ...MODEL, "--out", out], { timeoutMs: 15_000 });
      expect(run.timedOut, out).toBe(false);
      expectOneLineError(run, new RegExp(`--out ${out}: cannot write into folder`));
    }
  });
});

describe("stderr: one line per error", { timeout: CASE_TIMEOUT_MS }, () => {
  it("Dawn's own warnings are dropped from whole lines only; partial lines and progress pass at once", () => {
    const written: string[] = [];
    const filter = new DawnLineFilter((t) => written.push(t));
    filter.push("Warn");
    expect(written).toEqual([]);
    filter.push("ing: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16\nsampl");
    filter.push("ing 3/50\r");
    filter.push("ldm: an error\nWarning: max");
    filter.end();
    expect(written.join("")).toBe("sampling 3/50\rldm: an error\n");
  });

  it("an error after the GPU starts is one line on stderr, exit code 1 (Dawn's warnings only with --verbose)", async () => {
    const args = ["generate", "a cat", ...MODEL, "--out", dir];
    const run = await spawnCli(args, { timeoutMs: 25_000 });
    expectOneLineError(
      run,
      /^ldm: the tokenizer's start\/end ids .* are outside the text encoder's vocabulary of 1000/,
    );
    const verbose = await spawnCli(["--verbose", ...args], { timeoutMs: 25_000 });
    expect(verbose.code).toBe(1);
    expect(verbose.err.split("\n").length).toBeGreaterThan(2);
  });
});

describe("NaN and Inf: an error naming the stage and the likely cause, never a black image", {
  timeout: CASE_TIMEOUT_MS,
}, () => {
  const generate = (model: string, ...args: string[]) =>
    runCli(
      "generate",
      "a cat",
      ...tiny,
      "--model",
      model,
      "--width",
      "32",
      "--height",
      "32",
      "--steps",
      "2",
      "--out",
      join(dir, "nan.png"),
      ...args,
    );

  it.each([
    [
      "model.diffusion_model.out.2.bias",
      /the latents after step 1 of 2 \(t=\d+\) hold 16 NaN\/Inf values of 64: likely .*ldm info --check/,
    ],
    [
      "first_stage_model.decoder.conv_out.bias",
      /the VAE decoder's output holds \d+ NaN\/Inf values of 3072 \(its latents were finite\): likely/,
    ],
    [
      "cond_stage_model.transformer.text_model.final_layer_norm.bias",
      /the text encoder's output holds \d+ NaN\/Inf values/,
    ],
  ])("a NaN weight in %s", async (key, message) => {
    const run = await generate(await poisoned(key));
    expectOneLineError(run, message);
    // What the run was doing, before its first step; no dtype flag: lavapipe, a CPU adapter, runs f32.
    expect(run.err).toMatch(
      /^loading nan-.*\.safetensors…\nloaded in [\d.]+ s on .+ \(f32\)\nsampling 32×32, batch 1, 2 \w+ steps/,
    );
    expect(existsSync(join(dir, "nan.png"))).toBe(false);
  });

  it("ldm info --check reads every weight and names the tensors holding NaN or Inf", async () => {
    const clean = await runCli("info", join(DUMPS, "tiny-sd1.safetensors"), "--check");
    expect(clean.code, clean.err).toBe(0);
    expect(clean.out).toMatch(/check: all [\d,]+ values of \d+ tensors are finite/);
    const bad = await runCli("info", await poisoned("model.diffusion_model.out.2.bias"), "--check");
    expect(bad.out).toContain("non-finite values (NaN or Inf) in 1 of");
    expect(bad.out).toContain("  model.diffusion_model.out.2.bias: 1 of 4 values");
    expectOneLineError(bad, /1 tensor holds NaN or Inf values \(first: model\.diffusion_model\.out\.2\.bias, 1 of 4\)/);
  });

  it("guidance scale and η have ranges (--cfg 1e38 overflowed the latents into a black image)", async () => {
    expectOneLineError(
      await runCli("generate", "a cat", ...MODEL, "--cfg", "1e38"),
      /--cfg must be a number in \[0, 50\], got "1e38"/,
    );
    expectOneLineError(
      await runCli("generate", "a cat", ...MODEL, "--cfg", "-3"),
      /--cfg must be a number in \[0, 50\]/,
    );
    expectOneLineError(await runCli("generate", "a cat", ...MODEL, "--eta", "5"), /--eta must be a number in \[0, 1\]/);
  });
});

describe("the library: inputs checked at the public API, GPU memory released", { timeout: CASE_TIMEOUT_MS }, () => {
  const load = () =>
    StableDiffusion.load(join(DUMPS, "tiny-sd1.safetensors"), {
      config: join(DUMPS, "tiny-sd1.yaml"),
      vocab: join(dir, "tokenizer"),
    });

  it("a prompt, options or images of the wrong type get a message naming the option", async () => {
    await using pipe = await load();
    const image = { width: 32, height: 32, data: new Uint8ClampedArray(32 * 32 * 4) };
    const cases: [() => unknown, RegExp][] = [
      [() => pipe.txt2img(undefined as never), /^txt2img: options must be an object, got undefined$/],
      [() => pipe.txt2img({} as never), /^txt2img: prompt must be a string, got undefined$/],
      [() => pipe.txt2img({ prompt: 42 } as never), /^txt2img: prompt must be a string, got 42$/],
      [() => pipe.txt2img({ prompt: "a", negativePrompt: null } as never), /negativePrompt must be a string, got null/],
      [() => pipe.txt2img({ prompt: "a", seed: 1.5 }), /seed must be an integer or a bigint, got 1\.5/],
      [() => pipe.txt2img({ prompt: "a", steps: "20" } as never), /steps must be a number, got "20"/],
      [() => pipe.img2img({ prompt: "a" } as never), /^img2img: initImage must be an RGBA image .*, got undefined$/],
      [
        () => pipe.img2img({ prompt: "a", initImage: { ...image, data: new Uint8ClampedArray(7) } }),
        /initImage\.data must be 4096 bytes \(32×32 RGBA\)/,
      ],
      [() => pipe.inpaint({ prompt: "a", initImage: image } as never), /^inpaint: mask must be an RGBA image/],
      [() => pipe.encodeText([]), /^encodeText: prompts must be a non-empty array of strings, got an array of 0$/],
      [() => pipe.encodeText(["a", undefined] as never), /^encodeText: prompts\[1\] must be a string, got undefined$/],
      [() => pipe.tokenize(undefined as never), /^tokenize: prompt must be a string, got undefined$/],
      [() => pipe.loss({ image, t: 1 } as never), /^loss: prompt must be a string, got undefined$/],
    ];
    for (const [call, message] of cases) {
      const error = await Promise.resolve()
        .then(call)
        .then(
          () => undefined,
          (e: Error) => e,
        );
      expect(error, String(message)).toBeInstanceOf(PipelineOptionError);
      expect(error?.message).toMatch(message);
    }
  });

  it("await using disposes the pipeline (its own device) at the end of the block", async () => {
    const destroy = vi.spyOn(Device.prototype, "destroy");
    try {
      {
        await using pipe = await load();
        expect(pipe.config.unet.in_channels).toBe(4);
      }
      expect(destroy).toHaveBeenCalledTimes(1);
    } finally {
      destroy.mockRestore();
    }
  });

  it("pipelines dropped without dispose() free their device when garbage-collected: loads stay bounded", async () => {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const created = new Set<Device>();
    const destroyed = new Set<Device>();
    const create = Device.create.bind(Device);
    const spyCreate = vi.spyOn(Device, "create").mockImplementation(async (o) => {
      const d = await create(o);
      created.add(d);
      return d;
    });
    const original = Device.prototype.destroy;
    Device.prototype.destroy = function (this: Device) {
      destroyed.add(this);
      original.call(this);
    };
    try {
      const loads = 6;
      for (let i = 0; i < loads; i++) {
        const pipe = await load();
        expect(pipe.tokenize("a cat").ids.length).toBe(77);
        // Dropped here, without dispose().
        for (let k = 0; k < 3; k++) {
          gc();
          await new Promise((r) => setTimeout(r, 10));
        }
      }
      for (let k = 0; k < 10 && destroyed.size < loads - 1; k++) {
        gc();
        await new Promise((r) => setTimeout(r, 20));
      }
      // At most the last pipeline may still be alive (V8 may keep the last one in a register or handle).
      expect(created.size).toBe(loads);
      expect(created.size - destroyed.size).toBeLessThanOrEqual(1);
    } finally {
      Device.prototype.destroy = original;
      spyCreate.mockRestore();
    }
  });
});

describe("bounds: sizes, batches and memory checked before any work", { timeout: CASE_TIMEOUT_MS }, () => {
  it("sizes and batches past any model's reach are refused before the model loads", async () => {
    expectOneLineError(
      await runCli("generate", "a cat", ...MODEL, "-n", "100000"),
      /--batch-size must be an integer in \[1, 64\], got "100000"/,
    );
    expectOneLineError(
      await runCli("generate", "a cat", ...MODEL, "--width", "100000"),
      /--width must be an integer in \[1, 8192\], got "100000"/,
    );
  });

  it("the memory estimate is within 2× of the pool's measured peak, and a request past the limit names what fits", async () => {
    await using pipe = await StableDiffusion.load(join(DUMPS, "tiny-sd1.safetensors"), {
      config: join(DUMPS, "tiny-sd1.yaml"),
      vocab: join(dir, "tokenizer"),
    });
    const params = parameterCount(pipe.config);
    const request = { width: 128, height: 128, batchSize: 2, unetRows: 4, dtype: "f32" as const };
    const estimate = estimateMemory(pipe.config, params, request);
    await pipe.txt2img({ prompt: "a cat", width: 128, height: 128, batchSize: 2, steps: 1, seed: 1 });
    const measured = pipe.device.memory().peakTotalBytes;
    console.log(`tiny-sd1 128×128 batch 2: estimated ${estimate.total} bytes, the pool's peak ${measured}`);
    expect(estimate.total).toBeGreaterThan(measured / 2);
    expect(estimate.total).toBeLessThan(measured * 2);

    pipe.memoryLimit = estimate.total - 1;
    const refused = await pipe.txt2img({ prompt: "a cat", width: 128, height: 128, batchSize: 2, steps: 1 }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(refused).toBeInstanceOf(PipelineOptionError);
    expect(refused?.message).toMatch(
      /^128×128, batch 2 needs about [\d.]+ GiB of GPU memory \(weights .*, UNet .* for 4 rows of 16×16 latents, VAE decode .*\), more than the [\d.]+ GiB limit: a batch size of 1 fits/,
    );
    pipe.memoryLimit = estimate.weights + 1;
    const nothing = await pipe.txt2img({ prompt: "a cat", width: 128, height: 128, steps: 1 }).then(
      () => "",
      (e: Error) => e.message,
    );
    expect(nothing).toMatch(/limit: a smaller size is needed$/);
    const steps = await pipe.txt2img({ prompt: "a cat", steps: 1001 }).then(
      () => "",
      (e: Error) => e.message,
    );
    expect(steps).toBe("steps 1001: at most the schedule's 1000 timesteps");
  });
});

describe("the paper's models, LoRA and embeddings from the CLI: each bad input is one line", {
  timeout: CASE_TIMEOUT_MS,
}, () => {
  const model = (name: string) => ["--model", join(DUMPS, `${name}.safetensors`)];
  const file = (name: string) => join(dir, "paper", name);
  beforeAll(() => {
    mkdirSync(file(""), { recursive: true });
    const grey = (w: number, h: number, value: (x: number, y: number) => number) =>
      encode({
        width: w,
        height: h,
        data: Uint8Array.from({ length: w * h }, (_, p) => value(p % w, Math.floor(p / w))),
        depth: 8,
        channels: 1,
      });
    const rgba = new Uint8Array(8 * 8 * 4).fill(128);
    rgba[3] = 10;
    writeFileSync(file("low-alpha.png"), encode({ width: 8, height: 8, data: rgba, depth: 8, channels: 4 }));
    writeFileSync(
      file("photo.png"),
      encode({ width: 32, height: 32, data: new Uint8Array(32 * 32 * 3).fill(90), depth: 8, channels: 3 }),
    );
    writeFileSync(
      file("mask16.png"),
      grey(16, 16, () => 255),
    );
    writeFileSync(
      file("map30.png"),
      grey(30, 30, () => 1),
    );
    writeFileSync(file("layout-bad.json"), '[{"class": 3, "box": [0.1, 0.2, 0.6]}');
    mkdirSync(file("loras"));
    copyFileSync(join(DUMPS, "../lora/tiny-sd1.kohya.safetensors"), file("loras/style.safetensors"));
    writeFileSync(file("empty.safetensors"), "");
  });

  // Each case fails before sampling: at the flags, or when the loaded model sees what it was given.
  const cases: [string, () => string[], RegExp][] = [
    [
      "a prompt to an unconditional model",
      () => ["a face", ...model("tiny-celebahq")],
      /^ldm: this model is unconditional: it takes no prompt$/,
    ],
    [
      "a class to an unconditional model",
      () => [...model("tiny-celebahq"), "--class", "3"],
      /unconditional: it takes no class label$/,
    ],
    [
      "no class for a class-conditional model",
      () => model("tiny-cin"),
      /class-conditional model: give a class \(0 to 10\)$/,
    ],
    [
      "a class out of range",
      () => [...model("tiny-cin"), "--class", "11"],
      /class 11 is out of range: this model has classes 0 to 10$/,
    ],
    [
      "a class that is not a number",
      () => [...model("tiny-cin"), "--class", "dog"],
      /--class must be an integer ≥ 0, got "dog"$/,
    ],
    ["a prompt to a class model", () => ["a dog", ...model("tiny-cin"), "--class", "3"], /takes no prompt$/],
    ["no prompt to the BERT text model", () => model("tiny-txt2img"), /^ldm: no prompt: give one/],
    ["a layout to a text model", () => ["a cat", ...model("tiny-txt2img"), "--layout", "[]"], /takes no layout$/],
    ["no layout to a layout model", () => model("tiny-layout2img"), /layout-to-image model: it needs a layout/],
    [
      "a layout file that is not JSON",
      () => [...model("tiny-layout2img"), "--layout", file("layout-bad.json")],
      /--layout .*layout-bad\.json is not valid JSON/,
    ],
    [
      "a segmentation map to an unconditional model",
      () => [...model("tiny-celebahq"), "--segmentation", file("map30.png")],
      /takes no segmentation map$/,
    ],
    [
      "a segmentation map whose sides are not multiples of 4",
      () => [...model("tiny-seg"), "--segmentation", file("map30.png")],
      /segmentation map is 30×30: its sides must be multiples of 4/,
    ],
    [
      "a transparent low-resolution image",
      () => ["upscale", file("low-alpha.png"), ...model("tiny-bsr")],
      /transparent pixels \(alpha 10 at \(0, 0\)\)/,
    ],
    [
      "a missing low-resolution image",
      () => ["upscale", file("none.png"), ...model("tiny-bsr")],
      /cannot read image .*none\.png: ENOENT$/,
    ],
    ["generate with a super-resolution model", () => model("tiny-bsr"), /super-resolution model: use upscale/],
    [
      "a mask of another size",
      () => [...model("tiny-inpainting"), "--init-image", file("photo.png"), "--mask", file("mask16.png")],
      /the mask is 16×16, the init image 32×32/,
    ],
    [
      "the big inpainting model without a mask",
      () => [...model("tiny-inpainting"), "--init-image", file("photo.png")],
      /inpainting model .*: use inpaint with a mask$/,
    ],
    [
      "a missing LoRA file, named once",
      () => ["a cat", ...tiny, "--lora", file("nope.safetensors")],
      /^ldm: \/.*nope\.safetensors: cannot read: ENOENT$/,
    ],
    [
      "an empty LoRA file",
      () => ["a cat", ...tiny, "--lora", file("empty.safetensors")],
      /^ldm: \/.*empty\.safetensors: not a safetensors file: 0 bytes/,
    ],
    [
      "a <lora:…> tag naming no file",
      () => ["a <lora:missing:1> cat", ...tiny, "--lora-dir", file("loras")],
      /<lora:missing:1> in the prompt: no LoRA "missing"/,
    ],
    ["a <lora:…> tag without --lora-dir", () => ["a <lora:style:1> cat", ...tiny], /pass --lora-dir <folder>/],
    [
      "an embedding to a class model",
      () => [...model("tiny-cin"), "--class", "1", "--embedding", join(DUMPS, "../prompts/embeddings/ink.safetensors")],
      /takes no embeddings$/,
    ],
  ];
  it.each(cases)("%s", async (_, args, message) => {
    const argv = args();
    const run = await runCli(
      ...(argv[0] === "upscale" ? argv : ["generate", ...argv]),
      "--steps",
      "1",
      "--out",
      file("x.png"),
    );
    expectOneLineError(run, message);
  });

  it("a LoRA that fits no layer: the error line first, then the keys", async () => {
    const run = await runCli(
      "generate",
      ...model("tiny-celebahq"),
      "--lora",
      join(DUMPS, "../lora/tiny-sd1.kohya.safetensors"),
      "--steps",
      "1",
      "--out",
      file("x.png"),
    );
    expect(run.code).toBe(1);
    const lines = run.err
      .trim()
      .split("\n")
      .filter((line) => !PROGRESS.test(line));
    expect(lines[0]).toMatch(
      /^ldm: .*tiny-sd1\.kohya\.safetensors does not fit this latent diffusion model \(\d+ keys\):$/,
    );
    expect(
      lines.slice(1).every((line) => /^ {2}lora_\w+: /.test(line)),
      run.err,
    ).toBe(true);
  });
});
