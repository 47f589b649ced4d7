import { Device } from "@ldm/tensor";
import { describe, expect, it } from "vitest";
import { runCli } from "./helpers/run-cli.ts";

const probe = await Device.create();
const lavapipe = /llvmpipe/.test(probe.describe());
probe.destroy();

describe("--cpu-lanes", () => {
  it("is refused where lavapipe has no such width, with the usage exit code, by every command that makes a device", async () => {
    for (const args of [["device"], ["generate", "red apple"], ["vae", "decode", "latent.safetensors"]]) {
      const run = await runCli(...args, "--cpu-lanes", "12");
      expect(run.code, args[0]).toBe(2);
      expect(run.err).toMatch(/--cpu-lanes <n>' argument '12' is invalid\. Allowed choices are 4, 8, 16/);
    }
  });

  it.skipIf(!lavapipe)("ldm device --cpu-lanes 16 gives lavapipe 16-lane subgroups, and says so", async () => {
    const run = await runCli("device", "--cpu-lanes", "16");
    expect(run.err).toBe("");
    expect(run.code).toBe(0);
    expect(run.out).toMatch(/features: .*subgroups \(16 lanes\)/);
    expect(run.out).toMatch(/smoke computation: .* ok/);
  });
});
