/**
 * The five packages' manifests as npm users get them (`pnpm pack` applies publishConfig): built JavaScript and
 * declarations under dist/, one version, and a build that knows every package and dependency. Cheap, no build;
 * release/pack.test.ts installs the real tarballs.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const root = resolve(import.meta.dirname, "..");

interface Manifest {
  name: string;
  version: string;
  license?: string;
  type?: string;
  engines?: { node?: string };
  sideEffects?: boolean;
  exports: Record<string, string>;
  types?: string;
  files?: string[];
  imports?: Record<string, unknown>;
  scripts?: Record<string, string>;
  publishConfig?: {
    exports?: Record<string, unknown>;
    imports?: Record<string, unknown>;
    types?: string;
    bin?: Record<string, string>;
  };
  dependencies?: Record<string, string>;
}

const readJson = <T>(path: string): T => JSON.parse(readFileSync(path, "utf8")) as T;
const PACKAGES = readdirSync(join(root, "packages")).filter((d) =>
  existsSync(join(root, "packages", d, "package.json")),
);
const manifest = (dir: string) => readJson<Manifest>(join(root, "packages", dir, "package.json"));
/** Subpaths for this repository's tests and benchmarks, not published. */
const WORKSPACE_ONLY = new Set(["./testing"]);
/** What the runtime must not need: development tools. */
const DEV_TOOLS = ["tsx", "typescript", "vitest", "vite", "@biomejs/biome"];

describe("package manifests", () => {
  it("are the five packages of the design card", () => {
    expect(PACKAGES.map((d) => manifest(d).name).sort()).toEqual(
      ["@ldm/kernels", "@ldm/ldm", "@ldm/nn", "@ldm/tensor", "@ldm/weights"].sort(),
    );
  });

  it("share one version, the newest in CHANGELOG.md", () => {
    const versions = new Set(PACKAGES.map((d) => manifest(d).version));
    expect([...versions], "the packages' versions differ").toHaveLength(1);
    const newest = /^## (\d+\.\d+\.\d+\S*)/m.exec(readFileSync(join(root, "CHANGELOG.md"), "utf8"))?.[1];
    expect(newest, "CHANGELOG.md's first '## x.y.z' heading").toBe([...versions][0]);
  });

  for (const dir of PACKAGES) {
    describe(dir, () => {
      const pkg = manifest(dir);

      it("declares licence, engines, module type, side effects and the files users need", () => {
        expect(pkg.license).toBe("Apache-2.0");
        expect(pkg.type).toBe("module");
        expect(pkg.engines?.node).toMatch(/^>=\s*20/);
        expect(pkg.sideEffects).toBe(false);
        expect(pkg.files).toContain("dist");
        expect(pkg.files?.filter((f) => /test|fixture|^src/.test(f))).toEqual([]);
        expect(existsSync(join(root, "packages", dir, "README.md"))).toBe(true);
      });

      it("publishes each source entry point as dist JavaScript with its declarations", () => {
        const expected: Record<string, unknown> = {};
        for (const [subpath, target] of Object.entries(pkg.exports)) {
          if (WORKSPACE_ONLY.has(subpath)) continue;
          const stem = /^\.\/src\/(.+)\.ts$/.exec(target)?.[1];
          expect(stem, `exports["${subpath}"] is a source file under src/ (the build compiles src/)`).toBeDefined();
          expect(existsSync(join(root, "packages", dir, target)), `${target} exists`).toBe(true);
          expected[subpath] = { types: `./dist/${stem}.d.ts`, import: `./dist/${stem}.js` };
        }
        expect(pkg.publishConfig?.exports, "publishConfig.exports mirrors exports").toEqual(expected);
        expect(pkg.publishConfig?.types).toBe(pkg.types?.replace(/^\.\/src\/(.+)\.ts$/, "./dist/$1.d.ts"));
      });

      it("publishes its internal imports (#…) as the same conditions over dist JavaScript", () => {
        const toDist = (target: unknown): unknown => {
          if (typeof target !== "string") {
            return Object.fromEntries(Object.entries(target as object).map(([k, v]) => [k, toDist(v)]));
          }
          expect(existsSync(join(root, "packages", dir, target)), `${target} exists`).toBe(true);
          return target.replace(/^\.\/src\/(.+)\.ts$/, "./dist/$1.js");
        };
        expect(pkg.publishConfig?.imports).toEqual(pkg.imports && toDist(pkg.imports));
      });

      it("keeps only what the build compiles (TypeScript, JavaScript with allowJs) and notes in src/: it copies nothing else", () => {
        const src = join(root, "packages", dir, "src");
        const build = readJson<{ compilerOptions?: { allowJs?: boolean } }>(
          join(root, "packages", dir, "tsconfig.build.json"),
        );
        const compiled = build.compilerOptions?.allowJs ? /\.(ts|js|md)$/ : /\.(ts|md)$/;
        const others = readdirSync(src, { recursive: true, withFileTypes: true })
          .filter((e) => e.isFile() && !compiled.test(e.name))
          .map((e) => join(e.parentPath, e.name).slice(root.length + 1));
        expect(
          others,
          "files the published package would lack (load them from outside src/, e.g. as ldm's models/)",
        ).toEqual([]);
      });

      it("packs only through pnpm, built first (prepack: scripts/prepack.mjs)", () => {
        expect(pkg.scripts?.prepack).toBe("node ../../scripts/prepack.mjs");
      });

      it("needs no development tool at run time and takes its siblings from the workspace", () => {
        const deps = pkg.dependencies ?? {};
        expect(DEV_TOOLS.filter((d) => d in deps)).toEqual([]);
        for (const [name, range] of Object.entries(deps)) {
          if (name.startsWith("@ldm/")) expect(range, name).toBe("workspace:*");
        }
      });

      it("builds after the packages it imports (tsconfig.build.json references them)", () => {
        const build = readJson<{ references?: { path: string }[] }>(join(root, "packages", dir, "tsconfig.build.json"));
        const referenced = (build.references ?? []).map((r) => r.path.split("/")[1]).sort();
        const siblings = Object.keys(pkg.dependencies ?? {})
          .filter((n) => n.startsWith("@ldm/"))
          .map((n) => PACKAGES.find((d) => manifest(d).name === n))
          .sort();
        expect(referenced).toEqual(siblings);
      });
    });
  }

  it("are all in the root build (tsconfig.build.json)", () => {
    const build = readJson<{ references: { path: string }[] }>(join(root, "tsconfig.build.json"));
    expect(build.references.map((r) => r.path.split("/")[1]).sort()).toEqual([...PACKAGES].sort());
  });

  it("give @ldm/ldm an `ldm` command compiled from src/cli/bin.ts", () => {
    const ldm = manifest("ldm");
    expect(ldm.publishConfig?.bin).toEqual({ ldm: "./dist/cli/bin.js" });
    expect(readFileSync(join(root, "packages/ldm/src/cli/bin.ts"), "utf8")).toMatch(/^#!\/usr\/bin\/env node\n/);
    expect(ldm.files).toEqual(expect.arrayContaining(["models", "vocab"]));
  });
});
