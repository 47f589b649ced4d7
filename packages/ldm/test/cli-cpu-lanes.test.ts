import { readFileSync } from "node:fs";
import { CPU_LANES_VARIABLE, Device, defaultCpuLanes } from "@ldm/tensor";
import { describe, expect, it } from "vitest";
import { runCli } from "./helpers/run-cli.ts";
import { spawnCli } from "./helpers/spawn-cli.ts";

const probe = await Device.create();
const lavapipe = /llvmpipe/.test(probe.describe());
probe.destroy();
const cpuInfo = process.platform === "linux" ? readFileSync("/proc/cpuinfo", "utf8") : undefined;
const sixteenByDefault = lavapipe && defaultCpuLanes(process.arch, cpuInfo) === 16;
/** `ldm device` as a user runs it: without the suite's LP_NATIVE_VECTOR_WIDTH (vitest.config.ts). */
const device = (...args: string[]) =>
  spawnCli(["device", ...args], { timeoutMs: 110_000, env: { [CPU_LANES_VARIABLE]: undefined } });

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

  it.skipIf(!sixteenByDefault)(
    "16 lanes by default on x86-64 cores with AVX2; --cpu-lanes 8 and LP_NATIVE_VECTOR_WIDTH keep 8",
    async () => {
      const lanes = (out: string) => out.match(/subgroups \((\d+) lanes\)/)?.[1];
      const byDefault = await device();
      expect(byDefault.code, byDefault.err).toBe(0);
      expect(lanes(byDefault.out)).toBe("16");
      const flag = await device("--cpu-lanes", "8");
      expect(flag.code, flag.err).toBe(0);
      expect(lanes(flag.out)).toBe("8");
      const env = await spawnCli(["device"], { timeoutMs: 110_000, env: { [CPU_LANES_VARIABLE]: "256" } });
      expect(env.code, env.err).toBe(0);
      expect(lanes(env.out)).toBe("8");
    },
  );
});
