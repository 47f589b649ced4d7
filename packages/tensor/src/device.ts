import {
  acquireGpu,
  awaitDawn,
  CPU_LANES_VARIABLE,
  cpuLanesWidth,
  GPU_FEATURE_TOGGLES,
  NO_ADAPTER_HELP,
  SHADER_CACHE_VARIABLE,
  shaderCacheDir,
} from "./gpu.ts";
import { BufferPool, type PoolStats } from "./pool.ts";

/** MESA_SHADER_CACHE_DIR as the process started, before cpuLanes pointed it at a width's own folder. */
const userShaderCache = typeof process !== "undefined" ? process.env?.[SHADER_CACHE_VARIABLE] : undefined;

export interface DeviceOptions {
  /** Node only: toggles passed to Dawn's create(), e.g. "enable-dawn-features=...". */
  dawnFlags?: string[];
  /**
   * Node only: request Dawn's toggles that expose shader-f16 on NVIDIA and subgroup matrices (GPU_FEATURE_TOGGLES).
   * Default true; false leaves Dawn's defaults.
   */
  featureToggles?: boolean;
  powerPreference?: GPUPowerPreference;
  /** Do not enable shader-f16 even where the adapter has it (exercises the f32 path). */
  disableF16?: boolean;
  /**
   * Do not enable subgroup matrices even where the adapter has them: every kernel takes its present path (the
   * GPU script's before/after of the tensor-core kernels).
   */
  disableSubgroupMatrix?: boolean;
  /** Use this GPU instead of acquiring one (a browser page passing navigator.gpu, a test double). */
  gpu?: GPU;
  /**
   * Node only, lavapipe only (other adapters ignore it): SIMD lanes per subgroup, 4, 8 or 16, set through
   * LP_NATIVE_VECTOR_WIDTH before Dawn loads the driver; lavapipe's own default is 8. On AVX2 cores 16 lanes ran
   * SD 1.5's UNet call 1.07× as fast (interleaved runs: 20.5–21.3 s against 21.8–22.2 s), but every kernel compiles
   * 2–3 times as long the first time (Mesa keeps them in its shader cache after that: for a width other than 8 in a
   * folder of its own, shaderCacheDir): benchmarks/RESULTS.md. The width is process-wide, so it cannot change while
   * another Device is open.
   */
  cpuLanes?: number;
  /**
   * Give free buffers back (BufferPool.releasesMemory): one-pass work such as a VAE decode takes the memory of
   * free buffers instead of adding to it, and a pipeline run ends by destroying the pool's free buffers, as
   * A1111 empties torch's cache after a job. Default: on GPUs, where free buffers were 535 of the 2953 MiB that
   * SD 1.5's 512² f16 run held, and with it the pool holds what is live; off on CPU adapters, where the memory is
   * the process's own and making the buffers again cost lavapipe ~3 s of a 256² run (benchmarks/RESULTS.md).
   */
  releaseMemory?: boolean;
}

export interface DeviceFeatures {
  shaderF16: boolean;
  timestampQuery: boolean;
  subgroups: boolean;
  /** `chromium-experimental-subgroup-matrix`: cooperative matrices (tensor cores, simdgroup matrices, XMX). */
  subgroupMatrix: boolean;
}

/** One subgroup-matrix shape the adapter supports (GPUAdapterInfo.subgroupMatrixConfigs). */
export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

const SUBGROUP_MATRIX = "chromium-experimental-subgroup-matrix";

export interface DeviceLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupSizeX: number;
  maxComputeWorkgroupSizeY: number;
  maxComputeWorkgroupSizeZ: number;
  maxComputeWorkgroupsPerDimension: number;
  maxStorageBuffersPerShaderStage: number;
  minStorageBufferOffsetAlignment: number;
  minUniformBufferOffsetAlignment: number;
}

export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** Whether the adapter is a CPU rasteriser (lavapipe, SwiftShader): tile strategies differ. */
  isCpu: boolean;
}

/**
 * The dtype a model runs in when the caller names none ("auto"): f16 on GPU adapters with shader-f16, f32 on CPU
 * adapters and wherever shader-f16 is missing. On a GPU, f16 halves the weights' and activations' memory and
 * bandwidth and, with native half arithmetic (and subgroup matrices), raises throughput. On CPU adapters it saves
 * memory but no time: llvmpipe has no native f16 arithmetic, and SD 1.5 on lavapipe ran its UNet step in 59.0 s
 * (f16) against 62.6 s (f32) and its VAE decode in 72.8 s against 84.0 s, within that machine's load noise
 * (benchmarks/RESULTS.md, "End to end"), so there f32's exactness wins.
 */
export function defaultDtype(adapter: { isCpu: boolean; shaderF16: boolean }): "f16" | "f32" {
  return adapter.shaderF16 && !adapter.isCpu ? "f16" : "f32";
}

