/** Finds the WebGPU entry point: `navigator.gpu` in a browser, the `webgpu` package (Dawn) in Node. */
export interface GpuHandle {
  gpu: GPU;
  /** "browser" or "node" */
  runtime: "browser" | "node";
}

export const NO_ADAPTER_HELP =
  "No WebGPU adapter was found. " +
  "On Debian bookworm install a Vulkan driver that Dawn accepts (Mesa >= 25 lavapipe from bookworm-backports): " +
  "`echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list && " +
  "apt-get update && apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1` " +
  "(or run `bash scripts/setup-system.sh` from the ldm.ts repository). " +
  "In a browser, use one with WebGPU enabled (Chromium headless needs --enable-unsafe-webgpu).";

function isNode(): boolean {
  return typeof process !== "undefined" && typeof process.versions?.node === "string";
}

/**
 * Dawn toggles requested in Node unless turned off: `vulkan_enable_f16_on_nvidia` (Dawn hides shader-f16 on
 * NVIDIA's Vulkan driver without it) and `allow_unsafe_apis` (subgroup matrices, i.e. tensor cores, are exposed
 * only with it); ONNX Runtime's WebGPU backend enables the same pair.
 */
export const GPU_FEATURE_TOGGLES = ["allow_unsafe_apis", "vulkan_enable_f16_on_nvidia"] as const;

/**
 * The flags given to dawn.node's create(): the caller's, with each `enable-`/`disable-dawn-features` list merged
 * into one flag (Dawn reads one value per key), plus `toggles` enabled and timestamp quantisation disabled
 * (Dawn rounds timestamps to 65.5 µs otherwise, too coarse for kernel timings) unless the caller says otherwise.
 */
export function dawnCreateFlags(flags: readonly string[], toggles: readonly string[] = GPU_FEATURE_TOGGLES): string[] {
  const lists = new Map<string, string[]>([
    ["enable-dawn-features", [...toggles]],
    ["disable-dawn-features", []],
  ]);
  const others: string[] = [];
  for (const flag of flags) {
    const eq = flag.indexOf("=");
    const list = lists.get(flag.slice(0, eq));
    if (eq < 0 || !list) others.push(flag);
    else
      list.push(
        ...flag
          .slice(eq + 1)
          .split(",")
          .filter(Boolean),
      );
  }
  const enabled = new Set(lists.get("enable-dawn-features"));
  const disabled = new Set(lists.get("disable-dawn-features"));
  if (!enabled.has("timestamp_quantization")) disabled.add("timestamp_quantization");
  for (const toggle of disabled) enabled.delete(toggle);
  const merged = [...others];
  if (enabled.size) merged.push(`enable-dawn-features=${[...enabled].join(",")}`);
  if (disabled.size) merged.push(`disable-dawn-features=${[...disabled].join(",")}`);
  return merged;
}

/** lavapipe's SIMD widths, in lanes per subgroup: it takes its width from LP_NATIVE_VECTOR_WIDTH, 32 bits a lane. */
export const CPU_LANES = [4, 8, 16] as const;
export const CPU_LANES_VARIABLE = "LP_NATIVE_VECTOR_WIDTH";
/** lavapipe's width without LP_NATIVE_VECTOR_WIDTH (Mesa caps its default at 256 bits, AVX-512 cores too). */
export const LAVAPIPE_DEFAULT_LANES = 8;
export const SHADER_CACHE_VARIABLE = "MESA_SHADER_CACHE_DIR";

/**
 * Where Mesa should keep the shaders of a `lanes`-wide lavapipe: the user's cache (`userDir`, MESA_SHADER_CACHE_DIR
 * as the process started; undefined: Mesa's default) at lavapipe's default width, a folder of the width's own
 * otherwise. llvmpipe's disk-cache key leaves the vector width out (lp_disk_cache_create hashes the CPU's features
 * and the perf flags), and a cache that runs of both widths had shared served a 16-lane run convolutions with wrong
 * numbers, which the same run computed right from an empty cache (benchmarks/RESULTS.md): each width keeps its own.
 */
export function shaderCacheDir(lanes: number, userDir: string | undefined, env: CacheEnv): string | undefined {
  if (lanes === LAVAPIPE_DEFAULT_LANES) return userDir;
  return `${userDir ?? userCacheHome(env)}/mesa-shader-cache-${lanes}-lanes`;
}

export type CacheEnv = Record<string, string | undefined>;

/** The user's cache folder: $XDG_CACHE_HOME, else ~/.cache (Windows: %USERPROFILE%/.cache). */
export function userCacheHome(env: CacheEnv): string {
  return env.XDG_CACHE_HOME || `${env.HOME || env.USERPROFILE || "."}/.cache`;
}

/**
 * The LP_NATIVE_VECTOR_WIDTH that gives lavapipe `lanes`-wide subgroups, given the value now in the environment
 * and the devices this process has open. lavapipe reads the variable into one process-wide width each time a
 * device is made, and every open device compiles its later kernels at that width while our kernels keep the
 * subgroup size their device reported: so the width may change only while no device is open.
 */
