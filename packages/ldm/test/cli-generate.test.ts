import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stepRate } from "../src/cli/commands/generate.ts";
import { decodePng, encodePng } from "../src/image/png.ts";
import { INFOTEXT_KEYWORD, parametersFromInfotext } from "../src/pipeline/infotext.ts";
import { PARAMETERS_KEYWORD, parseParameters } from "../src/pipeline/parameters.ts";
import { runCli } from "./helpers/run-cli.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const MODEL = ["--model", join(DUMPS, "tiny-sd1.safetensors"), "--config", join(DUMPS, "tiny-sd1.yaml")];

let dir: string;
let vocab: string;
/** The tiny checkpoint, its config and a vocabulary of its size. */
let tiny: string[];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ldm-generate-"));
  vocab = writeTinyVocab(join(dir, "tokenizer"), 1000);
  tiny = [...MODEL, "--vocab", vocab];
  const png = (width: number, height: number) =>
    encodePng({ width, height, data: new Uint8ClampedArray(width * height * 4).fill(200) });
  writeFileSync(join(dir, "init.png"), png(32, 32));
  writeFileSync(join(dir, "mask16.png"), png(16, 16));
  writeFileSync(join(dir, "photo.jpg"), Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 16]));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ldm = runCli;

describe("ldm generate's progress line", () => {
  it("leaves the first step, which compiles the kernels, out of the rate and ETA from the second step on", () => {
    // A cold shader cache: 16 s for step 1, then 0.1 s a step.
    expect(stepRate(1, 50, 16000, 16000)).toEqual({ rate: 1 / 16, eta: 49 * 16 });
    const third = stepRate(3, 50, 16200, 16000);
    expect(third.rate).toBeCloseTo(10, 9);
    expect(third.eta).toBeCloseTo(4.7, 9);
  });
});

