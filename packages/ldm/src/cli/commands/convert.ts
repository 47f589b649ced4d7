import { convertCheckpoint } from "@ldm/weights/node";
import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import { asUserError } from "./info.ts";

interface ConvertFlags {
  half?: boolean;
  ema?: boolean;
}

export function registerConvert(program: Command): void {
  program
    .command("convert")
    .description(
      "rewrite a single-file checkpoint (a PyTorch .ckpt/.pt, read as data and never executed, or a .safetensors) as .safetensors with the same keys",
    )
    .argument("<input>", "a .ckpt, .pt, .pth or .safetensors file")
    .argument("<output>", "the .safetensors file to write (written whole, then moved into place)")
    .option("--half", "store floating-point weights as float16 (schedule buffers keep their dtype)")
    .option("--ema", "write the EMA copy of the UNet (model_ema.*) as model.diffusion_model.*, and drop model_ema.*")
    .action(async (input: string, output: string, flags: ConvertFlags) => {
      const tty = process.stderr.isTTY === true;
      const bar = new SingleBar({
        format: "converting {bar} {percentage}% | {value}/{total} MB",
        formatValue: (v, _o, type) => (type === "value" || type === "total" ? (v / 2 ** 20).toFixed(1) : String(v)),
        stream: process.stderr,
        hideCursor: true,
        noTTYOutput: !tty,
        notTTYSchedule: 5000,
      });
      let started = false;
      try {
        const result = await asUserError(() =>
          convertCheckpoint(input, output, {
            half: flags.half,
            ema: flags.ema,
            onProgress(done, total) {
              if (!started) bar.start(total, 0);
              started = true;
              bar.update(done);
            },
          }),
        );
        bar.stop();
        console.log(`${output}: ${result.tensors} tensors, ${(result.bytes / 2 ** 20).toFixed(1)} MiB`);
      } finally {
        if (started) bar.stop();
      }
    });
}