/** A buffer (or part of one) bound to a storage slot of a kernel. */
export interface BufferSlice {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/** GPU time of one kernel (pipeline label) over a profiled recording (Device.profileGpu). */
export interface KernelTime {
  label: string;
  dispatches: number;
  ms: number;
}

/** Dispatches timed per query set: 2 timestamps each, within WebGPU's 4096 queries per set. */
const PROFILE_SET_DISPATCHES = 2048;

interface DispatchProfiler {
  sets: GPUQuerySet[];
  labels: string[];
}

export interface Dispatch {
  pipeline: GPUComputePipeline;
  /** Storage buffers at bindings 1..n (binding 0 is the uniform block when `uniforms` is given). */
  buffers: readonly (GPUBuffer | BufferSlice)[];
  /** Which of `buffers` the kernel may write (their contentsVersion changes); absent: none. */
  writes?: readonly boolean[];
  uniforms?: Uint8Array;
  workgroups: readonly [number, number?, number?];
}

/** What Device.record captured of one dispatch or copy, before its bind group is made. */
type CapturedCommand =
  | {
      kind: "dispatch";
      pipeline: GPUComputePipeline;
      uniforms: Uint8Array | null;
      buffers: { buffer: GPUBuffer; offset: number; size?: number }[];
      /** The buffers it may write (Dispatch.writes). */
      written: GPUBuffer[];
      workgroups: [number, number, number];
    }
  | { kind: "copy"; src: GPUBuffer; srcOffset: number; dst: GPUBuffer; dstOffset: number; size: number };

interface Capture {
  commands: CapturedCommand[];
  /** Buffers device.write filled while recording. */
  written: Set<GPUBuffer>;
}

type ReplayCommand =
  | {
      kind: "dispatch";
      pipeline: GPUComputePipeline;
      bindGroup: GPUBindGroup;
      written: GPUBuffer[];
      workgroups: [number, number, number];
    }
  | Extract<CapturedCommand, { kind: "copy" }>;

/**
 * The dispatches and copies of one recorded call (Device.record), replayed by `run()` without the JavaScript
 * that made them: the same pipelines, buffers and uniforms, so the same bits. It holds the buffers the call's
 * intermediates lived in (taken out of the pool until dispose()) and its own copy of the uniforms. The tensors
 * the call used from outside (weights, inputs) and its results must stay alive while it is replayed: run() checks
 * that each still holds its buffer. Write new input values into the input tensors (device.write) before a run().
 */
export class Recording {
  private disposed = false;

  /** @internal (Device.record makes recordings) */
  constructor(
    private readonly pool: BufferPool,
    /** Records the commands again. */
    private readonly replay: () => void,
    /** Dispatches replayed per run. */
    readonly dispatches: number,
    /** Buffers of tensors from outside the call, with their pool acquisition numbers when recorded. */
    private readonly outside: ReadonlyMap<GPUBuffer, number>,
    /** The intermediates' buffers, taken out of the pool. */
    private readonly held: readonly GPUBuffer[],
    private readonly uniformBuffer: GPUBuffer | null,
  ) {}

  /** Records the recorded commands again (submitted in the usual batches; await a read or sync for them). */
  run(): void {
    if (this.disposed) throw new Error("Recording.run: the recording was disposed");
    for (const [buffer, acquisition] of this.outside) {
      if (this.pool.isFree(buffer) || this.pool.acquisition(buffer) !== acquisition) {
        throw new Error(
          "Recording.run: a tensor the recorded call used besides its intermediates (an input, a weight, a result) was disposed since; keep them alive while replaying",
        );
      }
    }
    this.replay();
  }

  /** Gives the intermediates' buffers back to the pool. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const buffer of this.held) this.pool.release(buffer);
    this.uniformBuffer?.destroy();
  }
}

export class DeviceLostError extends Error {}
export class GpuOutOfMemoryError extends Error {}
/** A buffer larger than the adapter allows in one piece (maxBufferSize): a limit, not a lack of free memory. */
export class DeviceLimitError extends GpuOutOfMemoryError {}
/** A kernel's WGSL failed to compile; the message has the compiler's messages with line numbers. */
export class KernelCompileError extends Error {}

const LIMIT_NAMES: (keyof DeviceLimits)[] = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "minStorageBufferOffsetAlignment",
  "minUniformBufferOffsetAlignment",
];

const UNIFORM_RING_BYTES = 256 * 1024;
/**
 * Recorded dispatches are submitted in batches of this many, so the GPU starts on a forward while the host
 * still records the rest of it; 64 was no faster on lavapipe (benchmarks/RESULTS.md, "Built-in model").
 */
const DISPATCHES_PER_SUBMIT = 16;
/**
 * Bind groups are cached by pipeline and bound ranges: the pool hands a repeated forward the same buffers and the
 * uniform ring the same offsets, so from its second call on a model reuses every one. Dawn's createBindGroup was
 * 17 µs a call on lavapipe (idle machine) and 40–70 µs on the H200's host; the cache is cleared when full.
 */
const MAX_CACHED_BIND_GROUPS = 4096;
const STORAGE_USAGE = 0x80 /* STORAGE */ | 0x04 /* COPY_SRC */ | 0x08 /* COPY_DST */;
/**
 * On CPU adapters every tensor buffer can also be bound as a uniform window: GEMMs, Winograd and attention read
 * packed operands through them there (llvmpipe gathers uniform-buffer loads without the per-lane branches of
 * storage loads; matmul/tiles.ts). No GPU path binds a tensor as a uniform, so GPUs do not get the usage, which
 * drivers may serve with a stricter memory placement.
 */
const CPU_STORAGE_USAGE = STORAGE_USAGE | 0x40; /* UNIFORM */

type TrackedDisposable = { dispose(): void; readonly disposed: boolean };

/**
 * One WebGPU device with its command recorder, pipeline cache and buffer pool.
 *
 * Dispatches are recorded into an open compute pass and submitted every DISPATCHES_PER_SUBMIT and on
 * flush()/sync()/readback. The GPU object and the adapter are held here for the device's whole life:
 * dawn.node crashes at random when either is garbage-collected while the device lives.
 */
export class Device {
  readonly pool: BufferPool;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  /** timeGpu's queries: the first pass it opens writes the start, every pass the end (the last one's stays). */
  private passTimestamps: { querySet: GPUQuerySet; started: boolean } | null = null;
  private profiler: DispatchProfiler | null = null;
  private dispatchesInBatch = 0;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly bindGroups = new Map<string, GPUBindGroup>();
  /** Ids for bind-group keys; a destroyed buffer's id is never reused, so its stale entries never match. */
  private readonly objectIds = new WeakMap<object, number>();
  private nextObjectId = 1;
  private readonly uniformRing: GPUBuffer;
  private readonly uniformStaging = new Uint8Array(UNIFORM_RING_BYTES);
  private uniformUsed = 0;
  private readonly errors: Error[] = [];
  /** Error-scope checks still in flight; sync() and reads wait for them so no error arrives late. */
  private readonly pendingChecks = new Set<Promise<void>>();
  private lostMessage: string | null = null;
  private readonly lostPromise: Promise<never>;
  private readonly scopes: Set<TrackedDisposable>[] = [];
  private capture: Capture | null = null;
  private destroyed = false;
  /** contentsVersion's numbers: the count of changes when a buffer last changed. */
  private readonly versions = new WeakMap<GPUBuffer, number>();
  private changes = 0;

