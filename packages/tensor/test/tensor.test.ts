import { describe, expect, it } from "vitest";
import { f16BitsToF32, f32ToF16Bits, type Recording, Tensor, Uniforms } from "../src/index.ts";
import { useDevice } from "../src/testing.ts";

const device = await useDevice();

describe("Device", () => {
  it("reports the adapter, limits and features it got", () => {
    expect(device.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 1024 * 1024);
    expect(device.limits.maxBufferSize).toBeGreaterThanOrEqual(256 * 1024 * 1024);
    // lavapipe grants more than the spec default of 16 KiB when asked (field notes: 32 KiB).
    expect(device.limits.maxComputeWorkgroupStorageSize).toBeGreaterThanOrEqual(16384);
    expect(device.describe()).toContain("features");
  });
});

describe("Tensor upload and readback", () => {
  it("round-trips f32 exactly, including odd sizes", async () => {
    const data = Float32Array.from({ length: 7 * 3 }, (_, i) => Math.sin(i) * 1e3);
    const t = Tensor.from(device, data, [7, 3]);
    expect(await t.read()).toEqual(data);
    t.dispose();
  });

  it("round-trips i32 and u32", async () => {
    const i = Tensor.from(device, Int32Array.from([-5, 0, 49406, 2 ** 31 - 1, -(2 ** 31)]), [5], "i32");
    expect(Array.from(await i.read())).toEqual([-5, 0, 49406, 2 ** 31 - 1, -(2 ** 31)]);
    const u = Tensor.from(device, [0, 1, 0xffffffff], [3], "u32");
    expect(Array.from(await u.read())).toEqual([0, 1, 0xffffffff]);
    i.dispose();
    u.dispose();
  });

  it.skipIf(!device.features.shaderF16)(
    "round-trips f16 with an odd element count (buffer padded to 4 bytes)",
    async () => {
      const values = [1, -2.5, 65504, 6.103515625e-5, 0.333251953125];
      const t = Tensor.from(device, values, [5], "f16");
      expect(t.byteLength).toBe(10);
      expect(Array.from(await t.toFloat32())).toEqual(values);
    },
  );

  it("reshape shares storage and frees it once the last view is disposed", async () => {
    const before = device.memory().liveBytes;
    const t = Tensor.from(device, [1, 2, 3, 4, 5, 6], [2, 3]);
    const v = t.reshape([3, -1]);
    expect(v.shape).toEqual([3, 2]);
    t.dispose();
    expect(Array.from(await v.read())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(device.memory().liveBytes).toBeGreaterThan(before);
    v.dispose();
    expect(device.memory().liveBytes).toBe(before);
  });
});

describe("errors", () => {
  it("rejects data that does not fill the shape, naming both", () => {
    expect(() => Tensor.from(device, [1, 2, 3], [2, 2])).toThrow(/3 values do not fill shape \[2, 2\]/);
  });

  it("rejects an invalid reshape naming both shapes", () => {
    const t = Tensor.zeros(device, [2, 3]);
    expect(() => t.reshape([4, 2])).toThrow(/\[2, 3\].*\[4, 2\]/);
    t.dispose();
  });

  it("rejects negative or fractional dimensions", () => {
    expect(() => Tensor.empty(device, [2, -1])).toThrow(/invalid dimension -1/);
    expect(() => Tensor.empty(device, [1.5])).toThrow(/invalid dimension 1.5/);
  });

  it("rejects use after dispose", async () => {
    const t = Tensor.from(device, [1, 2], [2]);
    t.dispose();
    expect(() => t.buffer).toThrow(/tensor \[2\] f32 was used after dispose/);
    await expect(t.read()).rejects.toThrow(/after dispose/);
  });

  it("rejects a buffer larger than maxBufferSize with the sizes", () => {
    expect(() => Tensor.empty(device, [Math.floor(device.limits.maxBufferSize / 4) + 1024])).toThrow(/maxBufferSize/);
  });

  it("surfaces a WGSL compile error at sync, naming the kernel", async () => {
    const broken = device.pipeline(
      "broken-kernel",
      () => "@compute @workgroup_size(1) fn main() { let x: f32 = undefined_name; }",
    );
    // Dispatching the invalid pipeline raises its own error; the compile error (the cause) must be the one reported.
    device.dispatch({ pipeline: broken, buffers: [], workgroups: [1] });
    await expect(device.sync()).rejects.toThrow(/kernel 'broken-kernel' failed to compile[\s\S]*undefined_name/);
  });

  it("refuses a dispatch grid over the per-dimension cap", () => {
    const p = device.pipeline("noop", () => "@compute @workgroup_size(1) fn main() {}");
    expect(() => device.dispatch({ pipeline: p, buffers: [], workgroups: [70000] })).toThrow(/must fold its grid/);
  });
});

describe("f16 conversion", () => {
  it("rounds to nearest even and handles subnormals, overflow and NaN", () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // halfway to the next binade rounds to Inf
    expect(f32ToF16Bits(-0)).toBe(0x8000);
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001);
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // tie rounds to even (0)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002); // tie rounds to even (2)
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie → even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(Number.NaN)))).toBe(true);
    for (let h = 0; h < 0x7c00; h += 37) expect(f32ToF16Bits(f16BitsToF32(h))).toBe(h);
  });
});

