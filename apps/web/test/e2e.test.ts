/**
 * The demo page in real headless Chromium (Debian's `chromium`, WebGPU on SwiftShader), built and served as it
 * ships, against the Node CLI on lavapipe: the same prompt, seed, sampler, steps and guidance must give the same
 * image within TOLERANCE.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  decodePng,
  encodePng,
  type GenerationResult,
  LatentDiffusion,
  type LdmGenerateOptions,
  type RgbaImage,
  SAMPLER_NAMES,
} from "@ldm/ldm";
import { loadLora } from "@ldm/ldm/node";
import { Device } from "@ldm/tensor";
import { encode } from "fast-png";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeTinyVocab } from "../../../packages/ldm/test/helpers/tiny-vocab.ts";
import { readManifest } from "../model-plugin.ts";
import { bundleImports, lazyNodeOnlyChunks, nodeOnlyImports } from "./bundle.ts";
import {
  CACHED_PROFILE,
  type Controls,
  canvasPixels,
  DemoPage,
  generate,
  modelFolder,
  PIXEL_TOLERANCE,
  pageError,
  pixelDifference,
  repositoryRoot,
  settled,
  WEBGPU,
} from "./harness.ts";

/**
 * Short on purpose (SwiftShader runs WebGPU on the CPU, several times slower than lavapipe); f32 like the CLI
 * (SwiftShader has no shader-f16, so "auto" would be f32 as well); two previews.
 */
const RUN: Controls = {
  prompt: "a red apple",
  seed: 42,
  sampler: "ddim",
  steps: 10,
  guidance: 7.5,
  size: 64,
  precision: "f32",
  previewEvery: 5,
};

/** The image's distance from the CLI's: PIXEL_TOLERANCE (harness.ts) says why. */
const TOLERANCE = PIXEL_TOLERANCE;

/** How long the page may take to load the model and generate (SwiftShader on 2 busy cores is slow). */
const PAGE_TIMEOUT_MS = Number(process.env.LDM_E2E_TIMEOUT_S ?? 1800) * 1000;

let demo: DemoPage;
beforeAll(async () => {
  demo = await DemoPage.start();
});
afterAll(async () => demo?.close());

describe("the browser bundle", () => {
  it("loads no Node-only module: the entry and everything it imports statically are browser code", () => {
    const graph = bundleImports(demo.outDir);
    const leaks = nodeOnlyImports(graph, graph.entry);
    expect(leaks, `Node-only imports reachable from the page's entry: ${leaks.join(", ")}`).toEqual([]);
    const lazy = lazyNodeOnlyChunks(graph);
    if (lazy.length) console.log(`chunks needing Node, imported only dynamically (never run here): ${lazy.join(", ")}`);
  });
});

