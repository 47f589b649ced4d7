/**
 * The demo page built and served as it ships (vite build + vite preview) and driven in Debian's headless
 * Chromium: shared by the end-to-end test and the screenshot script.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { build, type PreviewServer, preview } from "vite";

export const repositoryRoot = resolve(import.meta.dirname, "../../..");
/** The model the page serves: LDM_WEB_MODEL (relative to the repository root, or absolute), else the built-in one. */
export const modelFolder = resolve(repositoryRoot, process.env.LDM_WEB_MODEL ?? "packages/ldm/models/emoji-ldm");
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** Chromium's own switches for a quiet, offline headless run (see the shared field notes). */
const QUIET = ["--disable-background-networking", "--disable-component-update", "--no-first-run"];
/**
 * WebGPU on SwiftShader (Chromium offers no other adapter on a machine without a GPU). Without
 * --disable-gpu-watchdog the GPU process is killed (exit code 5; "A valid external Instance reference no longer
 * exists" in the page) when SwiftShader's pipeline compiles and CPU-rendered submits run long on a busy machine.
 */
export const WEBGPU = ["--enable-unsafe-webgpu", "--disable-gpu-watchdog"];
/** Compiled pipelines persist here between runs (Chromium's GPU cache), so a rerun skips SwiftShader's compiles. */
export const CACHED_PROFILE = join(repositoryRoot, "node_modules", ".cache", "ldm-web-chromium");

export class DemoPage {
  private readonly running: (Browser | BrowserContext)[] = [];

  private constructor(
    private readonly server: PreviewServer,
    /** The build: index.html, assets/, model/, .vite/manifest.json. */
    readonly outDir: string,
    readonly url: string,
  ) {}

  /** Builds the app with `modelFolder` into a temporary folder and serves it on a free port. */
  static async start(): Promise<DemoPage> {
    if (!existsSync(modelFolder)) {
      throw new Error(`no model folder at ${modelFolder}: set LDM_WEB_MODEL to a folder with a .safetensors`);
    }
    assertChromium();
    process.env.LDM_WEB_MODEL = modelFolder;
    const outDir = await mkdtemp(join(tmpdir(), "ldm-web-"));
    const configFile = resolve(import.meta.dirname, "../vite.config.ts");
    await build({ configFile, logLevel: "error", build: { outDir, emptyOutDir: true, manifest: true } });
    const server = await preview({
      configFile,
      logLevel: "error",
      build: { outDir },
      preview: { port: 0, host: "127.0.0.1" },
    });
    const url = server.resolvedUrls?.local[0];
    if (!url) throw new Error("vite preview did not report its address");
    return new DemoPage(server, outDir, url);
  }

  /** The page in a new headless Chromium with `args`; with a profile folder, its caches persist between runs. */
  async open(args: string[], userDataDir?: string): Promise<Page> {
    const { page, instance } = await openChromium(this.url, args, userDataDir);
    this.running.push(instance);
    return page;
  }

  async close(): Promise<void> {
    for (const instance of this.running.splice(0)) await instance.close();
    await this.server.close();
    await rm(this.outDir, { recursive: true, force: true });
  }
}

function assertChromium(): void {
  if (!existsSync(chromiumPath)) {
    throw new Error(`no Chromium at ${chromiumPath}: apt-get install chromium (scripts/setup-system.sh does)`);
  }
}

/**
 * `url` in a new headless Chromium with `args`; with a profile folder, its caches persist between runs. The
 * caller closes `instance`.
 */
export async function openChromium(
  url: string,
  args: string[],
  userDataDir?: string,
): Promise<{ page: Page; instance: Browser | BrowserContext }> {
  assertChromium();
  const options = { executablePath: chromiumPath, headless: true, args: [...QUIET, ...args] };
  const instance = userDataDir
    ? await chromium.launchPersistentContext(userDataDir, options)
    : await chromium.launch(options);
  const page = await instance.newPage();
  await page.goto(url);
  return { page, instance };
}

/**
 * How far the page's image (SwiftShader) may be from the CLI's (lavapipe) for the same f32 run. Both sides
 * compute in f32 from the same CPU noise (the torch-compatible generator), so they differ only by rounding:
 * SwiftShader and lavapipe compile the same WGSL to different machine code, and the kernels pick different tiles
 * per adapter (subgroup sizes 4 and 8), so sums run in different orders and exp/sqrt carry different ulp errors.
 * The size of such differences is known from the Node side: our f32 sample loops (10–20 guided steps, decoder
 * included) stay within 1.4e-5 of max|reference| of PyTorch's (packages/ldm/src/validate), i.e. about 0.004 of
 * one 8-bit level; what remains visible is a value that sits near a half-level and rounds the other way, by one
 * level. The bound allows 3 levels anywhere and a mean of 0.1 level (one value in ten off by one): a wrong seed,
 * sampler, step count or guidance moves most pixels by tens of levels.
 */
export const PIXEL_TOLERANCE = { max: 3, mean: 0.1 };

/** Largest and mean absolute difference of two equally long 8-bit pixel arrays, in levels. */
export function pixelDifference(actual: ArrayLike<number>, expected: ArrayLike<number>): { max: number; mean: number } {
  if (actual.length !== expected.length)
    throw new Error(`pixel arrays differ in length: ${actual.length} vs ${expected.length}`);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / actual.length };
}

export interface Controls {
  prompt: string;
  seed: number;
  sampler: string;
  steps: number;
  guidance: number;
  size: number;
  precision: "auto" | "f32" | "f16";
  /** Steps between previews; 0 for none. */
  previewEvery: number;
}

/** Types the settings into the form and clicks Generate. */
export async function generate(page: Page, controls: Controls): Promise<void> {
  await page.fill("#prompt", controls.prompt);
  await page.fill("#seed", String(controls.seed));
  await page.selectOption("#sampler", controls.sampler);
  await page.fill("#steps", String(controls.steps));
  await page.fill("#guidance", String(controls.guidance));
  await page.fill("#width", String(controls.size));
  await page.fill("#height", String(controls.size));
  await page.selectOption("#precision", controls.precision);
  await page.fill("#preview-every", String(controls.previewEvery));
  await page.click("#generate");
}

/** Waits until the page is done or has failed (its data-state); a timeout says how far the page got. */
export async function settled(page: Page, timeoutMs: number): Promise<"done" | "error"> {
  try {
    await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state ?? ""), null, {
      timeout: timeoutMs,
      polling: 1000,
    });
  } catch (e) {
    const status = await page.textContent("#status").catch(() => "unknown");
    throw new Error(
      `the page did not finish within ${timeoutMs / 1000} s; its status: ${status} (${(e as Error).message})`,
    );
  }
  return (await page.evaluate(() => document.body.dataset.state)) as "done" | "error";
}

/** The error box: its kind (see src/errors.ts) and text. */
export async function pageError(page: Page): Promise<{ kind?: string; text: string }> {
  return page.evaluate(() => {
    const box = document.getElementById("error");
    return { kind: box?.dataset.kind, text: box?.textContent ?? "" };
  });
}

export async function canvasPixels(page: Page, id: string): Promise<{ width: number; height: number; data: number[] }> {
  return page.evaluate((canvasId) => {
    const canvas = document.getElementById(canvasId) as HTMLCanvasElement;
    const context = canvas.getContext("2d") as CanvasRenderingContext2D;
    const { width, height } = canvas;
    return { width, height, data: Array.from(context.getImageData(0, 0, width, height).data) };
  }, id);
}
