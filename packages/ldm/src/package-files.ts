/**
 * Files @ldm/ldm ships beside its code (the built-in model, the vocabularies, package.json), in Node. Every module
 * that asks sits two folders below the package root, in src/ and in the built dist/ alike. A path join, not
 * `new URL(literal, import.meta.url)`, which bundlers would take for an asset and copy into a web build.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export function packageFile(...parts: string[]): string {
  return join(dirname(fileURLToPath(import.meta.url)), "..", ...parts);
}
