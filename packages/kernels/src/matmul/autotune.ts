/**
 * Opt-in autotuning of kernel tile configs per adapter.
 *
 * The tile heuristics (tiles.ts, conv2d's chooseConvTiles) are fixed rules from measurements on one
 * adapter. With autotuning enabled on a device, every GEMM or convolution whose shape class has no tuned
 * choice yet runs with the heuristic's config and is remembered; `tunePending()` then times a few candidate
 * configs for each remembered class on inputs of its first shape and keeps the fastest. Choices persist in
 * a store: a JSON file per adapter in Node (`~/.cache/ldm-ts/autotune-<adapter>.json`), memory elsewhere.
 *
 * Kernels record their dispatches synchronously, so timing cannot happen inside the call that first meets
 * a shape class: tuning is a separate, awaited step (after a warm-up pass of a model, say). Without
 * `enableAutotune` (or `LDM_AUTOTUNE=1` through `autotuneFromEnv`) nothing changes: tests stay
 * deterministic.
 */
import { type Device, userCacheHome } from "@ldm/tensor";

/** Where tuned choices live: class key → the chosen config as JSON text. */
export interface TuneStore {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
}

export class MemoryTuneStore implements TuneStore {
  private readonly entries = new Map<string, string>();
  get(key: string): string | undefined {
    return this.entries.get(key);
  }
  set(key: string, value: string): void {
    this.entries.set(key, value);
  }
}

type NodeFs = typeof import("node:fs");

/** node:fs without an import statement, so that this module also loads in browsers (null there). */
function nodeFs(): NodeFs | null {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  return (proc?.getBuiltinModule?.("node:fs") as NodeFs | undefined) ?? null;
}

/**
 * Choices kept in one JSON file ({ key: config }), read once and rewritten whole on every change (through a
 * temporary file and a rename, so a crash never leaves half a file). A file that is not such an object is
 * reported and replaced, since it only caches measurements.
 */
export class FileTuneStore implements TuneStore {
  private readonly entries = new Map<string, string>();

  constructor(
    readonly path: string,
    private readonly fs: NodeFs = FileTuneStore.requireFs(),
    warn: (message: string) => void = console.warn,
  ) {
    if (!fs.existsSync(path)) return;
    const text = fs.readFileSync(path, "utf8");
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      warn(`autotune: ignoring the unreadable cache ${path} (${(e as Error).message}); it will be rewritten`);
      return;
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      warn(`autotune: ignoring the cache ${path}: expected a JSON object of tuned configs; it will be rewritten`);
      return;
    }
    for (const [key, value] of Object.entries(parsed)) this.entries.set(key, JSON.stringify(value));
  }

  private static requireFs(): NodeFs {
    const fs = nodeFs();
    if (!fs) throw new Error("autotune: a file cache needs Node's fs module; use MemoryTuneStore in a browser");
    return fs;
  }

  get(key: string): string | undefined {
    return this.entries.get(key);
  }

  set(key: string, value: string): void {
    this.entries.set(key, value);
    const object = Object.fromEntries([...this.entries].map(([k, v]) => [k, JSON.parse(v)]));
    const dir = this.path.slice(0, Math.max(0, this.path.lastIndexOf("/")));
    if (dir) this.fs.mkdirSync(dir, { recursive: true });
    const temporary = `${this.path}.${process.pid}.tmp`;
    this.fs.writeFileSync(temporary, `${JSON.stringify(object, null, 2)}\n`);
    this.fs.renameSync(temporary, this.path);
  }
}

