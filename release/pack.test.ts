/**
 * The packages as npm users get them, outside this repository: `pnpm build`, `pnpm pack` for each package
 * (publishConfig: dist entry points, workspace:* → the version), `npm install` of the five tarballs into a fresh
 * project in the temporary folder, then the library, the `ldm` command, the declarations and a Vite browser build
 * from there, the build generating in headless Chromium. `pnpm release:check` runs it, and CI (.ci/run). The npm registry serves the packages' own
 * dependencies (webgpu, commander, …; --prefer-offline takes them from npm's cache once fetched); TypeScript and
 * Vite are the workspace's.
 */
import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { build, preview } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CACHED_PROFILE,
  canvasPixels,
  openChromium,
  PIXEL_TOLERANCE,
  pixelDifference,
  settled,
  WEBGPU,
} from "../apps/web/test/harness.ts";
import { decodePng } from "../packages/ldm/src/image/png.ts";

const root = resolve(import.meta.dirname, "..");
const PACKAGES = ["tensor", "weights", "kernels", "nn", "ldm"];
/** LDM_KEEP_PACK=1 pnpm release:check keeps the temporary folder for a look. */
const keep = Boolean(process.env.LDM_KEEP_PACK);

/** Runs a command; a failure names the command and ends with its output, so CI's log says what broke. */
async function run(command: string, args: string[], cwd: string, timeoutS = 300): Promise<string> {
  try {
    // A user's shell, not pnpm's script environment (its npm_config_* would reach npm and npx).
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(npm|pnpm)_/i.test(k)));
    env.XDG_RUNTIME_DIR ??= "/tmp";
    const { stdout, stderr } = await promisify(execFile)(command, args, {
      cwd,
      env,
      timeout: timeoutS * 1000,
      maxBuffer: 64 << 20,
    });
    return stdout + stderr;
  } catch (e) {
    const { stdout = "", stderr = "", message } = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`\`${command} ${args.join(" ")}\` in ${cwd} failed: ${message}\n${(stdout + stderr).slice(-4000)}`);
  }
}

/** The ```ts block after "In Node" in @ldm/ldm's README: what npm users are told to run. */
const README_EXAMPLE = (() => {
  const readme = readFileSync(join(root, "packages/ldm/README.md"), "utf8");
  const block = /In Node[\s\S]*?```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  if (!block) throw new Error("packages/ldm/README.md has no ```ts block after 'In Node'");
  return block;
})();
/** The same run as the README's example, on the command line. */
const README_CLI = ["red apple", "--seed", "42", "--steps", "20", "--sampler", "euler"];

interface Tarball {
  dir: string;
  path: string;
  bytes: number;
  entries: string[];
}

let work: string;
let project: string;
/** The Vite app's build (web/dist), made by the build test and served to Chromium by the next. */
let webBuild: string;
const tarballs: Tarball[] = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "ldm-pack-"));
  await run("pnpm", ["-s", "build"], root);
  for (const dir of PACKAGES) {
    const out = join(work, "tarballs", dir);
    await run("pnpm", ["pack", "--pack-destination", out], join(root, "packages", dir));
    const made = readdirSync(out);
    if (made.length !== 1) throw new Error(`pnpm pack in packages/${dir} left ${made.join(", ") || "nothing"}`);
    const path = join(out, made[0]);
    const entries = (await run("tar", ["-tzf", path], out)).split("\n").filter(Boolean);
    tarballs.push({ dir, path, bytes: statSync(path).size, entries });
  }
  const sizes = tarballs.map(
    (t) => `${t.path.split("/").pop()} ${(t.bytes / 2 ** 20).toFixed(2)} MiB (${t.entries.length} files)`,
  );
  console.log(`tarballs: ${sizes.join(", ")}`);
  project = join(work, "project");
  webBuild = join(project, "web", "dist");
  cpSync(join(import.meta.dirname, "consumer"), project, { recursive: true });
  // The README's Node example, verbatim: run as JavaScript below, type-checked as TypeScript (tsconfig.json).
  writeFileSync(join(project, "readme.mjs"), README_EXAMPLE);
  writeFileSync(join(project, "readme.ts"), README_EXAMPLE);
  const npm = ["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"];
  await run("npm", [...npm, ...tarballs.map((t) => t.path)], project);
});

