/**
 * Where `ldm generate` writes (--out, --grid), decided as users expect and checked before the model loads, so a
 * bad path fails at once instead of after minutes of sampling: a name with an image extension is a file (only
 * PNG is written), anything else a folder.
 */
import { closeSync, mkdirSync, openSync, statSync, unlinkSync } from "node:fs";
import { dirname, extname, join, resolve } from "node:path";
import type { Seed } from "../random/index.ts";
import { UserError } from "./errors.ts";

/** Extensions that name an image file; of these only .png is written (no other encoder ships). */
const IMAGE_EXTENSIONS = new Set([".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"]);

/** Whether `target` names a PNG file (else a folder); refuses other image formats. */
export function namesPngFile(flag: string, target: string): boolean {
  const extension = extname(target).toLowerCase();
  if (IMAGE_EXTENSIONS.has(extension) && extension !== ".png") {
    throw new UserError(`${flag} ${target}: only PNG is written; name a .png file`);
  }
  return extension === ".png";
}

/**
 * Makes the folder an output flag writes into (a .png file's folder, else the flag's own path) and proves it
 * writable by creating and removing a file there, as the write will; refuses a folder where a .png file must go.
 */
export function prepareOutput(flag: string, target: string): void {
  const file = namesPngFile(flag, target);
  const folder = file ? dirname(target) : target;
  const fail = (reason: string): never => {
    throw new UserError(`${flag} ${target}: cannot write into folder ${folder} (${reason})`);
  };
  if (file && kindOf(target) === "folder") {
    throw new UserError(`${flag} ${target} is a folder: a name ending in .png is written as a file; name another`);
  }
  try {
    makeFolder(resolve(folder), fail);
    const probe = file ? target : join(folder, `.ldm-write-check-${process.pid}`);
    const existed = kindOf(probe) === "file";
    // An existing file is opened for writing without truncating it; a new one is created and removed again.
    closeSync(openSync(probe, existed ? "r+" : "wx"));
    if (!existed) unlinkSync(probe);
  } catch (e) {
    if (e instanceof UserError) throw e;
    fail(errorCode(e));
  }
}

/** --out: a .png file (numbered -0, -1, … for several images), else a folder for ldm-<seed>-<i>.png. */
export function outputPaths(out: string | undefined, seed: Seed, count: number): string[] {
  const target = out ?? ".";
  if (namesPngFile("--out", target)) {
    if (count === 1) return [target];
    const stem = target.slice(0, -4);
    return Array.from({ length: count }, (_, i) => `${stem}-${i}.png`);
  }
  return Array.from({ length: count }, (_, i) => join(target, `ldm-${seed}-${i}.png`));
}

/**
 * mkdir -p, one level at a time from the nearest existing folder: Node 20's recursive mkdirSync spins forever
 * on some paths (under /proc it retries ENOENT without end).
 */
function makeFolder(folder: string, fail: (reason: string) => never): void {
  const missing: string[] = [];
  let at = folder;
  for (let kind = kindOf(at); kind === "absent"; kind = kindOf(at)) {
    missing.unshift(at);
    const parent = dirname(at);
    if (parent === at) fail("no such root");
    at = parent;
  }
  if (kindOf(at) !== "folder") fail(`${at} is not a folder`);
  for (const path of missing) mkdirSync(path);
}

/** What is at `path`; a file on the way (ENOTDIR) counts as absent, so the walk up finds and names that file. */
function kindOf(path: string): "absent" | "file" | "folder" {
  try {
    return statSync(path).isDirectory() ? "folder" : "file";
  } catch (e) {
    const code = errorCode(e);
    if (code === "ENOENT" || code === "ENOTDIR") return "absent";
    throw e;
  }
}

function errorCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}
