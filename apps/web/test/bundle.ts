import { readFileSync } from "node:fs";
import { join } from "node:path";

/** A chunk of Vite's build manifest (build.manifest: true). */
interface ManifestChunk {
  file: string;
  src?: string;
  name?: string;
  isEntry?: boolean;
  imports?: string[];
  dynamicImports?: string[];
}

export interface BundleGraph {
  chunks: Record<string, ManifestChunk>;
  /** The manifest key of the page's entry chunk. */
  entry: string;
}

/** Vite's stand-in for a Node built-in (node:fs, node:path …) in a browser build. */
const NODE_STAND_IN = "__vite-browser-external";

export function bundleImports(outDir: string): BundleGraph {
  const chunks = JSON.parse(readFileSync(join(outDir, ".vite", "manifest.json"), "utf8")) as Record<
    string,
    ManifestChunk
  >;
  const entries = Object.keys(chunks).filter((key) => chunks[key].isEntry);
  if (entries.length !== 1) throw new Error(`expected one entry chunk in the build, found ${entries.join(", ")}`);
  return { chunks, entry: entries[0] };
}

/**
 * The chunks loaded with `from` (its static imports, transitively) that stand in for Node built-ins, each named
 * with the chain of sources that imports it. Dynamic imports are not followed: they load only when called.
 */
export function nodeOnlyImports(graph: BundleGraph, from: string): string[] {
  const found: string[] = [];
  const seen = new Set<string>();
  const visit = (key: string, chain: string[]) => {
    if (seen.has(key)) return;
    seen.add(key);
    const chunk = graph.chunks[key];
    if (!chunk) throw new Error(`the build manifest has no chunk ${key}`);
    const here = [...chain, chunk.src ?? key];
    if ((chunk.name ?? key).includes(NODE_STAND_IN)) found.push(here.join(" → "));
    for (const next of chunk.imports ?? []) visit(next, here);
  };
  visit(from, []);
  return found;
}

/** Dynamically imported chunks that need Node built-ins: code the page carries but never runs. */
export function lazyNodeOnlyChunks(graph: BundleGraph): string[] {
  return Object.entries(graph.chunks)
    .filter(([key, chunk]) => !chunk.isEntry && nodeOnlyImports(graph, key).length > 0)
    .filter(([key]) => !key.includes(NODE_STAND_IN))
    .map(([key, chunk]) => chunk.src ?? key);
}
