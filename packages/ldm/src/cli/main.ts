import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { packageFile } from "../package-files.ts";
import { UserError } from "./errors.ts";

type Register = (program: Command) => void;

/** The commands in the order `ldm --help` lists them, each with the module that registers it. */
const COMMANDS: readonly (readonly [string, () => Promise<Register>])[] = [
  ["device", async () => (await import("./commands/device.ts")).registerDevice],
  ["info", async () => (await import("./commands/info.ts")).registerInfo],
  ["convert", async () => (await import("./commands/convert.ts")).registerConvert],
  ["tokenize", async () => (await import("./commands/tokenize.ts")).registerTokenize],
  ["validate", async () => (await import("./commands/validate.ts")).registerValidate],
  ["generate", async () => (await import("./commands/generate.ts")).registerGenerate],
  ["upscale", async () => (await import("./commands/upscale.ts")).registerUpscale],
  ["serve", async () => (await import("./commands/serve.ts")).registerServe],
  ["loss", async () => (await import("./commands/loss.ts")).registerLoss],
  ["vae", async () => (await import("./commands/vae.ts")).registerVae],
  ["bench", async () => (await import("./commands/bench.ts")).registerBench],
];

/** @ldm/ldm's version: its package.json is two folders up from src/cli/ and from the published dist/cli/ alike. */
function packageVersion(): string {
  const manifest = packageFile("package.json");
  return (JSON.parse(readFileSync(manifest, "utf8")) as { version: string }).version;
}

/**
 * The program with every command, or with only the command `argv` runs where it names one: a command's module
 * (and what it imports) loads only when the command is registered, so `ldm generate` loads neither the server
 * nor the checkpoint converter. The program's own options take no values, so the first argument that is not an
 * option names the command; any other name (help, a typo) gets every command, for the list and the suggestions.
 */
export async function buildProgram(argv: readonly string[] = []): Promise<Command> {
  const program = new Command("ldm")
    .description("Latent diffusion (Stable Diffusion v1/v2) on WebGPU")
    .version(packageVersion(), "-V, --version", "print the version of @ldm/ldm")
    .option("--verbose", "print stack traces and extra detail")
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(s) });
  const named = argv.slice(2).find((a) => !a.startsWith("-"));
  const run = COMMANDS.filter(([name]) => name === named);
  const registers = await Promise.all((run.length ? run : COMMANDS).map(([, load]) => load()));
  for (const register of registers) register(program);
  for (const cmd of program.commands) cmd.exitOverride();
  return program;
}

/** Runs the CLI; returns the exit code (0 ok, 1 user or runtime error, 2 bad usage). */
export async function main(argv: string[]): Promise<number> {
  const program = await buildProgram(argv);
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