export function cpuLanesWidth(lanes: number, current: string | undefined, openDevices: number): string {
  if (!(CPU_LANES as readonly number[]).includes(lanes)) {
    throw new Error(`cpuLanes: ${lanes} is not one of lavapipe's SIMD widths (${CPU_LANES.join(", ")} lanes)`);
  }
  const width = String(32 * lanes);
  if (current !== undefined && current !== width && openDevices > 0) {
    throw new Error(
      `cpuLanes: ${lanes} lanes need ${CPU_LANES_VARIABLE}=${width}, but ${openDevices} open device(s) of this process run with ${current}; lavapipe's width is process-wide, so destroy them first`,
    );
  }
  return width;
}

export async function acquireGpu(
  dawnFlags: string[] = [],
  toggles: readonly string[] = GPU_FEATURE_TOGGLES,
): Promise<GpuHandle> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu && !isNode()) return { gpu: nav.gpu, runtime: "browser" };
  if (!isNode()) throw new Error(`This browser exposes no navigator.gpu. ${NO_ADAPTER_HELP}`);
  // Hidden from bundlers so a browser build never pulls in the native addon.
  const specifier = "webgpu";
  let mod: { create: (flags: string[]) => GPU; globals: Record<string, unknown> };
  try {
    mod = await import(/* @vite-ignore */ specifier);
  } catch (e) {
    throw new Error(`Cannot load the 'webgpu' package (Dawn for Node): ${(e as Error).message}`);
  }
  // Dawn needs its GPU* classes and enums (GPUBufferUsage, …) as globals.
  for (const [name, value] of Object.entries(mod.globals)) {
    if (!(name in globalThis)) (globalThis as Record<string, unknown>)[name] = value;
  }
  return { gpu: mod.create(dawnCreateFlags(dawnFlags, toggles)), runtime: "node" };
}

type Immediate = (callback: (...args: unknown[]) => void, ...args: unknown[]) => unknown;
type ClearImmediate = (handle: unknown) => void;
type ImmediateGlobals = { setImmediate: Immediate; clearImmediate: ClearImmediate };

// Node's own timers, taken at load: a test's fake timers installed later would never fire Dawn's polls.
const nodeSetTimeout = globalThis.setTimeout;
const nodeClearTimeout = globalThis.clearTimeout;
/** Handles of setImmediate calls deferred to the timer queue. */
const deferred = new WeakSet<object>();
let waiting = 0;
/** Waits in progress that poll every tick (no backoff): any one of them keeps the polls at a tick. */
let eagerWaiting = 0;
/** When the current run of overlapping waits began. */
let waitStart = 0;
let savedSetImmediate: Immediate | null = null;
let clearImmediateWrapped = false;

/** The longest gap between polls of a backing-off wait, and the share of the time waited so far that one gap may be. */
const POLL_BACKOFF = { maxMs: 8, share: 1 / 50 };

/**
 * The gap before the next poll of a wait that backs off, `elapsedMs` into it: a fiftieth of the time waited so far
 * (so a wait ends at most 2% later than its work: a sampling step's readback, ~100 ms on the built-in model, at
 * most 2 ms), capped at 8 ms (125 polls a second).
 */
export function pollDelayMs(elapsedMs: number): number {
  return Math.min(POLL_BACKOFF.maxMs, Math.max(0, elapsedMs) * POLL_BACKOFF.share);
}

/**
 * Awaits `promise` with Dawn's polling slowed from a busy loop to one poll per timer tick (about 1 ms).
 *
 * While a promise of dawn.node is pending, it polls for finished GPU work by re-arming `setImmediate`, which
 * keeps the main thread busy for the whole wait and takes a core from a CPU adapter running that work. For the
 * wait, the global setImmediate (which dawn.node looks up on every poll; Node's own internals do not) defers to
 * the timer queue instead (the main thread's CPU time in a wait drops about tenfold: benchmarks/RESULTS.md,
 * "Built-in model"). Other code's setImmediate
 * callbacks in that window run up to a tick later. clearImmediate stays wrapped from the first wait on, so a
 * deferred handle can be cleared later too (Node's own clearImmediate would corrupt its lists given a timer).
 *
 * `backoff` (a CPU adapter's waits): the polls then thin out as the wait grows (pollDelayMs), since on a CPU
 * adapter every poll wakes the main thread on a core the kernels run on, a long wait (a UNet call on lavapipe:
 * 25–40 s) polls tens of thousands of times, and a few milliseconds of latency are nothing beside it.
 */
export async function awaitDawn<T>(promise: Promise<T>, backoff = false): Promise<T> {
  const g = globalThis as unknown as ImmediateGlobals;
  if (!clearImmediateWrapped) {
    const original = g.clearImmediate;
    g.clearImmediate = (handle) =>
      handle && deferred.has(handle as object)
        ? nodeClearTimeout(handle as ReturnType<typeof setTimeout>)
        : original(handle);
    clearImmediateWrapped = true;
  }
  if (!backoff) eagerWaiting++;
  if (waiting++ === 0) {
    waitStart = performance.now();
    savedSetImmediate = g.setImmediate;
    g.setImmediate = (callback, ...args) => {
      const delay = eagerWaiting > 0 ? 0 : pollDelayMs(performance.now() - waitStart);
      const handle = nodeSetTimeout(callback, delay, ...args);
      deferred.add(handle);
      return handle;
    };
  }
  try {
    return await promise;
  } finally {
    if (!backoff) eagerWaiting--;
    if (--waiting === 0 && savedSetImmediate) {
      g.setImmediate = savedSetImmediate;
      savedSetImmediate = null;
    }
  }
}
