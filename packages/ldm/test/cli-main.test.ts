import { describe, expect, it } from "vitest";
import { buildProgram } from "../src/cli/main.ts";
import { runCli } from "./helpers/run-cli.ts";

const names = async (...args: string[]) => (await buildProgram(["node", "ldm", ...args])).commands.map((c) => c.name());
const ALL = [
  "device",
  "info",
  "convert",
  "tokenize",
  "validate",
  "generate",
  "upscale",
  "serve",
  "loss",
  "vae",
  "bench",
];

describe("ldm's program", () => {
  it("registers only the command that runs, after the program's own options", async () => {
    expect(await names("generate", "red apple", "--steps", "1")).toEqual(["generate"]);
    expect(await names("--verbose", "vae", "decode", "--help")).toEqual(["vae"]);
  });

  it("registers every command, in the order --help lists them, where none or no known one is named", async () => {
    expect(await names()).toEqual(ALL);
    expect(await names("--help")).toEqual(ALL);
    expect(await names("help", "generate")).toEqual(ALL);
    expect(await names("genrate")).toEqual(ALL);
  });

  it("a misspelt command still gets commander's suggestion and the usage exit code", async () => {
    const run = await runCli("genrate", "red apple");
    expect(run.code).toBe(2);
    expect(run.err).toMatch(/unknown command 'genrate'[\s\S]*Did you mean generate\?/);
  });
});
