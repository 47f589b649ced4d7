import { Device, selfTest } from "@ldm/tensor";
import type { Command } from "commander";

export function registerDevice(program: Command): void {
  program
    .command("device")
    .description("print the WebGPU adapter, its limits and features, and run a smoke computation")
    .option("--no-f16", "do not enable shader-f16")
    .action(async (opts: { f16: boolean }) => {
      const device = await Device.create({ disableF16: !opts.f16 });
      try {
        console.log(`adapter: ${device.describe()}`);
        const r = await selfTest(device);
        console.log(`smoke computation: ${r.elements} elements in ${r.ms.toFixed(1)} ms — ok`);
      } finally {
        device.destroy();
      }
    });
}
