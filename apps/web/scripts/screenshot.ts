/**
 * apps/web/screenshot.png: the page after generating an image with the served model, in headless Chromium
 * (WebGPU on SwiftShader). `pnpm --filter @ldm/web screenshot`; LDM_WEB_MODEL picks another model folder.
 */
import { resolve } from "node:path";
import { CACHED_PROFILE, DemoPage, generate, pageError, settled, WEBGPU } from "../test/harness.ts";

const out = resolve(import.meta.dirname, "../screenshot.png");
const demo = await DemoPage.start();
try {
  const page = await demo.open(WEBGPU, CACHED_PROFILE);
  await page.setViewportSize({ width: 1100, height: 760 });
  await generate(page, {
    prompt: process.argv[2] ?? "a red apple",
    seed: 42,
    sampler: "ddim",
    steps: 20,
    guidance: 7.5,
    size: 64,
    precision: "auto",
    previewEvery: 5,
  });
  if ((await settled(page, 3_600_000)) === "error") throw new Error(`the page failed: ${(await pageError(page)).text}`);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`${out}: ${await page.textContent("#status")}`);
} finally {
  await demo.close();
}