  private constructor(
    readonly gpu: GPU,
    readonly adapter: GPUAdapter,
    readonly gpuDevice: GPUDevice,
    readonly runtime: "browser" | "node",
    readonly info: AdapterSummary,
    readonly limits: DeviceLimits,
    readonly features: DeviceFeatures,
    /** The subgroup-matrix shapes usable on this device (empty without the feature). */
    readonly subgroupMatrixConfigs: readonly SubgroupMatrixConfig[],
  ) {
    this.pool = new BufferPool(
      (bytes) => this.createStorageBuffer(bytes),
      (buffer) => this.changed(buffer),
      () => this.flush(),
    );
    this.uniformRing = gpuDevice.createBuffer({
      size: UNIFORM_RING_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: "ldm uniform ring",
    });
    this.lostPromise = gpuDevice.lost.then((info) => {
      this.lostMessage = `WebGPU device lost (${info.reason}): ${info.message}`;
      throw new DeviceLostError(this.lostMessage);
    });
    this.lostPromise.catch(() => {});
    gpuDevice.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
      this.errors.push(asError(ev.error));
    };
  }

  /** Devices created and not yet destroyed in this process (lavapipe's width may change only when there are none). */
  private static open = 0;

  static async create(options: DeviceOptions = {}): Promise<Device> {
    let gpu: GPU;
    let runtime: "browser" | "node";
    const lanes = options.cpuLanes;
    if (lanes !== undefined && !options.gpu && typeof process !== "undefined" && process.env) {
      process.env[CPU_LANES_VARIABLE] = cpuLanesWidth(lanes, process.env[CPU_LANES_VARIABLE], Device.open);
      const cache = shaderCacheDir(lanes, userShaderCache, process.env);
      if (cache === undefined) delete process.env[SHADER_CACHE_VARIABLE];
      else process.env[SHADER_CACHE_VARIABLE] = cache;
    }
    if (options.gpu) {
      gpu = options.gpu;
      runtime = typeof process !== "undefined" && process.versions?.node ? "node" : "browser";
    } else {
      ({ gpu, runtime } = await acquireGpu(
        options.dawnFlags,
        options.featureToggles === false ? [] : GPU_FEATURE_TOGGLES,
      ));
    }
    const adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference });
    if (!adapter) throw new Error(NO_ADAPTER_HELP);

    const wanted: GPUFeatureName[] = [];
    const has = (f: string) => adapter.features.has(f);
    if (has("shader-f16") && !options.disableF16) wanted.push("shader-f16");
    if (has("timestamp-query")) wanted.push("timestamp-query");
    if (has("subgroups")) wanted.push("subgroups" as GPUFeatureName);
    if (has(SUBGROUP_MATRIX) && !options.disableSubgroupMatrix) wanted.push(SUBGROUP_MATRIX as GPUFeatureName);

    const requiredLimits: Record<string, number> = {};
    for (const name of LIMIT_NAMES) {
      const v = (adapter.limits as unknown as Record<string, number>)[name];
      if (typeof v === "number") requiredLimits[name] = v;
    }
    const gpuDevice = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits, label: "ldm" });

    const limits = {} as DeviceLimits;
    for (const name of LIMIT_NAMES) limits[name] = (gpuDevice.limits as unknown as Record<string, number>)[name];

    const ai = adapter.info ?? ({} as GPUAdapterInfo);
    const text = `${ai.vendor ?? ""} ${ai.architecture ?? ""} ${ai.device ?? ""} ${ai.description ?? ""}`.toLowerCase();
    const info: AdapterSummary = {
      vendor: ai.vendor ?? "",
      architecture: ai.architecture ?? "",
      device: ai.device ?? "",
      description: ai.description ?? "",
      isCpu: /llvmpipe|lavapipe|swiftshader|software|cpu/.test(text),
    };
    const features: DeviceFeatures = {
      shaderF16: gpuDevice.features.has("shader-f16"),
      timestampQuery: gpuDevice.features.has("timestamp-query"),
      subgroups: gpuDevice.features.has("subgroups"),
      subgroupMatrix: gpuDevice.features.has(SUBGROUP_MATRIX),
    };
    // f16 shapes are usable only with shader-f16 enabled on the device.
    const configs = features.subgroupMatrix
      ? ((ai as { subgroupMatrixConfigs?: SubgroupMatrixConfig[] }).subgroupMatrixConfigs ?? [])
      : [];
    const usable = configs
      .map(({ componentType, resultComponentType, M, N, K }) => ({ componentType, resultComponentType, M, N, K }))
      .filter((c) => features.shaderF16 || (c.componentType !== "f16" && c.resultComponentType !== "f16"));
    const subgroup = ai as { subgroupMinSize?: number; subgroupMaxSize?: number };
    if (lanes !== undefined && /llvmpipe/.test(text) && subgroup.subgroupMaxSize !== lanes) {
      gpuDevice.destroy();
      throw new Error(
        `cpuLanes: asked lavapipe for ${lanes}-lane subgroups, it gave ${subgroup.subgroupMinSize}–${subgroup.subgroupMaxSize} (${CPU_LANES_VARIABLE}=${process.env[CPU_LANES_VARIABLE]})`,
      );
    }
    Device.open++;
    const device = new Device(gpu, adapter, gpuDevice, runtime, info, limits, features, usable);
    device.pool.releasesMemory = options.releaseMemory ?? !info.isCpu;
    return device;
  }

  get lost(): boolean {
    return this.lostMessage !== null;
  }

  describe(): string {
    const i = this.info;
    const { subgroupMinSize: min, subgroupMaxSize: max } = this.adapter.info as {
      subgroupMinSize?: number;
      subgroupMaxSize?: number;
    };
    // The subgroup size decides CPU adapters' kernel tiles (lavapipe: DeviceOptions.cpuLanes).
    const lanes = min === undefined ? "" : min === max ? ` (${min} lanes)` : ` (${min}–${max} lanes)`;
    const f = Object.entries(this.features)
      .filter(([, v]) => v)
      .map(([k]) => (k === "subgroups" ? `subgroups${lanes}` : k))
      .join(", ");
    const matrices = this.subgroupMatrixConfigs
      .map((c) => `${c.componentType}→${c.resultComponentType} ${c.M}×${c.N}×${c.K}`)
      .join(", ");
    return `${i.vendor || "?"} / ${i.architecture || "?"} / ${i.description || i.device || "?"} (${this.runtime}); features: ${f || "none"}${matrices ? `; subgroup matrices: ${matrices}` : ""}; max storage binding ${this.limits.maxStorageBufferBindingSize} B, max buffer ${this.limits.maxBufferSize} B`;
  }

  private assertUsable(): void {
    if (this.destroyed) throw new Error("Device was destroyed");
    if (this.lostMessage) throw new DeviceLostError(this.lostMessage);
  }

  private createStorageBuffer(bytes: number): GPUBuffer {
    this.assertUsable();
    if (bytes > this.limits.maxBufferSize) {
      throw new DeviceLimitError(
        `cannot allocate a ${bytes}-byte GPU buffer: the device's maxBufferSize is ${this.limits.maxBufferSize} bytes`,
      );
    }
    this.gpuDevice.pushErrorScope("out-of-memory");
    const usage = this.info.isCpu ? CPU_STORAGE_USAGE : STORAGE_USAGE;
    const buffer = this.gpuDevice.createBuffer({ size: bytes, usage });
    this.check(
      this.gpuDevice.popErrorScope().then((e) => {
        if (e) this.errors.push(new GpuOutOfMemoryError(`out of GPU memory allocating ${bytes} bytes: ${e.message}`));
      }),
    );
    return buffer;
  }

  // ---- pipelines ---------------------------------------------------------------------

  /** The compute pipeline for `key`, compiled from `wgsl()` the first time the key is seen. */
  pipeline(key: string, wgsl: () => string, entryPoint = "main"): GPUComputePipeline {
    const cached = this.pipelines.get(key);
    if (cached) return cached;
    this.assertUsable();
    const code = wgsl();
    const dev = this.gpuDevice;
    dev.pushErrorScope("validation");
    const module = dev.createShaderModule({ code, label: key });
    const pipeline = dev.createComputePipeline({ layout: "auto", compute: { module, entryPoint }, label: key });
    this.check(
      dev.popErrorScope().then(async (e) => {
        if (!e) return;
        const info = await module.getCompilationInfo();
        const msgs = info.messages.map((m) => `  ${m.type} at ${m.lineNum}:${m.linePos}: ${m.message}`).join("\n");
        this.errors.push(new KernelCompileError(`kernel '${key}' failed to compile: ${e.message}\n${msgs}`));
      }),
    );
    this.pipelines.set(key, pipeline);
    return pipeline;
  }

  get pipelineCount(): number {
    return this.pipelines.size;
  }

  /** Bind groups kept for reuse by later dispatches over the same pipeline and ranges. */
  get cachedBindGroups(): number {
    return this.bindGroups.size;
  }

  private objectId(o: object): number {
    let id = this.objectIds.get(o);
    if (id === undefined) {
      id = this.nextObjectId++;
      this.objectIds.set(o, id);
    }
    return id;
  }

  /**
   * A number that changes whenever the contents of `buffer` may change through this device: a host write, a copy
   * into it, a dispatch that binds it writable, or its return to the pool (whoever acquires it next may fill it).
   * Data derived from a buffer (the GEMM's packed weights) is still valid while this number is what it was when
   * the data was made.
   */
  contentsVersion(buffer: GPUBuffer): number {
    return this.versions.get(buffer) ?? 0;
  }

  private changed(buffer: GPUBuffer): void {
    this.versions.set(buffer, ++this.changes);
  }

  // ---- recording ---------------------------------------------------------------------

  private openPass(): GPUComputePassEncoder {
    if (!this.encoder) this.encoder = this.gpuDevice.createCommandEncoder();
    if (!this.pass) {
      const desc: GPUComputePassDescriptor = {};
      const timestamps = this.passTimestamps;
      if (timestamps) {
        desc.timestampWrites = {
          querySet: timestamps.querySet,
          beginningOfPassWriteIndex: timestamps.started ? undefined : 0,
          endOfPassWriteIndex: 1,
        };
        timestamps.started = true;
      }
      this.pass = this.encoder.beginComputePass(desc);
    }
    return this.pass;
  }

  private closePass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  dispatch(d: Dispatch): void {
    this.assertUsable();
    const [x, y = 1, z = 1] = d.workgroups;
    const maxDim = this.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxDim || y > maxDim || z > maxDim) {
      throw new Error(
        `dispatch of ${d.pipeline.label}: workgroups [${x}, ${y}, ${z}] exceed maxComputeWorkgroupsPerDimension ${maxDim}; the kernel must fold its grid`,
      );
    }
    if (x === 0 || y === 0 || z === 0) return;
    if (this.capture) {
      this.capture.commands.push({
        kind: "dispatch",
        pipeline: d.pipeline,
        uniforms: d.uniforms ? d.uniforms.slice() : null,
        buffers: d.buffers.map((b) =>
          "buffer" in b ? { buffer: b.buffer, offset: b.offset ?? 0, size: b.size } : { buffer: b, offset: 0 },
        ),
        written: d.buffers.flatMap((b, i) => (d.writes?.[i] ? ["buffer" in b ? b.buffer : b] : [])),
        workgroups: [x, y, z],
      });
    }
    const entries: GPUBindGroupEntry[] = [];
    let key = `${this.objectId(d.pipeline)}`;
    if (d.uniforms) {
      const align = this.limits.minUniformBufferOffsetAlignment;
      const size = d.uniforms.byteLength;
      if (this.uniformUsed + size > UNIFORM_RING_BYTES) this.flush();
      const offset = this.uniformUsed;
      this.uniformStaging.set(d.uniforms, offset);
      this.uniformUsed = Math.ceil((offset + size) / align) * align;
      entries.push({ binding: 0, resource: { buffer: this.uniformRing, offset, size } });
      key += `|u${offset}:${size}`;
    }
    d.buffers.forEach((b, i) => {
      const slice = "buffer" in b ? b : { buffer: b };
      if (d.writes?.[i]) this.changed(slice.buffer);
      const offset = slice.offset ?? 0;
      entries.push({ binding: i + 1, resource: { buffer: slice.buffer, offset, size: slice.size } });
      key += `|${this.objectId(slice.buffer)}:${offset}:${slice.size ?? ""}`;
    });
    let bindGroup = this.bindGroups.get(key);
    if (!bindGroup) {
      if (this.bindGroups.size >= MAX_CACHED_BIND_GROUPS) this.bindGroups.clear();
      bindGroup = this.gpuDevice.createBindGroup({ layout: d.pipeline.getBindGroupLayout(0), entries });
      this.bindGroups.set(key, bindGroup);
    }
    this.encodeDispatch(d.pipeline, bindGroup, x, y, z);
  }

  private encodeDispatch(pipeline: GPUComputePipeline, bindGroup: GPUBindGroup, x: number, y: number, z: number): void {
    const pass = this.profiler ? this.timedPass(this.profiler, pipeline.label) : this.openPass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    if (this.profiler) this.closePass();
    this.dispatchesInBatch++;
    // timeGpu's recording stays one submit: gaps between submits would count host time as GPU time.
    if (this.dispatchesInBatch >= DISPATCHES_PER_SUBMIT && !this.passTimestamps) this.flush();
  }

  /**
   * Runs `fn` (synchronous, as in tidy) and returns its result with a Recording of the dispatches and copies it
   * made, which replays them without running `fn` again: for a call repeated with new input values in the same
   * tensors (a sampling run's UNet calls), where the host's recording would otherwise be redone every time.
   * `recording` is null, with the reason in `notReplayable`, when a replay could not reproduce the call: it wrote
   * host data (device.write) or bound a buffer that is not the pool's, or it read a tensor made before it and freed
   * it. The intermediates' buffers are the recording's until it is disposed.
   */
  record<T>(fn: () => T): { result: T; recording: Recording | null; notReplayable?: string } {
    this.assertUsable();
    if (this.capture) throw new Error("Device.record: already recording (recordings do not nest)");
    const capture: Capture = { commands: [], written: new Set() };
    const started = this.pool.acquisitions;
    const endWatch = this.pool.watch();
    this.capture = capture;
    let result: T;
    let releasedOlder: Set<GPUBuffer>;
    try {
      result = fn();
    } finally {
      this.capture = null;
      releasedOlder = endWatch();
    }
    const refuse = (why: string) => ({ result, recording: null, notReplayable: why });
    if (capture.written.size) return refuse("it writes host data (device.write), which a replay would not repeat");
    const bound = new Set<GPUBuffer>();
    for (const c of capture.commands) {
      if (c.kind === "copy") bound.add(c.src).add(c.dst);
      else for (const b of c.buffers) bound.add(b.buffer);
    }
    const outside = new Map<GPUBuffer, number>();
    const held: GPUBuffer[] = [];
    for (const buffer of bound) {
      const acquisition = this.pool.acquisition(buffer);
      if (acquisition === undefined) return refuse("it binds a buffer that is not the pool's");
      if (releasedOlder.has(buffer)) return refuse("it reads a tensor made before it and frees it");
      if (!this.pool.isFree(buffer)) outside.set(buffer, acquisition);
      else if (acquisition > started) held.push(buffer);
      else return refuse("it binds a buffer that was free (a disposed tensor's)");
    }
    for (const buffer of held) this.pool.claim(buffer);
    // The uniforms of every dispatch in a buffer of the recording's own, bound at their offsets.
    const align = this.limits.minUniformBufferOffsetAlignment;
    const offsets: number[] = [];
    let uniformBytes = 0;
    for (const c of capture.commands) {
      if (c.kind !== "dispatch" || !c.uniforms) continue;
      offsets.push(uniformBytes);
      uniformBytes += Math.ceil(c.uniforms.byteLength / align) * align;
    }
    let uniformBuffer: GPUBuffer | null = null;
    if (uniformBytes > 0) {
      const staging = new Uint8Array(uniformBytes);
      let i = 0;
      for (const c of capture.commands) if (c.kind === "dispatch" && c.uniforms) staging.set(c.uniforms, offsets[i++]);
      uniformBuffer = this.gpuDevice.createBuffer({
        size: uniformBytes,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        label: "ldm recorded uniforms",
      });
      this.gpuDevice.queue.writeBuffer(uniformBuffer, 0, staging);
    }
    let next = 0;
    const commands = capture.commands.map((c): ReplayCommand => {
      if (c.kind === "copy") return c;
      const entries: GPUBindGroupEntry[] = c.buffers.map((b, i) => ({
        binding: i + 1,
        resource: { buffer: b.buffer, offset: b.offset, size: b.size },
      }));
      if (c.uniforms && uniformBuffer) {
        const resource = { buffer: uniformBuffer, offset: offsets[next++], size: c.uniforms.byteLength };
        entries.unshift({ binding: 0, resource });
      }
      const bindGroup = this.gpuDevice.createBindGroup({ layout: c.pipeline.getBindGroupLayout(0), entries });
      return { kind: "dispatch", pipeline: c.pipeline, bindGroup, written: c.written, workgroups: c.workgroups };
    });
    const dispatches = commands.filter((c) => c.kind === "dispatch").length;
    const replay = () => this.replay(commands);
    return { result, recording: new Recording(this.pool, replay, dispatches, outside, held, uniformBuffer) };
  }

  /** Records a recording's commands as dispatch and copy would. */
  private replay(commands: readonly ReplayCommand[]): void {
    this.assertUsable();
    if (this.capture)
      throw new Error("Device: a recording cannot be replayed while recording (recordings do not nest)");
    for (const c of commands) {
      if (c.kind === "copy") this.copy(c.src, c.srcOffset, c.dst, c.dstOffset, c.size);
      else {
        this.encodeDispatch(c.pipeline, c.bindGroup, c.workgroups[0], c.workgroups[1], c.workgroups[2]);
        for (const buffer of c.written) this.changed(buffer);
      }
    }
  }

  /** A pass of its own for one profiled dispatch, with timestamps at its start and end. */
  private timedPass(profiler: DispatchProfiler, label: string): GPUComputePassEncoder {
    this.closePass();
    const index = profiler.labels.length % PROFILE_SET_DISPATCHES;
    if (index === 0) {
      const count = 2 * PROFILE_SET_DISPATCHES;
      profiler.sets.push(this.gpuDevice.createQuerySet({ type: "timestamp", count }));
    }
    profiler.labels.push(label);
    if (!this.encoder) this.encoder = this.gpuDevice.createCommandEncoder();
    const querySet = profiler.sets[profiler.sets.length - 1];
    const timestampWrites = { querySet, beginningOfPassWriteIndex: 2 * index, endOfPassWriteIndex: 2 * index + 1 };
    this.pass = this.encoder.beginComputePass({ timestampWrites });
    return this.pass;
  }

  /** Records a buffer-to-buffer copy (offsets and size must be multiples of 4). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    this.assertUsable();
    if (size === 0) return;
    if (srcOffset % 4 || dstOffset % 4 || size % 4) {
      throw new Error(`copy: offsets (${srcOffset}, ${dstOffset}) and size ${size} must be multiples of 4 bytes`);
    }
    this.capture?.commands.push({ kind: "copy", src, srcOffset, dst, dstOffset, size });
    this.closePass();
    if (!this.encoder) this.encoder = this.gpuDevice.createCommandEncoder();
    this.encoder.copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
    this.changed(dst);
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (!this.encoder) return;
    this.closePass();
    if (this.uniformUsed > 0) {
      this.gpuDevice.queue.writeBuffer(this.uniformRing, 0, this.uniformStaging, 0, this.uniformUsed);
      this.uniformUsed = 0;
    }
    this.gpuDevice.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.dispatchesInBatch = 0;
  }

  get pendingDispatches(): number {
    return this.dispatchesInBatch;
  }

  /** Writes host data into a buffer, after everything recorded before it (the buffer may be a reused one). */
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    this.assertUsable();
    this.capture?.written.add(buffer);
    // queue.writeBuffer runs ahead of unsubmitted commands: submit them first so a recycled
    // buffer is not overwritten before earlier recorded reads of it.
    this.flush();
    this.changed(buffer);
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    const aligned = bytes.byteLength & ~3;
    if (aligned > 0) this.gpuDevice.queue.writeBuffer(buffer, offset, bytes, 0, aligned);
    if (aligned < bytes.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(aligned));
      this.gpuDevice.queue.writeBuffer(buffer, offset + aligned, tail);
    }
  }

  /** Reads `size` bytes of `buffer` from `offset` after all recorded work. */
  async read(buffer: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
    this.assertUsable();
    const padded = Math.ceil(size / 4) * 4;
    if (offset % 4) throw new Error(`read: offset ${offset} must be a multiple of 4 bytes`);
    const staging = this.gpuDevice.createBuffer({
      size: Math.max(4, padded),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      if (padded > 0) this.copy(buffer, offset, staging, 0, padded);
      this.flush();
      await this.raceLost(staging.mapAsync(GPUMapMode.READ));
      const out = staging.getMappedRange(0, padded).slice(0, size);
      staging.unmap();
      await this.settleChecks();
      this.throwPendingErrors();
      return out;
    } finally {
      staging.destroy();
    }
  }

  /** Submits recorded work and waits for the GPU to finish it; throws any GPU error seen meanwhile. */
  async sync(): Promise<void> {
    this.assertUsable();
    this.flush();
    await this.raceLost(this.gpuDevice.queue.onSubmittedWorkDone());
    await this.settleChecks();
    this.throwPendingErrors();
  }

  private check(p: Promise<void>): void {
    const tracked = p
      .catch((e) => {
        if (!this.lostMessage) this.errors.push(e instanceof Error ? e : new Error(String(e)));
      })
      .finally(() => this.pendingChecks.delete(tracked));
    this.pendingChecks.add(tracked);
  }

  private async settleChecks(): Promise<void> {
    while (this.pendingChecks.size) await this.raceLost(Promise.all(this.pendingChecks));
  }

  private async raceLost<T>(p: Promise<T>): Promise<T> {
    const race = Promise.race([p, this.lostPromise]);
    return this.runtime === "node" ? awaitDawn(race, this.info.isCpu) : race;
  }

  private throwPendingErrors(): void {
    if (this.errors.length) {
      // A compile error is the cause of the "Invalid ComputePipeline" errors its dispatches raise: report it first.
      const all = this.errors.splice(0);
      const cause = all.findIndex((e) => e instanceof KernelCompileError);
      const [first, ...rest] = cause > 0 ? [all[cause], ...all.filter((_, i) => i !== cause)] : all;
      if (rest.length) first.message += ` (and ${rest.length} more GPU error(s))`;
      throw first;
    }
  }

  /**
   * GPU time in milliseconds of the work `record` records, from timestamp queries: from the start of its first
   * compute pass to the end of its last (copies end a pass), in one submit unless the uniform ring fills (null when
   * the adapter has no timestamp-query feature).
   */
  async timeGpu(record: () => void): Promise<number | null> {
    if (!this.features.timestampQuery) {
      record();
      await this.sync();
      return null;
    }
    this.flush();
    const querySet = this.gpuDevice.createQuerySet({ type: "timestamp", count: 2 });
    const resolve = this.gpuDevice.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.passTimestamps = { querySet, started: false };
    try {
      record();
      this.openPass();
      this.closePass();
    } finally {
      this.passTimestamps = null;
    }
    this.encoder?.resolveQuerySet(querySet, 0, 2, resolve, 0);
    const bytes = await this.read(resolve, 0, 16);
    querySet.destroy();
    resolve.destroy();
    const [t0, t1] = new BigUint64Array(bytes);
    return Number(t1 - t0) / 1e6;
  }

  /**
   * GPU time per kernel of what `record` dispatches, summed by pipeline label (the kernel's cache key), slowest
   * first; null where the adapter has no timestamp-query. Each dispatch runs in a pass of its own, so the sum
   * includes per-pass overhead that normal recording (many dispatches per pass) does not pay: read the split,
   * and take the total from `timeGpu`.
   */
  async profileGpu(record: () => void): Promise<KernelTime[] | null> {
    const dispatches = await this.profileDispatches(record);
    if (!dispatches) return null;
    const byLabel = new Map<string, KernelTime>();
    for (const { label, ms } of dispatches) {
      const entry = byLabel.get(label) ?? { label, dispatches: 0, ms: 0 };
      entry.dispatches++;
      entry.ms += ms;
      byLabel.set(label, entry);
    }
    return [...byLabel.values()].sort((a, b) => b.ms - a.ms);
  }

  /**
   * GPU time of every dispatch `record` makes, in the order they were recorded (dispatches of zero workgroups,
   * which record nothing, are not listed), so a caller that notes what it was running at each `dispatch` can
   * group them by op and shape; null without timestamp-query. Same per-pass overhead as profileGpu.
   */
  async profileDispatches(record: () => void): Promise<{ label: string; ms: number }[] | null> {
    if (!this.features.timestampQuery) {
      record();
      await this.sync();
      return null;
    }
    this.flush();
    const profiler: DispatchProfiler = { sets: [], labels: [] };
    this.profiler = profiler;
    try {
      record();
    } catch (e) {
      for (const q of profiler.sets) q.destroy();
      throw e;
    } finally {
      this.profiler = null;
    }
    const buffers = profiler.sets.map((querySet) => {
      const buffer = this.gpuDevice.createBuffer({
        size: 16 * PROFILE_SET_DISPATCHES,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      if (!this.encoder) this.encoder = this.gpuDevice.createCommandEncoder();
      this.encoder.resolveQuerySet(querySet, 0, querySet.count, buffer, 0);
      return buffer;
    });
    const times: { label: string; ms: number }[] = [];
    try {
      for (const [set, buffer] of buffers.entries()) {
        const stamps = new BigUint64Array(await this.read(buffer, 0, buffer.size));
        const labels = profiler.labels.slice(set * PROFILE_SET_DISPATCHES, (set + 1) * PROFILE_SET_DISPATCHES);
        labels.forEach((label, i) => {
          times.push({ label, ms: Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e6 });
        });
      }
    } finally {
      for (const b of buffers) b.destroy();
      for (const q of profiler.sets) q.destroy();
    }
    return times;
  }

  // ---- scopes --------------------------------------------------------------------------

  /** Called by Tensor on creation: registers it with the innermost open scope. */
  track(t: TrackedDisposable): void {
    this.scopes.at(-1)?.add(t);
  }

  /** Removes `t` from the innermost scope so it survives the scope's end. */
  untrack(t: TrackedDisposable): void {
    this.scopes.at(-1)?.delete(t);
  }

  /**
   * Runs `fn` and disposes every tensor created inside it except those it returns
   * (a tensor, or an array/object of tensors), which move to the enclosing scope.
   */
  tidy<T>(fn: () => T): T {
    const scope = new Set<TrackedDisposable>();
    this.scopes.push(scope);
    let result: T;
    try {
      result = fn();
    } catch (e) {
      this.scopes.pop();
      for (const t of scope) if (!t.disposed) t.dispose();
      throw e;
    }
    this.scopes.pop();
    if (result instanceof Promise) {
      throw new Error("tidy() takes a synchronous function: record GPU work inside it and await readbacks outside");
    }
    const kept = new Set<TrackedDisposable>();
    collectDisposables(result, kept);
    for (const t of scope) {
      if (kept.has(t)) this.scopes.at(-1)?.add(t);
      else if (!t.disposed) t.dispose();
    }
    return result;
  }

  /**
   * Runs `fn` (synchronous, as in tidy) with the buffer pool reclaiming (BufferPool.reclaiming) where it releases
   * memory (DeviceOptions.releaseMemory): a tensor whose size class has no free buffer takes the memory of free
   * buffers of other sizes instead of adding to it. For one pass over large tensors, such as a VAE decode, so
   * that the device holds about what is live at once.
   */
  reclaiming<T>(fn: () => T): T {
    return this.pool.reclaiming(fn);
  }

  memory(): PoolStats {
    return this.pool.stats();
  }

  destroy(): void {
    if (this.destroyed) return;
    this.flush();
    this.bindGroups.clear();
    this.pool.trim();
    this.uniformRing.destroy();
    this.gpuDevice.destroy();
    this.destroyed = true;
    Device.open--;
  }
}

function collectDisposables(value: unknown, out: Set<TrackedDisposable>, depth = 0): void {
  if (value === null || typeof value !== "object" || depth > 3) return;
  if ("dispose" in value && "disposed" in value) {
    out.add(value as TrackedDisposable);
    return;
  }
  const items = Array.isArray(value) ? value : value instanceof Map ? [...value.values()] : Object.values(value);
  for (const v of items) collectDisposables(v, out, depth + 1);
}

function asError(e: GPUError): Error {
  if (e instanceof Error) return e;
  const kind = e.constructor?.name ?? "GPUError";
  if (kind === "GPUOutOfMemoryError") return new GpuOutOfMemoryError(`out of GPU memory: ${e.message}`);
  return new Error(`${kind}: ${e.message}`);
}
