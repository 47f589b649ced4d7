import * as fs from "node:fs";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Device, Tensor } from "@ldm/tensor";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertClose, randomArray } from "../testing.ts";
import {
  Autotuner,
  adapterSlug,
  autotuneFromEnv,
  autotunerOf,
  defaultCachePath,
  disableAutotune,
  enableAutotune,
  FileTuneStore,
  MemoryTuneStore,
  sizeClass,
  TUNE_SAMPLE_MS,
  type TuneRequest,
  timeCall,
} from "./autotune.ts";
import { matmul } from "./index.ts";
import { matmulRef } from "./reference.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ldm-autotune-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Fake {
  rows: number;
}
const isFake = (v: unknown): v is Fake => typeof v === "object" && v !== null && Number.isInteger((v as Fake).rows);

/** A request whose candidates "take" the given ms each, recording which ones were timed. */
function request(key: string, ms: Record<number, number>, timed: number[]): TuneRequest<Fake> {
  return {
    key,
    candidates: Object.keys(ms).map((r) => ({ rows: Number(r) })),
    valid: isFake,
    measure: async (c) => {
      timed.push(c.rows);
      return ms[c.rows];
    },
  };
}

describe("Autotuner", () => {
  it("defers an untuned class, then times the distinct candidates in turns and keeps the fastest", async () => {
    const tuner = new Autotuner(new MemoryTuneStore(), 2);
    const timed: number[] = [];
    const req = request("gemm:a", { 16: 3, 24: 1, 32: 2 }, timed);
    expect(tuner.choice({ ...req, candidates: [...req.candidates, { rows: 16 }] })).toBeNull();
    // A second call of the same class before tuning does not queue it twice.
    expect(tuner.choice(request("gemm:a", { 8: 1 }, timed))).toBeNull();
    expect(tuner.waiting).toEqual(["gemm:a"]);
    const outcomes = await tuner.tunePending();
    // A compiling round, then 2 timed rounds in which the candidates take turns.
    expect(timed).toEqual([16, 24, 32, 16, 24, 32, 16, 24, 32]);
    expect(outcomes).toEqual([
      {
        key: "gemm:a",
        chosen: { rows: 24 },
        times: [
          { candidate: { rows: 16 }, ms: 3 },
          { candidate: { rows: 24 }, ms: 1 },
          { candidate: { rows: 32 }, ms: 2 },
        ],
      },
    ]);
    expect(tuner.waiting).toEqual([]);
    expect(tuner.choice(request("gemm:a", { 16: 1 }, timed))).toEqual({ rows: 24 });
    expect(timed).toHaveLength(9);
  });

  it("re-tunes a class whose stored value the kernel does not accept", () => {
    const store = new MemoryTuneStore();
    store.set("gemm:b", JSON.stringify({ tiles: "from an older version" }));
    const tuner = new Autotuner(store);
    expect(tuner.choice(request("gemm:b", { 16: 1 }, []))).toBeNull();
    expect(tuner.waiting).toEqual(["gemm:b"]);
  });
});

describe("timeCall", () => {
  /** A device whose every call takes `callMs` of GPU time; counts the calls recorded. */
  function fakeDevice(callMs: number) {
    const state = { calls: 0 };
    const device = {
      async timeGpu(record: () => void) {
        const before = state.calls;
        record();
        return (state.calls - before) * callMs;
      },
    };
    return { device, run: () => state.calls++, state };
  }

  it("repeats a short call within one recording to fill a sample, and reports the time per call", async () => {
    const { device, run, state } = fakeDevice(0.25);
    expect(await timeCall(device, run)).toBeCloseTo(0.25);
    // One call, then a sample of TUNE_SAMPLE_MS / 0.25 calls.
    expect(state.calls).toBe(1 + TUNE_SAMPLE_MS / 0.25);
  });

  it("times a call that fills a sample by itself once", async () => {
    const { device, run, state } = fakeDevice(2 * TUNE_SAMPLE_MS);
    expect(await timeCall(device, run)).toBe(2 * TUNE_SAMPLE_MS);
    expect(state.calls).toBe(1);
  });
});