describe("ldm generate: errors before any model work", () => {
  it.each([
    [["a cat", "--sampler", "lms"], /unknown sampler "lms"; one of ddpm, ddim, plms, euler, euler_ancestral, /],
    [["a cat", "--schedule", "karras"], /sampler ddim takes no schedule "karras" \(none: it picks timesteps\)/],
    [["a cat", "--sampler", "heun", "--schedule", "cosine"], /sampler heun takes no schedule "cosine"/],
    [["a cat", "--variant", "fp32"], /--variant must be "fp16", got "fp32"/],
    [["a cat", "--width", "100"], /--width 100 is not a multiple of 8/],
    [["a cat", "--steps", "0"], /--steps must be an integer ≥ 1, got "0"/],
    [["a cat", "--cfg", "x"], /--cfg must be a number in \[0, 50\], got "x"/],
    [["a cat", "--seed", "1.5"], /--seed must be an integer, got "1.5"/],
    [["--steps", "3"], /no prompt: give one, or --params-from/],
  ])("%j", async (args, message) => {
    const { code, err } = await ldm("generate", ...args);
    expect(code).toBe(1);
    expect(err).toMatch(message);
  });

  it("init image and mask problems", async () => {
    const mask = await ldm("generate", "a cat", ...MODEL, "--mask", join(dir, "mask16.png"));
    expect(mask.err).toMatch(/--mask needs --init-image/);
    const jpeg = await ldm("generate", "a cat", ...MODEL, "--init-image", join(dir, "photo.jpg"));
    expect(jpeg.err).toMatch(/init image .*photo.jpg is not a PNG \(it looks like a JPEG\)/);
    const missing = await ldm("generate", "a cat", ...MODEL, "--init-image", join(dir, "nope.png"));
    expect(missing.err).toMatch(/cannot read init image .*nope.png: ENOENT/);
    const sizes = await ldm(
      "generate",
      "a cat",
      ...MODEL,
      "--init-image",
      join(dir, "init.png"),
      "--mask",
      join(dir, "mask16.png"),
    );
    expect(sizes.err).toMatch(/the mask is 16×16, the init image 32×32: they must match/);
    for (const result of [mask, jpeg, missing, sizes]) expect(result.code).toBe(1);
  });

  it("a missing vocabulary, model or config file, or a config that is not YAML", async () => {
    const noVocab = await ldm("generate", "a cat", ...MODEL);
    expect(noVocab.code).toBe(1);
    // A single file gets the shipped CLIP vocabulary, which is too large for the tiny text encoder.
    expect(noVocab.err).toMatch(/start\/end ids \(49406\/49407\) are outside the text encoder's vocabulary of 1000/);
    const noModel = await ldm("generate", "a cat", "--model", join(dir, "absent.safetensors"), "--vocab", vocab);
    expect(noModel.code).toBe(1);
    expect(noModel.err).toMatch(/absent.safetensors/);
    // Without --vocab the tokenizer is looked up first: a missing model must still be named as missing.
    const noModelNoVocab = await ldm("generate", "a cat", "--model", join(dir, "absent.safetensors"));
    expect(noModelNoVocab.err).toMatch(/absent.safetensors: no such file or folder/);
    const noConfig = await ldm("generate", "a cat", ...MODEL, "--config", join(dir, "absent.yaml"));
    expect(noConfig.err).toMatch(/config .*absent.yaml: no such file/);
    writeFileSync(join(dir, "broken.yaml"), "model: [\n");
    const badConfig = await ldm("generate", "a cat", ...MODEL, "--config", join(dir, "broken.yaml"));
    expect(badConfig.err).toMatch(/broken.yaml: not valid YAML/);
    const folderConfig = await ldm("generate", "a cat", ...MODEL, "--config", dir);
    expect(folderConfig.err).toMatch(/config .*: cannot be read \(EISDIR\)/);
    for (const result of [noModelNoVocab, noConfig, badConfig, folderConfig]) expect(result.code).toBe(1);
  });

  it("an output folder that cannot be made, before anything loads", async () => {
    // A file where a folder must go. No --vocab: had the model loaded first, the tokenizer would be the error.
    writeFileSync(join(dir, "a-file"), "");
    const out = await ldm("generate", "a cat", ...MODEL, "--out", join(dir, "a-file", "cat.png"));
    expect(out.err).toMatch(/--out .*a-file\/cat.png: cannot write into folder .*a-file \(.*a-file is not a folder\)/);
    const grid = await ldm("generate", "a cat", ...MODEL, "--grid", join(dir, "a-file", "sub", "grid.png"));
    expect(grid.err).toMatch(/--grid .*grid.png: cannot write into folder .*a-file\/sub \(.*a-file is not a folder\)/);
    for (const result of [out, grid]) expect(result.code).toBe(1);
  });
});

describe("ldm generate, loss and bench on the tiny SD1 checkpoint", () => {
  it("writes a PNG with its parameters, and --params-from regenerates it exactly", async () => {
    const first = join(dir, "out", "first.png");
    const run = await ldm(
      "generate",
      "a (photograph:1.3) of an astronaut",
      ...tiny,
      "--width",
      "32",
      "--height",
      "48",
      "--steps",
      "3",
      "--seed",
      "7",
      "--sampler",
      "euler",
      "--schedule",
      "karras",
      "--clip-skip",
      "2",
      "--out",
      join(dir, "out") + "/",
    );
    expect(run.code, run.err).toBe(0);
    const written = run.out.trim();
    expect(written).toBe(join(dir, "out", "ldm-7-0.png"));
    expect(run.err).toMatch(/step 3\/3 +[\d.]+ it\/s +ETA 0\.0 s/);
    const image = decodePng(readFileSync(written), "output");
    expect([image.width, image.height]).toEqual([32, 48]);
    const parameters = parseParameters(image.text[PARAMETERS_KEYWORD], written);
    expect(parameters).toMatchObject({
      prompt: "a (photograph:1.3) of an astronaut",
      negativePrompt: "",
      seed: "7",
      sampler: "euler",
      schedule: "karras",
      clipSkip: 2,
      steps: 3,
      guidanceScale: 7.5,
      width: 32,
      height: 48,
      model: "tiny-sd1.safetensors",
      dtype: "f32",
    });
    const again = await ldm("generate", "--params-from", written, ...tiny, "--out", first);
    expect(again.code, again.err).toBe(0);
    expect(decodePng(readFileSync(first), "again").data).toEqual(image.data);
    // A1111's parameters text, before the image data: what its PNG Info shows, read back as A1111 parses it.
    const infotext = image.text[INFOTEXT_KEYWORD];
    expect(infotext).toBe(
      "a (photograph:1.3) of an astronaut\nSteps: 3, Sampler: Euler, Schedule type: Karras, CFG scale: 7.5, Seed: 7, Size: 32x48, Model: tiny-sd1, Clip skip: 2",
    );
    // An image carrying only A1111's text regenerates the same image; what ldm cannot restore is named.
    const a1111 = join(dir, "out", "a1111.png");
    writeFileSync(a1111, encodePng(image, { [INFOTEXT_KEYWORD]: `${infotext}, Hires upscale: 2` }));
    expect(parametersFromInfotext(`${infotext}, Hires upscale: 2`, a1111).unrestored).toEqual(["Hires upscale"]);
    const fromA1111 = join(dir, "out", "from-a1111.png");
    const third = await ldm("generate", "--params-from", a1111, ...tiny, "--out", fromA1111);
    expect(third.code, third.err).toBe(0);
    expect(third.err).toMatch(/ldm: warning: .*a1111.png: not restored: A1111's Hires upscale\n/);
    expect(decodePng(readFileSync(fromA1111), "from A1111").data).toEqual(image.data);
  });

  it("--f16 and --no-f16 override the adapter's default dtype; --params-from restores the stored one", async () => {
    const half = join(dir, "half.png");
    const run = await ldm(
      "generate",
      "a cat",
      ...tiny,
      "--width",
      "32",
      "--height",
      "32",
      "--steps",
      "1",
      "--f16",
      "--out",
      half,
    );
    expect(run.code, run.err).toBe(0);
    expect(run.err).toMatch(/loaded in [\d.]+ s on .+ \(f16\)/);
    const stored = parseParameters(decodePng(readFileSync(half), "half").text[PARAMETERS_KEYWORD], half);
    expect(stored.dtype).toBe("f16");
    // lavapipe's default is f32, so restoring f16 is the stored dtype at work; a flag still wins over it.
    const restored = await ldm("generate", "--params-from", half, ...tiny, "--out", join(dir, "half-again.png"));
    expect(restored.err).toMatch(/loaded in [\d.]+ s on .+ \(f16\)/);
    const single = await ldm("generate", "--params-from", half, ...tiny, "--no-f16", "--out", join(dir, "single.png"));
    expect(single.err).toMatch(/loaded in [\d.]+ s on .+ \(f32\)/);
    for (const r of [restored, single]) expect(r.code, r.err).toBe(0);
    // Three processes, each compiling the tiny model's kernels (f16 ones cold on a fresh machine).
  }, 360_000);

  it("img2img with --cfg 1 and a batch of 2 numbers its files", async () => {
    const out = join(dir, "i2i.png");
    const run = await ldm(
      "generate",
      "a cat",
      ...tiny,
      "--init-image",
      join(dir, "init.png"),
      "--strength",
      "0.5",
      "--steps",
      "4",
      "--cfg",
      "1",
      "-n",
      "2",
      "--out",
      out,
    );
    expect(run.code, run.err).toBe(0);
    expect(run.out.split("\n")).toEqual([join(dir, "i2i-0.png"), join(dir, "i2i-1.png")]);
    expect(existsSync(join(dir, "i2i-1.png"))).toBe(true);
    // The init image is a file: restored from beside the image, else named (here the runs stop at the bad
    // --steps, before any model work).
    const again = await ldm("generate", "--params-from", join(dir, "i2i-1.png"), ...tiny, "--steps", "0");
    expect(again.err).not.toMatch(/not restored/);
    mkdirSync(join(dir, "moved"));
    copyFileSync(join(dir, "i2i-1.png"), join(dir, "moved", "i2i-1.png"));
    const moved = await ldm("generate", "--params-from", join(dir, "moved", "i2i-1.png"), ...tiny, "--steps", "0");
    expect(moved.err).toMatch(/ldm: warning: .*i2i-1.png: not restored: --init-image init.png\n/);
    expect(run.err.match(/step \d\/2/g)).toEqual(["step 1/2", "step 2/2"]);
  });

  it("several prompts share the seed; --grid puts a row per prompt, a column per batch image", async () => {
    const grid = join(dir, "grid.png");
    const args = ["--width", "16", "--height", "24", "--steps", "2", "--cfg", "1", "--seed", "3", "-n", "2"];
    const run = await ldm("generate", "a cat", "a dog", ...tiny, ...args, "--out", dir, "--grid", grid);
    expect(run.code, run.err).toBe(0);
    const files = [0, 1, 2, 3].map((i) => join(dir, `ldm-3-${i}.png`));
    expect(run.out.split("\n")).toEqual([...files, grid]);
    const image = (path: string) => decodePng(readFileSync(path), path);
    expect(parseParameters(image(files[2]).text[PARAMETERS_KEYWORD], files[2])).toMatchObject({
      prompt: "a dog",
      seed: "3",
      batchIndex: 0,
    });
    const sheet = image(grid);
    expect([sheet.width, sheet.height]).toEqual([32, 48]);
    // The dog's second image is the grid's bottom-right cell.
    const cell = new Uint8ClampedArray(16 * 24 * 4);
    for (let y = 0; y < 24; y++)
      cell.set(sheet.data.subarray(((24 + y) * 32 + 16) * 4, ((24 + y) * 32 + 32) * 4), y * 64);
    expect(cell).toEqual(image(files[3]).data);
    // The low-memory options give the same image (sequential CFG: the same arithmetic per half; tiles: a
    // 3×2 latent fits one tile, so tiling decodes it whole).
    const lowMemory = join(dir, "low-memory.png");
    const low = await ldm(
      "generate",
      "a dog",
      ...tiny,
      ...args,
      "--out",
      lowMemory,
      "--sequential-cfg",
      "--vae-tiling",
    );
    expect(low.code, low.err).toBe(0);
    expect(image(join(dir, "low-memory-1.png")).data).toEqual(image(files[3]).data);
    const notPng = await ldm("generate", "a cat", ...tiny, "--grid", join(dir, "grid.jpg"));
    expect(notPng.err).toMatch(/--grid .*grid.jpg: must name a .png file/);
  });

  it("ldm loss prints L_simple; ldm bench reports steps, decode and peak memory", async () => {
    const loss = await ldm("loss", ...tiny, "--image", join(dir, "init.png"), "--prompt", "a cat", "--t", "250");
    expect(loss.code, loss.err).toBe(0);
    expect(loss.out).toMatch(/^t 250 {2}seed 0 {2}L_simple \(l2 against ε\): \d+\.\d+/);
    const bench = await ldm("bench", ...tiny, "--width", "32", "--height", "32", "--steps", "2", "--json");
    expect(bench.code, bench.err).toBe(0);
    const report = JSON.parse(bench.out);
    expect(report.steps).toBe(2);
    expect(report.step.meanMs).toBeGreaterThan(0);
    expect(report.vaeDecode.warmMs).toBeGreaterThan(0);
    expect(report.peakTotalBytes).toBeGreaterThan(2e6);
  });
});
