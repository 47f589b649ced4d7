import { Device, GPU_FEATURE_TOGGLES, selfTest } from "@ldm/tensor";
import type { Command } from "commander";
import { cpuLanesOf, cpuLanesOption } from "./pipeline-flags.ts";

export function registerDevice(program: Command): void {
  program
    .command("device")
    .description("print the WebGPU adapter, its limits and features, and run a smoke computation")
    .option("--no-f16", "do not enable shader-f16")
    .option(
      "--no-feature-toggles",
      `leave Dawn's defaults instead of enabling ${GPU_FEATURE_TOGGLES.join(", ")} (shader-f16 on NVIDIA, subgroup matrices)`,
    )
    .addOption(cpuLanesOption())
    .action(async (opts: { f16: boolean; featureToggles: boolean; cpuLanes?: string }) => {
      const device = await Device.create({
        disableF16: !opts.f16,
        featureToggles: opts.featureToggles,
        cpuLanes: cpuLanesOf(opts),
      });
      try {
        console.log(`adapter: ${device.describe()}`);
        const r = await selfTest(device);
        console.log(`smoke computation: ${r.elements} elements in ${r.ms.toFixed(1)} ms — ok`);
      } finally {
        device.destroy();
      }
    });
}