/** A file-name-safe name of an adapter, e.g. "mesa-llvmpipe-mesa-25-0-7-llvm-15-0-6". */
export function adapterSlug(info: { vendor: string; architecture: string; device: string; description: string }) {
  const text = [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(" ");
  const slug = text
    .toLowerCase()
    .replace(/[^a-z0-9.]+/g, "-")
    .replace(/\./g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 80);
  return slug || "unknown-adapter";
}

/** The default cache file of an adapter: $LDM_AUTOTUNE_CACHE or $XDG_CACHE_HOME/ldm-ts or ~/.cache/ldm-ts. */
export function defaultCachePath(env: Record<string, string | undefined>, slug: string): string {
  return `${env.LDM_AUTOTUNE_CACHE || `${userCacheHome(env)}/ldm-ts`}/autotune-${slug}.json`;
}

/** A shape class met without a tuned choice: its candidates and how to time one of them. */
export interface TuneRequest<T> {
  /** The shape class, e.g. "gemm:NN:f32f32f32:m4096:n512:k512" (sizes rounded to powers of two). */
  key: string;
  /** The heuristic's choice first; duplicates are dropped. */
  candidates: T[];
  /** Milliseconds of one call with a candidate, on inputs of the class's first shape. */
  measure: (candidate: T) => Promise<number>;
  /** Whether a stored value is a config this kernel accepts (a stale or foreign entry is re-tuned). */
  valid: (value: unknown) => value is T;
}

export interface TuneOutcome {
  key: string;
  chosen: unknown;
  /** Median ms per distinct candidate, in candidate order. */
  times: { candidate: unknown; ms: number }[];
}

export class Autotuner {
  private readonly pending = new Map<string, TuneRequest<unknown>>();

  constructor(
    readonly store: TuneStore,
    /** Timed calls per candidate (after one that compiles it); the median counts. */
    readonly samples = 3,
  ) {}

  /**
   * The tuned choice of a class, or null; a class without one is remembered for `tunePending` (its first
   * request wins: later ones of the same class are the same kernel on other sizes).
   */
  choice<T>(request: TuneRequest<T>): T | null {
    const stored = this.store.get(request.key);
    if (stored !== undefined) {
      const value: unknown = JSON.parse(stored);
      if (request.valid(value)) return value;
    }
    if (!this.pending.has(request.key)) this.pending.set(request.key, request as TuneRequest<unknown>);
    return null;
  }

  /** Classes waiting to be tuned. */
  get waiting(): string[] {
    return [...this.pending.keys()];
  }

  /**
   * Times the candidates of every waiting class and stores the fastest of each. A first round compiles
   * every candidate (not counted); then the candidates take turns, one call each per round, so that a
   * change of machine load during tuning affects all of them alike (timing them one after another let
   * a load drift decide: 1024³ candidates measured 4.2, 3.5, 2.6, 2.0 s in their order of turn).
   */
  async tunePending(log?: (line: string) => void): Promise<TuneOutcome[]> {
    const outcomes: TuneOutcome[] = [];
    for (const [key, request] of [...this.pending]) {
      this.pending.delete(key);
      const candidates = [...new Map(request.candidates.map((c) => [JSON.stringify(c), c])).values()];
      for (const candidate of candidates) await request.measure(candidate);
      const samples = candidates.map(() => [] as number[]);
      for (let round = 0; round < this.samples; round++) {
        for (const [i, candidate] of candidates.entries()) samples[i].push(await request.measure(candidate));
      }
      const times = candidates.map((candidate, i) => ({ candidate, ms: median(samples[i]) }));
      const best = times.reduce((a, b) => (b.ms < a.ms ? b : a));
      this.store.set(key, JSON.stringify(best.candidate));
      outcomes.push({ key, chosen: best.candidate, times });
      log?.(`autotune ${key}: ${times.map((t) => `${JSON.stringify(t.candidate)} ${t.ms.toFixed(2)} ms`).join(", ")}`);
    }
    return outcomes;
  }
}

const tuners = new WeakMap<Device, Autotuner>();

/** Turns autotuning on for a device (memory store unless one is given). */
export function enableAutotune(device: Device, options: { store?: TuneStore; samples?: number } = {}): Autotuner {
  const tuner = new Autotuner(options.store ?? new MemoryTuneStore(), options.samples);
  tuners.set(device, tuner);
  return tuner;
}

export function disableAutotune(device: Device): void {
  tuners.delete(device);
}

export function autotunerOf(device: Device): Autotuner | null {
  return tuners.get(device) ?? null;
}

/**
 * Enables autotuning when LDM_AUTOTUNE is 1 / true / on: with the adapter's cache file in Node, in memory
 * in a browser. Returns the tuner, or null when the variable is unset or off.
 */
export function autotuneFromEnv(
  device: Device,
  env: Record<string, string | undefined> = (globalThis as { process?: { env: Record<string, string> } }).process
    ?.env ?? {},
): Autotuner | null {
  const flag = (env.LDM_AUTOTUNE ?? "").trim().toLowerCase();
  if (flag === "" || flag === "0" || flag === "false" || flag === "off") return null;
  if (!["1", "true", "on"].includes(flag)) {
    throw new Error(`LDM_AUTOTUNE must be 1/true/on or 0/false/off, got '${env.LDM_AUTOTUNE}'`);
  }
  const store = nodeFs() ? new FileTuneStore(defaultCachePath(env, adapterSlug(device.info))) : new MemoryTuneStore();
  return enableAutotune(device, { store });
}

/** log2 of n rounded to the nearest power of two: shapes within a factor of √2 share a class. */
export function sizeClass(n: number): number {
  return n <= 1 ? 0 : Math.round(Math.log2(n));
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[sorted.length >> 1];
}

/**
 * GPU time a sample of calls should last. A GPU left idle between short samples clocks down: on an H200 (SM
 * clock 345 MHz idle, 1980 MHz under load) bursts of 2 GEMM calls read up to 5× their time within ~10 ms samples.
 */
export const TUNE_SAMPLE_MS = 10;
const MAX_CALLS_PER_SAMPLE = 100;

/**
 * Milliseconds per call: GPU time where the adapter has timestamps, else wall time to completion. A call that
 * takes less than TUNE_SAMPLE_MS is timed again, repeated within one recording to fill a sample (a GPU's
 * sub-millisecond kernels); slower ones (a CPU adapter's) are timed once.
 */
export async function timeCall(device: Pick<Device, "timeGpu">, run: () => void): Promise<number> {
  const timeCalls = async (calls: number) => {
    const start = performance.now();
    const gpu = await device.timeGpu(() => {
      for (let i = 0; i < calls; i++) run();
    });
    return (gpu ?? performance.now() - start) / calls;
  };
  const once = await timeCalls(1);
  const calls = Math.min(MAX_CALLS_PER_SAMPLE, Math.ceil(TUNE_SAMPLE_MS / Math.max(once, 1e-3)));
  return calls > 1 ? timeCalls(calls) : once;
}