describe("FileTuneStore", () => {
  it("persists choices across instances, as one JSON object per file", async () => {
    const path = join(dir, "nested", "autotune-test.json");
    const first = new Autotuner(new FileTuneStore(path), 1);
    first.choice(request("conv2d:x", { 8: 5, 16: 4 }, []));
    await first.tunePending();
    expect(JSON.parse(readFileSync(path, "utf8"))).toEqual({ "conv2d:x": { rows: 16 } });

    const timed: number[] = [];
    const second = new Autotuner(new FileTuneStore(path), 1);
    expect(second.choice(request("conv2d:x", { 8: 1, 16: 9 }, timed))).toEqual({ rows: 16 });
    expect(second.waiting).toEqual([]);
    second.choice(request("conv2d:y", { 8: 1 }, timed));
    await second.tunePending();
    expect(timed).toEqual([8, 8]);
    expect(JSON.parse(readFileSync(path, "utf8"))).toEqual({ "conv2d:x": { rows: 16 }, "conv2d:y": { rows: 8 } });
  });

  it("reports and replaces a corrupt or foreign file instead of failing", () => {
    for (const content of ["{ not json", "[1, 2]"]) {
      const path = join(dir, "bad.json");
      writeFileSync(path, content);
      const warnings: string[] = [];
      const store = new FileTuneStore(path, fs, (m) => warnings.push(m));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain(path);
      expect(store.get("k")).toBeUndefined();
      store.set("k", JSON.stringify({ rows: 8 }));
      expect(JSON.parse(readFileSync(path, "utf8"))).toEqual({ k: { rows: 8 } });
    }
  });
});

describe("cache location and switches", () => {
  it("names the file after the adapter, under LDM_AUTOTUNE_CACHE, XDG_CACHE_HOME or ~/.cache", () => {
    const slug = adapterSlug({
      vendor: "mesa",
      architecture: "",
      device: "",
      description: "llvmpipe (LLVM 15.0.6, 256 bits)",
    });
    expect(slug).toBe("mesa-llvmpipe-llvm-15-0-6-256-bits");
    expect(adapterSlug({ vendor: "", architecture: "", device: "", description: "" })).toBe("unknown-adapter");
    expect(defaultCachePath({ HOME: "/home/u" }, slug)).toBe(`/home/u/.cache/ldm-ts/autotune-${slug}.json`);
    expect(defaultCachePath({ HOME: "/home/u", XDG_CACHE_HOME: "/c" }, "a")).toBe("/c/ldm-ts/autotune-a.json");
    expect(defaultCachePath({ HOME: "/home/u", LDM_AUTOTUNE_CACHE: "/t" }, "a")).toBe("/t/autotune-a.json");
  });

  it("groups sizes within a factor of √2 into one class", () => {
    expect([1, 2, 3, 4, 77, 320, 4096, 4100].map(sizeClass)).toEqual([0, 1, 2, 2, 6, 8, 12, 12]);
  });
});

describe("autotuning on a device", () => {
  let device: Device;
  beforeAll(async () => {
    device = await Device.create();
  });
  afterAll(() => device?.destroy());

  it("is off unless enabled; LDM_AUTOTUNE switches it on with the adapter's cache file", () => {
    expect(autotunerOf(device)).toBeNull();
    expect(autotuneFromEnv(device, {})).toBeNull();
    expect(autotuneFromEnv(device, { LDM_AUTOTUNE: "0" })).toBeNull();
    expect(() => autotuneFromEnv(device, { LDM_AUTOTUNE: "yes please" })).toThrow(/LDM_AUTOTUNE must be/);
    const tuner = autotuneFromEnv(device, { LDM_AUTOTUNE: "1", LDM_AUTOTUNE_CACHE: dir });
    if (!tuner) throw new Error("LDM_AUTOTUNE=1 did not enable autotuning");
    expect(tuner.store).toBeInstanceOf(FileTuneStore);
    expect((tuner.store as FileTuneStore).path).toBe(join(dir, `autotune-${adapterSlug(device.info)}.json`));
    expect(autotunerOf(device)).toBe(tuner);
    disableAutotune(device);
    expect(autotunerOf(device)).toBeNull();
  });

  it("queues a matmul's class, tunes it, and computes the same product with the chosen tiles", async () => {
    const tuner = enableAutotune(device, { samples: 1 });
    try {
      const [M, N, K] = [21, 12, 9];
      const a = randomArray(M * K, 5);
      const b = randomArray(K * N, 6);
      const ta = Tensor.from(device, a, [M, K]);
      const tb = Tensor.from(device, b, [K, N]);
      const want = matmulRef(a, b, { batch: 1, M, N, K, transposeA: false, transposeB: false });
      const before = matmul(ta, tb);
      expect(tuner.waiting).toEqual(["gemm:NN:f32f32f32:b0m4n4k3"]);
      const [outcome] = await tuner.tunePending();
      expect(outcome.times.length).toBeGreaterThan(1);
      expect(outcome.times.every((t) => Number.isFinite(t.ms) && t.ms > 0)).toBe(true);
      const after = matmul(ta, tb);
      expect(tuner.waiting).toEqual([]);
      const tol = { atol: 2e-6 * Math.sqrt(K + 1) + 1e-6, rtol: 1e-5 };
      assertClose(await before.toFloat32(), want, tol, "heuristic tiles");
      assertClose(await after.toFloat32(), want, tol, `tuned tiles ${JSON.stringify(outcome.chosen)}`);
      for (const t of [ta, tb, before, after]) t.dispose();
    } finally {
      disableAutotune(device);
    }
  });
});