afterAll(() => {
  if (work && !keep) rmSync(work, { recursive: true, force: true });
  if (keep) console.log(`kept ${work}`);
});

const tarball = (dir: string) => tarballs.find((t) => t.dir === dir) as Tarball;

describe("the tarballs", () => {
  it("carry the built JavaScript, declarations, README and licence; no sources, tests or fixtures", () => {
    for (const t of tarballs) {
      const files = t.entries.map((e) => e.replace(/^package\//, ""));
      expect(files, t.dir).toEqual(expect.arrayContaining(["package.json", "README.md", "LICENSE", "dist/index.js"]));
      expect(files, t.dir).toContain("dist/index.d.ts");
      const stray = files.filter(
        (f) => /(^|\/)(test|tests|fixtures|src)\//.test(f) || /\.test\.|\.tsbuildinfo$/.test(f),
      );
      expect(stray, `${t.dir}: files users do not need`).toEqual([]);
      expect(
        files.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts")),
        `${t.dir}: TypeScript sources`,
      ).toEqual([]);
    }
  });

  it("publish dist entry points and the version, not the workspace's", () => {
    for (const t of tarballs) {
      const text = readFileSync(join(project, "node_modules", "@ldm", t.dir, "package.json"), "utf8");
      expect(text, t.dir).not.toMatch(/workspace:|"\.\/src\//);
      expect(JSON.parse(text).publishConfig, t.dir).toBeUndefined();
    }
  });

  it("@ldm/ldm carries the built-in model, the vocabularies with their notices, and the bin", () => {
    const files = tarball("ldm").entries.map((e) => e.replace(/^package\//, ""));
    expect(files).toEqual(
      expect.arrayContaining([
        "models/emoji-ldm/emoji-ldm.safetensors",
        "models/emoji-ldm/emoji-ldm.yaml",
        "models/emoji-ldm/README.md",
        "models/emoji-ldm/tokenizer/vocab.json",
        "vocab/clip/bpe_simple_vocab_16e6.txt.gz",
        "vocab/clip/README.md",
        "vocab/bert/vocab.txt",
        "vocab/bert/README.md",
        "dist/cli/bin.js",
      ]),
    );
  });

  it("are small but for the built-in model", () => {
    const model = statSync(join(root, "packages/ldm/models/emoji-ldm/emoji-ldm.safetensors")).size;
    for (const t of tarballs) {
      const limit = t.dir === "ldm" ? model + 4 * 2 ** 20 : 2 ** 20;
      expect(t.bytes, `${t.dir}: ${t.bytes} bytes`).toBeLessThan(limit);
    }
  });
});

describe("in a project outside the workspace", () => {
  it("`npx ldm --help` lists the commands, `npx ldm --version` says the version", async () => {
    const help = await run("npx", ["--no", "--", "ldm", "--help"], project, 60);
    expect(help).toMatch(/Usage: ldm/);
    expect(help).toMatch(/generate \[options\]/);
    const version = JSON.parse(readFileSync(join(root, "packages/ldm/package.json"), "utf8")).version;
    expect((await run("npx", ["--no", "--", "ldm", "--version"], project, 60)).trim()).toBe(version);
  });

  it("the README's Node example generates the same pixels as `npx ldm generate` with its settings", async () => {
    await run("npx", ["--no", "--", "ldm", "generate", ...README_CLI, "--out", "cli.png"], project);
    await run("node", ["readme.mjs"], project);
    const cli = decodePng(readFileSync(join(project, "cli.png")), "ldm generate's PNG");
    const library = decodePng(readFileSync(join(project, "apple.png")), "the README example's PNG");
    expect([cli.width, cli.height]).toEqual([64, 64]);
    expect([library.width, library.height]).toEqual([cli.width, cli.height]);
    expect(new Set(cli.data).size, "an image of one colour").toBeGreaterThan(16);
    expect(Buffer.from(library.data).equals(Buffer.from(cli.data)), "the two images' pixels differ").toBe(true);
  });

  it("TypeScript resolves the declarations (tsc --noEmit, checking them: skipLibCheck off)", async () => {
    // The consumer's @types/node is the workspace's: users of the Node entry points have their own.
    const config = JSON.parse(readFileSync(join(project, "tsconfig.json"), "utf8"));
    config.compilerOptions.typeRoots = [join(root, "node_modules/@types")];
    config.compilerOptions.types = ["node"];
    writeFileSync(join(project, "tsconfig.json"), JSON.stringify(config));
    await run(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], project, 120);
  });

  it("a plain Vite app builds for the browser without the Node-only modules (file loading, Dawn)", async () => {
    // The page streams the built-in model from beside itself: the model folder goes into the build (public/).
    cpSync(join(project, "node_modules/@ldm/ldm/models/emoji-ldm"), join(project, "web/public/model"), {
      recursive: true,
    });
    const output = await build({
      root: join(project, "web"),
      configFile: false,
      logLevel: "error",
      build: { outDir: webBuild, emptyOutDir: true },
    });
    const chunks = (Array.isArray(output) ? output : [output]).flatMap((o) => ("output" in o ? o.output : []));
    const modules = chunks.flatMap((c) => (c.type === "chunk" ? c.moduleIds : []));
    const ours = modules
      .filter((m) => m.includes("/node_modules/@ldm/"))
      .map((m) => m.replace(/.*\/node_modules\//, ""));
    expect(ours, "the page's library code").toContain("@ldm/ldm/dist/pipeline/stable-diffusion.js");
    expect(ours, "StableDiffusion.load's stand-in").toContain("@ldm/ldm/dist/pipeline/node-files.browser.js");
    const nodeOnly = modules.filter((m) => m.includes("__vite-browser-external") || /\/node_modules\/webgpu\//.test(m));
    expect(nodeOnly, "modules that need Node in the browser bundle").toEqual([]);
    const bytes = chunks.reduce((n, c) => n + (c.type === "chunk" ? c.code.length : 0), 0);
    console.log(
      `vite build: ${chunks.length} files, ${(bytes / 1024).toFixed(0)} KiB of JavaScript, ${ours.length} @ldm modules`,
    );
  });

  it("the Vite app generates in headless Chromium (WebGPU on SwiftShader) what `npx ldm generate` does", async () => {
    const [prompt, seed, steps] = ["red apple", "42", "2"];
    const cli = ["generate", prompt, "--seed", seed, "--steps", steps, "--sampler", "ddim", "--cfg", "7.5"];
    await run("npx", ["--no", "--", "ldm", ...cli, "--out", "cli-2.png"], project);
    const expected = decodePng(readFileSync(join(project, "cli-2.png")), "ldm generate's PNG");
    const server = await preview({
      root: join(project, "web"),
      configFile: false,
      logLevel: "error",
      build: { outDir: webBuild },
      preview: { port: 0, host: "127.0.0.1" },
    });
    const url = server.resolvedUrls?.local[0];
    const opened = url
      ? await openChromium(`${url}?${new URLSearchParams({ prompt, seed, steps })}`, WEBGPU, CACHED_PROFILE)
      : undefined;
    try {
      if (!opened) throw new Error("vite preview did not report its address");
      const state = await settled(opened.page, 240_000);
      if (state === "error") throw new Error(`the page failed: ${await opened.page.textContent("#status")}`);
      const actual = await canvasPixels(opened.page, "result");
      expect([actual.width, actual.height]).toEqual([expected.width, expected.height]);
      const difference = pixelDifference(actual.data, expected.data);
      console.log(
        `Chromium vs ldm generate: max |Δ| ${difference.max}, mean |Δ| ${difference.mean.toFixed(4)} (of 255)`,
      );
      expect(difference.max).toBeLessThanOrEqual(PIXEL_TOLERANCE.max);
      expect(difference.mean).toBeLessThanOrEqual(PIXEL_TOLERANCE.mean);
    } finally {
      await opened?.instance.close();
      await server.close();
    }
  });
});
