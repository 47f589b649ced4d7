import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { validate } from "../src/validate/index.ts";

// reference/make_odd_size_dump.py: tiny-sd1's UNet (one halving) on a 5×7 latent. The Downsample gives 3×4, so
// each Upsample must reach the 5×7 skip connection (nearest, torch's size= rounding) instead of doubling to 6×8.
const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));

const device = await useDevice();

describe("UNet on a latent that does not halve cleanly (5×7)", () => {
  // Tolerances: DEFAULT_TOLERANCE in src/validate/index.ts states and justifies them (f32 1e-4, f16 1e-2 of max|ref|).
  it.each(["f32", "f16"] as const)("matches PyTorch (upsampling to the skip's size) in %s", async (dtype) => {
    const report = await validate({
      checkpoint: join(DUMPS, "tiny-sd1.safetensors"),
      config: join(DUMPS, "tiny-sd1.yaml"),
      dump: join(DUMPS, "tiny-sd1.unet-5x7.dump.safetensors"),
      f16: dtype === "f16",
      device,
    });
    expect(report.components).toEqual(["unet"]);
    expect(report.checks.map((c) => c.key)).toEqual(["unet.out.eps"]);
    const [check] = report.checks;
    console.log(
      `${dtype} unet.out.eps 5×7: max abs ${check.maxAbs.toExponential(2)}, rel ${check.relative.toExponential(2)}`,
    );
    expect(check.nonFinite).toBe(0);
    expect(check.pass, `${check.relative}`).toBe(true);
    expect(report.skipped).toEqual([]);
  });
});
