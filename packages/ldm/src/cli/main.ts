import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { packageFile } from "../package-files.ts";
import { registerBench } from "./commands/bench.ts";
import { registerConvert } from "./commands/convert.ts";
import { registerDevice } from "./commands/device.ts";
import { registerGenerate } from "./commands/generate.ts";
import { registerInfo } from "./commands/info.ts";
import { registerLoss } from "./commands/loss.ts";
import { registerServe } from "./commands/serve.ts";
import { registerTokenize } from "./commands/tokenize.ts";
import { registerUpscale } from "./commands/upscale.ts";
import { registerVae } from "./commands/vae.ts";
import { registerValidate } from "./commands/validate.ts";
import { UserError } from "./errors.ts";

/** @ldm/ldm's version: its package.json is two folders up from src/cli/ and from the published dist/cli/ alike. */
function packageVersion(): string {
  const manifest = packageFile("package.json");
  return (JSON.parse(readFileSync(manifest, "utf8")) as { version: string }).version;
}

export function buildProgram(): Command {
  const program = new Command("ldm")
    .description("Latent diffusion (Stable Diffusion v1/v2) on WebGPU")
    .version(packageVersion(), "-V, --version", "print the version of @ldm/ldm")
    .option("--verbose", "print stack traces and extra detail")
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(s) });
  registerDevice(program);
  registerInfo(program);
  registerConvert(program);
  registerTokenize(program);
  registerValidate(program);
  registerGenerate(program);
  registerUpscale(program);
  registerServe(program);
  registerLoss(program);
  registerVae(program);
  registerBench(program);
  for (const cmd of program.commands) cmd.exitOverride();
  return program;
}

/** Runs the CLI; returns the exit code (0 ok, 1 user or runtime error, 2 bad usage). */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.exitCode === 0) return 0;
      return 2;
    }
    const verbose = argv.includes("--verbose");
    const err = e as Error;
    if (verbose) console.error(err.stack ?? String(err));
    else console.error(`ldm: ${err instanceof UserError ? "" : "error: "}${err.message.split("\n")[0]}`);
    if (!verbose && err instanceof UserError && err.details) console.error(err.details);
    return 1;
  }
}