describe("the page in headless Chromium", () => {
  it("says so when the browser has no navigator.gpu", async () => {
    const page = await demo.open(WEBGPU);
    await page.addInitScript(() => {
      delete (Navigator.prototype as { gpu?: unknown }).gpu;
    });
    await page.reload();
    expect(await settled(page, 60_000)).toBe("error");
    expect(await pageError(page)).toMatchObject({ kind: "no-webgpu", text: expect.stringMatching(/no WebGPU/) });
  });

  it("says so when WebGPU offers no adapter (Chromium headless without --enable-unsafe-webgpu)", async () => {
    const page = await demo.open([]);
    expect(await settled(page, 60_000)).toBe("error");
    expect(await pageError(page)).toMatchObject({ kind: "no-adapter", text: expect.stringMatching(/no GPU adapter/) });
  });

  it(
    "generates the same image as the Node CLI for the same seed, sampler, steps and guidance",
    async () => {
      const manifest = readManifest(modelFolder);
      if (manifest instanceof Error) throw manifest;
      const cliOut = join(demo.outDir, "cli.png");
      const cliStart = performance.now();
      await promisify(execFile)(
        process.execPath,
        [
          join(repositoryRoot, "packages/ldm/bin/ldm.mjs"),
          "generate",
          RUN.prompt,
          ...["--model", join(modelFolder, manifest.weights), "--vocab", join(modelFolder, "tokenizer")],
          ...(manifest.config ? ["--config", join(modelFolder, manifest.config)] : []),
          ...["--seed", String(RUN.seed), "--sampler", RUN.sampler, "--steps", String(RUN.steps)],
          ...["--cfg", String(RUN.guidance), "--width", String(RUN.size), "--height", String(RUN.size)],
          ...["--out", cliOut],
        ],
        { env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? "/tmp" }, timeout: 600_000 },
      );
      const cliSeconds = (performance.now() - cliStart) / 1000;
      const expected = decodePng(readFileSync(cliOut), "the CLI's image");

      const pageStart = performance.now();
      const page = await demo.open(WEBGPU, CACHED_PROFILE);
      await generate(page, RUN);
      const state = await settled(page, PAGE_TIMEOUT_MS);
      const pageSeconds = (performance.now() - pageStart) / 1000;
      if (state === "error") throw new Error(`the page failed: ${(await pageError(page)).text}`);
      const device = await page.textContent("#device");
      expect(device).toMatch(/WebGPU: .*\(browser\)/);

      const preview = await canvasPixels(page, "preview");
      expect([preview.width, preview.height]).toEqual([RUN.size, RUN.size]);
      expect(new Set(preview.data).size, "the preview canvas was never drawn").toBeGreaterThan(2);

      const actual = await canvasPixels(page, "result");
      expect([actual.width, actual.height]).toEqual([expected.width, expected.height]);
      const { max: maxDiff, mean: meanDiff } = pixelDifference(actual.data, expected.data);
      console.log(
        `page ${pageSeconds.toFixed(1)} s (${device}), CLI ${cliSeconds.toFixed(1)} s; ` +
          `pixels: max |Δ| ${maxDiff}, mean |Δ| ${meanDiff.toFixed(4)} (of 255), status: ${await page.textContent("#status")}`,
      );
      expect(maxDiff).toBeLessThanOrEqual(TOLERANCE.max);
      expect(meanDiff).toBeLessThanOrEqual(TOLERANCE.mean);
    },
    PAGE_TIMEOUT_MS + 600_000,
  );
});

describe("the page's img2img, inpainting, batch, cancel and cached weights", () => {
  it(
    "batch of two, weights from Cache Storage after a reload, inpainting a painted mask, and cancel mid-run",
    async () => {
      // A profile of its own (one profile serves one browser at a time) that keeps compiled pipelines; the
      // weights' cache is emptied first, so the first load downloads.
      const page = await demo.open(WEBGPU, `${CACHED_PROFILE}-features`);
      try {
        await page.evaluate(() => caches.delete("ldm-weights-v1"));
        const samplers = await page.$$eval("#sampler option", (options) =>
          options.map((o) => (o as HTMLOptionElement).value),
        );
        expect(samplers).toEqual([...SAMPLER_NAMES]);

        await page.fill("#batch", "2");
        await generate(page, { ...RUN, steps: 2, previewEvery: 0 });
        expect(await settled(page, PAGE_TIMEOUT_MS)).toBe("done");
        expect(await page.evaluate(() => document.body.dataset.weights)).toBe("network");
        const first = await canvasPixels(page, "result");
        const second = await canvasPixels(page, "result-1");
        expect(second.width).toBe(RUN.size);
        expect(second.data).not.toEqual(first.data);

        // A reload asks the server whether the file changed (HEAD) but does not download it again.
        const weightsGets: string[] = [];
        page.on("request", (r) => {
          if (r.method() === "GET" && r.url().endsWith(".safetensors")) weightsGets.push(r.url());
        });
        await page.reload();
        await page.setInputFiles("#init-image", {
          name: "init.png",
          mimeType: "image/png",
          buffer: Buffer.from(encodePng({ width: RUN.size, height: RUN.size, data: gradient(RUN.size, RUN.size) })),
        });
        await paintStroke(page);
        const mask = await canvasPixels(page, "mask-canvas");
        const painted = mask.data.filter((v, i) => i % 4 === 3 && v > 0).length;
        expect(painted).toBeGreaterThan(0);
        expect(painted).toBeLessThan((RUN.size * RUN.size) / 2);
        await page.fill("#batch", "1");
        await generate(page, { ...RUN, steps: 2, previewEvery: 0 });
        expect(await settled(page, PAGE_TIMEOUT_MS)).toBe("done");
        expect(await page.evaluate(() => document.body.dataset.weights)).toBe("cache");
        expect(weightsGets).toEqual([]);
        const inpainted = await canvasPixels(page, "result");
        expect(inpainted.data).not.toEqual(first.data);

        await page.click("#clear-init");
        await generate(page, { ...RUN, steps: 200, previewEvery: 0 });
        await page.waitForFunction(
          () => /Step [2-9]/.test(document.getElementById("status")?.textContent ?? ""),
          null,
          {
            timeout: PAGE_TIMEOUT_MS,
            polling: 200,
          },
        );
        await page.click("#cancel");
        await page.waitForFunction(() => document.body.dataset.state === "cancelled", null, { timeout: 120_000 });
        expect(await page.textContent("#status")).toBe("Cancelled.");
        expect(await page.locator("#generate").isEnabled()).toBe(true);
      } finally {
        await page.context().close();
      }
    },
    PAGE_TIMEOUT_MS + 600_000,
  );
});

