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

export async function acquireGpu(dawnFlags: string[] = []): Promise<GpuHandle> {
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
  // Unquantised timestamps: Dawn rounds them to 65.5 µs otherwise, too coarse for kernel timings.
  const flags = dawnFlags.some((f) => f.includes("timestamp_quantization"))
    ? dawnFlags
    : [...dawnFlags, "disable-dawn-features=timestamp_quantization"];
  return { gpu: mod.create(flags), runtime: "node" };
}