describe("recording", () => {
  const addOne = () => `
    struct Params { n: u32, delta: f32 }
    @group(0) @binding(0) var<uniform> p: Params;
    @group(0) @binding(1) var<storage, read_write> x: array<f32>;
    @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
      if (id.x < p.n) { x[id.x] = x[id.x] + p.delta; }
    }`;
  /** Records addOne's pipeline adding `delta` to the first `n` values of `t`, over `workgroups` of 64. */
  const add = (pipeline: GPUComputePipeline, t: Tensor, n: number, delta: number, workgroups: number) =>
    device.dispatch({
      pipeline,
      buffers: [t.buffer],
      writes: [true],
      uniforms: new Uniforms().u32(n).f32(delta).bytes(),
      workgroups: [workgroups],
    });

  it("submits dispatches in batches of 16 and applies them in order, each with its own uniforms", async () => {
    const t = Tensor.from(device, new Float32Array(100), [100]);
    const pipeline = device.pipeline("test-add", addOne);
    for (let i = 0; i < 50; i++) add(pipeline, t, 100, i, 2);
    expect(device.pendingDispatches).toBe(50 - 3 * 16);
    const out = await t.read();
    expect(out[0]).toBe((49 * 50) / 2);
    expect(out[99]).toBe((49 * 50) / 2);
    expect(device.pipeline("test-add", addOne)).toBe(pipeline);
    t.dispose();
  });

  it("reuses a bind group for a dispatch over the same pipeline and ranges, with that dispatch's uniforms", async () => {
    const pipeline = device.pipeline("test-add", addOne);
    const t = Tensor.zeros(device, [64]);
    await device.sync(); // the uniform ring starts again at offset 0 after each submit
    add(pipeline, t, 64, 1, 1);
    await device.sync();
    const cached = device.cachedBindGroups;
    add(pipeline, t, 64, 2, 1); // same pipeline, buffer and ring offset: the same bind group
    await device.sync();
    expect(device.cachedBindGroups).toBe(cached);
    const u = Tensor.zeros(device, [64]);
    await device.sync();
    add(pipeline, u, 64, 1, 1); // another buffer at the same offset: binding t's group would leave u at 0
    expect((await t.read())[5]).toBe(3);
    expect((await u.read())[5]).toBe(1);
    t.dispose();
    u.dispose();
  });

  it("does not let an upload into a recycled buffer overtake earlier recorded reads", async () => {
    const pipeline = device.pipeline("test-add", addOne);
    const a = Tensor.from(device, new Float32Array(64).fill(1), [64]);
    const copyDst = Tensor.empty(device, [64]);
    add(pipeline, a, 64, 1, 1);
    device.copy(a.buffer, 0, copyDst.buffer, 0, 256);
    const recycled = a.buffer;
    a.dispose();
    const b = Tensor.from(device, new Float32Array(64).fill(100), [64]);
    expect(b.buffer).toBe(recycled);
    expect((await copyDst.read())[0]).toBe(2);
    b.dispose();
    copyDst.dispose();
  });

  it("changes a buffer's contentsVersion on every way its contents can change, and only then", async () => {
    const pipeline = device.pipeline("test-add", addOne);
    const t = Tensor.zeros(device, [64]);
    const other = Tensor.zeros(device, [64]);
    const buffer = t.buffer;
    const version = () => device.contentsVersion(buffer);
    const seen = [version()];
    const changes = (what: () => void) => {
      what();
      expect(seen).not.toContain(version());
      seen.push(version());
    };
    changes(() => device.write(t.buffer, 0, new Float32Array(64)));
    changes(() => add(pipeline, t, 64, 1, 1));
    changes(() => device.copy(other.buffer, 0, t.buffer, 0, 256));
    let recording: Recording | null = null;
    changes(() => {
      recording = device.record(() => add(pipeline, t, 64, 1, 1)).recording;
    });
    expect(recording).not.toBeNull();
    changes(() => recording?.run());
    await device.sync();
    (recording as Recording | null)?.dispose();
    // Read-only bindings, copies out of it and uploads into another buffer leave it as it was.
    const none = new Uniforms().u32(0).f32(0).bytes();
    device.dispatch({ pipeline, buffers: [t.buffer], writes: [false], uniforms: none, workgroups: [1] });
    device.copy(t.buffer, 0, other.buffer, 0, 256);
    device.write(other.buffer, 0, new Float32Array(64));
    expect(version()).toBe(seen.at(-1));
    // Back in the pool: whoever acquires it next may fill it.
    changes(() => t.dispose());
    other.dispose();
  });

  it("times GPU work with timestamp queries where available", async () => {
    const pipeline = device.pipeline("test-add", addOne);
    const t = Tensor.zeros(device, [1 << 16]);
    const ms = await device.timeGpu(() => {
      for (let i = 0; i < 4; i++) add(pipeline, t, 1 << 16, 1, 1024);
    });
    if (device.features.timestampQuery) expect(ms).toBeGreaterThan(0);
    expect((await t.read())[12345]).toBe(4);
    t.dispose();
  });

  it.skipIf(!device.features.timestampQuery)(
    "times a recording of several passes from the first one's start to the last one's end",
    async () => {
      const pipeline = device.pipeline("test-add", addOne);
      const t = Tensor.zeros(device, [1 << 18]);
      const scratch = Tensor.zeros(device, [4]);
      const time = (dispatches: number) =>
        device.timeGpu(() => {
          for (let i = 0; i < dispatches; i++) {
            add(pipeline, t, 1 << 18, 1, 4096);
            // A copy ends the compute pass: every 4 dispatches are a pass of their own.
            if (i % 4 === 3) device.copy(t.buffer, 0, scratch.buffer, 0, 16);
          }
        });
      await time(1); // compiles
      const few = (await time(4)) ?? 0;
      // 48 dispatches are 12 passes and 12× the work of 4. Timing only the last pass would give about `few`;
      // the margin of 6× covers timing noise on a busy machine.
      const many = (await time(48)) ?? 0;
      expect(many).toBeGreaterThan(2 * few);
      expect((await t.read())[54321]).toBe(53);
      for (const x of [t, scratch]) x.dispose();
    },
  );

  it("profiles GPU time per kernel, each dispatch counted under its pipeline's label", async () => {
    const big = device.pipeline("test-add-profiled-big", addOne);
    const small = device.pipeline("test-add-profiled-small", addOne);
    const t = Tensor.zeros(device, [1 << 16]);
    const kernels = await device.profileGpu(() => {
      for (let i = 0; i < 3; i++) add(big, t, 1 << 16, 1, 1024);
      add(small, t, 1 << 16, 1, 1);
      add(small, t, 1 << 16, 1, 1);
    });
    // Every dispatch ran once, in order, whatever the adapter.
    const values = await t.read();
    expect([values[0], values[12345]]).toEqual([5, 3]);
    if (!device.features.timestampQuery) {
      expect(kernels).toBeNull();
    } else {
      const byLabel = Object.fromEntries((kernels ?? []).map((k) => [k.label, k]));
      expect(byLabel["test-add-profiled-big"].dispatches).toBe(3);
      expect(byLabel["test-add-profiled-small"].dispatches).toBe(2);
      expect(byLabel["test-add-profiled-big"].ms).toBeGreaterThan(0);
      expect(byLabel["test-add-profiled-small"].ms).toBeGreaterThanOrEqual(0);
    }
    t.dispose();
  });

  it("profiles each dispatch in recording order, skipping empty ones", async () => {
    const first = device.pipeline("test-add-order-first", addOne);
    const second = device.pipeline("test-add-order-second", addOne);
    const t = Tensor.zeros(device, [1 << 12]);
    const dispatches = await device.profileDispatches(() => {
      add(first, t, 1 << 12, 1, 16);
      add(second, t, 1 << 12, 1, 0);
      add(second, t, 1 << 12, 1, 16);
      add(first, t, 1 << 12, 1, 16);
    });
    expect((await t.read())[100]).toBe(3);
    if (!device.features.timestampQuery) {
      expect(dispatches).toBeNull();
    } else {
      expect(dispatches?.map((d) => d.label)).toEqual([
        "test-add-order-first",
        "test-add-order-second",
        "test-add-order-first",
      ]);
      for (const d of dispatches ?? []) expect(d.ms).toBeGreaterThanOrEqual(0);
    }
    t.dispose();
  });
});