/**
 * The paper's model families, chosen with the file picker as a user does (checkpoint + YAML), one after another
 * in one page: the page shows each model's own inputs (from its config, before loading) and its image equals
 * the library's in Node (lavapipe) for the same inputs and seed, within TOLERANCE.
 */
describe("the paper's model families from the file picker", () => {
  const fixtures = join(repositoryRoot, "packages/ldm/test/fixtures/dumps");
  /** The form's fieldsets a family shows, by id; the others must be hidden. */
  const FIELDSETS = [
    "prompt-inputs",
    "lora-inputs",
    "class-inputs",
    "layout-inputs",
    "upscale-inputs",
    "segmentation-inputs",
  ];
  const lowRes = { width: 8, height: 8, data: gradient(8, 8) };
  const picture = { width: 32, height: 32, data: gradient(32, 32) };
  let paintedMask: RgbaImage | undefined;
  /** Four horizontal bands of classes 2, 5, 8 and 11 (of tiny-seg's 12). */
  const segmentation = {
    width: 32,
    height: 32,
    labels: Uint8Array.from({ length: 32 * 32 }, (_, i) => 2 + 3 * Math.floor(i / (32 * 8))),
  };
  const lora = join(repositoryRoot, "packages/ldm/test/fixtures/lora/tiny-sd1.kohya.safetensors");
  /** tiny-sd1's CLIP tokenizer files (its text encoder has 1000 tokens), written in beforeAll. */
  let tinyVocab: string;
  beforeAll(() => {
    tinyVocab = writeTinyVocab(join(demo.outDir, "tiny-sd1-tokenizer"), 1000);
  });
  interface Family {
    model: string;
    /** Chosen with the checkpoint and its YAML (the tokenizer's files), and where Node finds them. */
    tokenizer?: () => { files: string[]; vocab: string };
    kind: RegExp;
    shows: string[];
    /** Fills the family's inputs in the page. */
    fill: (page: Page) => Promise<void>;
    /** The same run in Node. */
    node: (pipe: LatentDiffusion, common: LdmGenerateOptions) => Promise<GenerationResult>;
  }
  const FAMILIES: Family[] = [
    // VQ-f4 with its EMA UNet; KL-f8 with the stored scale_factor of scale_by_std.
    ...["tiny-celebahq", "tiny-churches"].map(
      (model): Family => ({
        model,
        kind: /^unconditional$/,
        shows: [],
        fill: async () => {},
        node: (pipe, common) => pipe.generate(common),
      }),
    ),
    {
      model: "tiny-cin",
      kind: /^class-conditional \(10 classes\)$/,
      shows: ["class-inputs"],
      fill: async (page) => {
        const options = await page.$$eval("#class-label option", (o) => o.map((x) => x.textContent));
        expect(options).toEqual([...Array.from({ length: 10 }, (_, i) => String(i)), "10: no class"]);
        const uncond = await page.$$eval("#uncond-class option", (o) => o.map((x) => x.textContent));
        expect(uncond).toEqual(["default: 10: no class", ...options]);
        expect(await page.inputValue("#guidance")).toBe("3");
        await page.selectOption("#class-label", "4");
      },
      node: (pipe, common) => pipe.generate({ ...common, classLabel: 4, guidanceScale: 3 }),
    },
    {
      // cin-ldm-vq-f8's layout: no "no class", so unguided by default and guided only against a chosen class.
      model: "tiny-cin-f8",
      kind: /^class-conditional \(1000 classes\)$/,
      shows: ["class-inputs"],
      fill: async (page) => {
        expect(await page.inputValue("#guidance")).toBe("1");
        expect(await page.inputValue("#uncond-class")).toBe("");
        await page.selectOption("#class-label", "5");
        await page.fill("#guidance", "3");
        await page.click("#generate");
        expect(await settled(page, PAGE_TIMEOUT_MS)).toBe("error");
        expect((await pageError(page)).text).toMatch(/1000 classes and no "no class"/);
        await page.selectOption("#uncond-class", "7");
      },
      node: (pipe, common) => pipe.generate({ ...common, classLabel: 5, uncondClassLabel: 7, guidanceScale: 3 }),
    },
    {
      model: "tiny-txt2img",
      kind: /^text-to-image \(BERT prompt\)$/,
      shows: ["prompt-inputs"],
      fill: async (page) => {
        expect(await page.inputValue("#guidance")).toBe("5");
        await page.fill("#prompt", "a virus monster playing guitar");
        await page.fill("#negative", "");
      },
      node: (pipe, common) => pipe.generate({ ...common, prompt: "a virus monster playing guitar" }),
    },
    {
      model: "tiny-layout2img",
      kind: /^layout-to-image$/,
      shows: ["layout-inputs"],
      fill: async (page) => {
        await page.fill("#layout", JSON.stringify([{ class: 3, box: [0.1, 0.2, 0.6, 0.9] }]));
      },
      node: (pipe, common) => pipe.generate({ ...common, layout: [{ class: 3, box: [0.1, 0.2, 0.6, 0.9] }] }),
    },
    {
      model: "tiny-bsr",
      kind: /^super-resolution$/,
      shows: ["upscale-inputs"],
      fill: async (page) => {
        await page.setInputFiles("#low-res", {
          name: "low.png",
          mimeType: "image/png",
          buffer: Buffer.from(encodePng(lowRes)),
        });
        await page.waitForSelector("#low-res-canvas:not([hidden])");
      },
      node: (pipe, common) => pipe.upscale({ ...common, image: lowRes }),
    },
    {
      model: "tiny-seg",
      kind: /^semantic synthesis \(12 classes\)$/,
      shows: ["segmentation-inputs"],
      fill: async (page) => {
        const png = encode({ width: 32, height: 32, data: segmentation.labels, channels: 1, depth: 8 });
        await page.setInputFiles("#segmentation", { name: "map.png", mimeType: "image/png", buffer: Buffer.from(png) });
        await page.waitForFunction(() => document.getElementById("segmentation-map")?.textContent?.includes("32×32"));
      },
      node: (pipe, common) => pipe.generate({ ...common, segmentation }),
    },
    {
      model: "tiny-sd1",
      tokenizer: () => ({ files: ["vocab.json", "merges.txt"].map((f) => join(tinyVocab, f)), vocab: tinyVocab }),
      kind: /^text-to-image \(CLIP prompt\)$/,
      shows: ["prompt-inputs", "lora-inputs"],
      fill: async (page) => {
        await page.fill("#prompt", "a red apple");
        await page.setInputFiles("#lora-files", lora);
        await page.fill("#lora-strength-0", "0.8");
      },
      node: async (pipe, common) => {
        const plain = await pipe.generate({ ...common, prompt: "a red apple" });
        await pipe.setLoras([{ lora: await loadLora(lora), strength: 0.8 }]);
        const merged = await pipe.generate({ ...common, prompt: "a red apple" });
        // Else the comparison could not tell whether the page merged the LoRA.
        const { max } = pixelDifference(merged.images[0].data, plain.images[0].data);
        expect(max, "the LoRA changes the image").toBeGreaterThan(10 * TOLERANCE.max);
        return merged;
      },
    },
    {
      model: "tiny-inpainting",
      kind: /^inpainting \(an image and a painted mask\)$/,
      shows: [],
      fill: async (page) => {
        expect(await page.inputValue("#strength")).toBe("1");
        await page.setInputFiles("#init-image", {
          name: "init.png",
          mimeType: "image/png",
          buffer: Buffer.from(encodePng(picture)),
        });
        await paintStroke(page);
        // The page's mask: where the strokes' alpha is at least half (main.ts maskImage), white.
        const strokes = await canvasPixels(page, "mask-canvas");
        const data = new Uint8ClampedArray(strokes.data.length);
        for (let p = 0; p < data.length; p += 4)
          data.fill(strokes.data[p + 3] >= 128 ? 255 : 0, p, p + 3).fill(255, p + 3, p + 4);
        expect(data.filter((v, i) => i % 4 === 0 && v === 255).length, "painted pixels").toBeGreaterThan(0);
        paintedMask = { width: strokes.width, height: strokes.height, data };
      },
      node: (pipe, common) => {
        if (!paintedMask) throw new Error("no mask was painted");
        return pipe.inpaint({ ...common, initImage: picture, mask: paintedMask, strength: 1 });
      },
    },
  ];

  it(
    "shows each family's inputs and generates the library's image: unconditional, class (with and without a 'no class'), KL-f8 scale_by_std, BERT text, layout, super-resolution, segmentation, CLIP text with a LoRA, big inpainting",
    async () => {
      const device = await Device.create();
      const page = await demo.open(WEBGPU, `${CACHED_PROFILE}-families`);
      try {
        for (const family of FAMILIES) {
          const start = performance.now();
          const tokenizer = family.tokenizer?.();
          const files = [
            ...[".safetensors", ".yaml"].map((ext) => join(fixtures, `${family.model}${ext}`)),
            ...(tokenizer?.files ?? []),
          ];
          await page.evaluate(() => {
            document.body.dataset.model = "";
          });
          await page.setInputFiles("#model-files", files);
          await page.waitForFunction(() => ["described", "error"].includes(document.body.dataset.model ?? ""));
          if ((await page.evaluate(() => document.body.dataset.model)) === "error") {
            throw new Error(`${family.model}: ${(await pageError(page)).text}`);
          }
          expect(await page.textContent("#model-kind"), family.model).toMatch(family.kind);
          const shown = await page.$$eval(FIELDSETS.map((id) => `#${id}`).join(","), (sets) =>
            sets.filter((s) => !(s as HTMLElement).hidden).map((s) => s.id),
          );
          expect(shown, family.model).toEqual(family.shows);
          await family.fill(page);
          await page.fill("#seed", "11");
          await page.selectOption("#sampler", "ddim");
          await page.fill("#steps", "3");
          await page.selectOption("#precision", "f32");
          await page.fill("#preview-every", "0");
          await page.click("#generate");
          const state = await settled(page, PAGE_TIMEOUT_MS);
          if (state === "error") throw new Error(`${family.model}: the page failed: ${(await pageError(page)).text}`);
          const pageSeconds = (performance.now() - start) / 1000;

          const pipe = await LatentDiffusion.load(join(fixtures, `${family.model}.safetensors`), {
            device,
            config: join(fixtures, `${family.model}.yaml`),
            vocab: tokenizer?.vocab,
          });
          const expected = (await family.node(pipe, { seed: 11, sampler: "ddim", steps: 3 })).images[0];
          pipe.dispose();
          const actual = await canvasPixels(page, "result");
          expect([actual.width, actual.height], family.model).toEqual([expected.width, expected.height]);
          const { max, mean } = pixelDifference(actual.data, expected.data);
          console.log(
            `${family.model}: page ${pageSeconds.toFixed(1)} s, ${actual.width}×${actual.height}; pixels: max |Δ| ${max}, mean |Δ| ${mean.toFixed(4)}`,
          );
          expect(max, family.model).toBeLessThanOrEqual(TOLERANCE.max);
          expect(mean, family.model).toBeLessThanOrEqual(TOLERANCE.mean);
        }
      } finally {
        device.destroy();
        await page.context().close();
      }
    },
    PAGE_TIMEOUT_MS + 600_000,
  );
});

/** An opaque RGBA gradient. */
function gradient(width: number, height: number): Uint8ClampedArray {
  return new Uint8ClampedArray(width * height * 4).map((_, i) => (i % 4 === 3 ? 255 : (i * 7) % 256));
}

/** Paints a diagonal brush stroke on the init image's mask by mouse. */
async function paintStroke(page: Page): Promise<void> {
  await page.waitForSelector("#init-area:not([hidden])");
  await page.locator("#mask-canvas").scrollIntoViewIfNeeded();
  const box = await page.locator("#mask-canvas").boundingBox();
  if (!box) throw new Error("the mask canvas is not shown");
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.9, box.y + box.height * 0.8, { steps: 8 });
  await page.mouse.up();
}
