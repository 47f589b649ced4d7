import type { Command } from "commander";
import { DEFAULT_TOLERANCE, type OutputCheck, validate } from "../../validate/index.ts";
import { UserError } from "../errors.ts";

interface ValidateFlags {
  checkpoint: string;
  config?: string;
  dump: string;
  atol?: string;
  rtol?: string;
  f16?: boolean;
}

function tolerance(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!(value >= 0) || !Number.isFinite(value))
    throw new UserError(`${flag} must be a non-negative number, got "${text}"`);
  return value;
}

function tolerances(): string {
  const { f32, f16 } = DEFAULT_TOLERANCE;
  return `${f32.components.rtol} in f32, ${f16.components.rtol} in f16 (sample loops: ${f32.sample.rtol}, ${f16.sample.rtol})`;
}

const exp = (v: number) => (Number.isFinite(v) ? v.toExponential(2) : String(v));

function line(c: OutputCheck): string {
  const verdict = c.pass ? "PASS" : "FAIL";
  if (c.problem) return `${c.key.padEnd(40)} ${verdict}  ${c.problem}`;
  const nonFinite = c.nonFinite ? `  ${c.nonFinite} NaN/Inf values` : "";
  const note = c.note ? `  (${c.note})` : "";
  return `${c.key.padEnd(40)} max abs err ${exp(c.maxAbs)}  max|ref| ${exp(c.maxRef)}  rel ${exp(c.relative)}  (bound ${exp(c.bound)})  ${verdict}${nonFinite}${note}`;
}

export function registerValidate(program: Command): void {
  program
    .command("validate")
    .description("run the model on a reference dump's inputs and compare every output with the reference")
    .requiredOption("--checkpoint <path>", "single .safetensors or .ckpt/.pt checkpoint, or diffusers folder")
    .option(
      "--config <yaml>",
      "original-style YAML config (default: <stem>.yaml beside the checkpoint, else detected from the weights)",
    )
    .requiredOption("--dump <file>", "reference dump (.safetensors with <component>.in.* / <component>.out.* tensors)")
    .option("--atol <number>", "absolute tolerance for every output (default 0)")
    .option("--rtol <number>", `tolerance relative to max|reference| for every output (default ${tolerances()})`)
    .option("--f16", "run in half precision (needs shader-f16)")
    .action(async (flags: ValidateFlags) => {
      const atol = tolerance("--atol", flags.atol);
      const rtol = tolerance("--rtol", flags.rtol);
      let report: Awaited<ReturnType<typeof validate>>;
      try {
        report = await validate({ ...flags, atol, rtol });
      } catch (e) {
        // The CLI prints one line per error; a weights mismatch lists every key below its first line.
        const [first, ...details] = (e as Error).message.split("\n");
        if (details.length) console.error(details.join("\n"));
        throw new UserError(first);
      }
      if (report.config && !flags.config) console.log(`config: ${report.config} (beside the checkpoint)`);
      if (report.assumptions.length) {
        console.log(
          `config detected from the weights (pass --config to set it), assuming: ${report.assumptions.join("; ")}`,
        );
      }
      console.log(`${report.dtype}: an output passes when max abs err ≤ bound = atol + rtol·max|ref|, with no NaN/Inf`);
      for (const check of report.checks) console.log(line(check));
      for (const note of report.skipped) console.log(`skipped ${note}`);
      const failed = report.checks.filter((c) => !c.pass).length;
      if (failed) throw new UserError(`${failed} of ${report.checks.length} outputs failed`);
      console.log(`all ${report.checks.length} outputs passed`);
    });
}
