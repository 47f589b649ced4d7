import { describe, expect, it } from "vitest";
import { BufferPool, bucketSize, Tensor } from "../src/index.ts";
import { useDevice } from "../src/testing.ts";

describe("bucketSize", () => {
  it("rounds small sizes to 256 bytes and large ones to quarter powers of two", () => {
    expect(bucketSize(0)).toBe(256);
    expect(bucketSize(257)).toBe(512);
    expect(bucketSize(65536)).toBe(65536);
    expect(bucketSize(65537)).toBe(65536 + 16384);
    expect(bucketSize(1 << 20)).toBe(1 << 20);
    expect(bucketSize((1 << 20) + 1)).toBe(1.25 * (1 << 20));
    for (const n of [70_000, 1_234_567, 134_217_728, 200_000_001]) {
      const b = bucketSize(n);
      expect(b).toBeGreaterThanOrEqual(n);
      expect(b / n).toBeLessThanOrEqual(1.25);
    }
  });
});

describe("BufferPool (fake buffers)", () => {
  it("reuses released buffers of the same class and tracks live/peak bytes", () => {
    let created = 0;
    const pool = new BufferPool((size) => {
      created++;
      return { size, destroy() {} } as unknown as GPUBuffer;
    });
    const a = pool.acquire(1000);
    const b = pool.acquire(1000);
    expect(pool.stats().liveBytes).toBe(2048);
    pool.release(a);
    expect(pool.stats()).toMatchObject({ liveBytes: 1024, pooledBytes: 1024, peakLiveBytes: 2048 });
    const c = pool.acquire(900);
    expect(c).toBe(a);
    expect(created).toBe(2);
    pool.release(b);
    pool.release(c);
    pool.resetPeak();
    expect(pool.stats().peakLiveBytes).toBe(0);
    pool.trim();
    expect(pool.stats().pooledBytes).toBe(0);
    expect(pool.acquire(70_001, true).size).toBe(70_144); // exact: 256-byte multiple, no size class
    expect(pool.acquire(70_001).size).toBe(81_920);
  });

  it("hands out the first-created free buffer of a class, whatever order they were released in", () => {
    const pool = new BufferPool((size) => ({ size, destroy() {} }) as unknown as GPUBuffer);
    const [a, b, c] = [pool.acquire(1000), pool.acquire(1000), pool.acquire(1000)];
    for (const order of [
      [a, b, c],
      [c, b, a],
      [b, c, a],
    ]) {
      for (const buffer of order) pool.release(buffer);
      const got = [pool.acquire(1000), pool.acquire(1000), pool.acquire(1000)];
      expect(got.map((buffer) => [a, b, c].indexOf(buffer))).toEqual([0, 1, 2]);
    }
  });
});

const device = await useDevice();

describe("tidy", () => {
  it("disposes intermediates and keeps what is returned", () => {
    const before = device.memory().liveBytes;
    const kept = device.tidy(() => {
      Tensor.zeros(device, [1000]);
      const x = Tensor.zeros(device, [10]);
      return { x, nested: [Tensor.zeros(device, [20])] };
    });
    expect(kept.x.disposed).toBe(false);
    expect(kept.nested[0].disposed).toBe(false);
    kept.x.dispose();
    kept.nested[0].dispose();
    expect(device.memory().liveBytes).toBe(before);
  });

  it("disposes everything when the function throws", () => {
    const before = device.memory().liveBytes;
    expect(() =>
      device.tidy(() => {
        Tensor.zeros(device, [100]);
        throw new Error("boom");
      }),
    ).toThrow("boom");
    expect(device.memory().liveBytes).toBe(before);
  });

  it("moves kept tensors to the enclosing scope, and keep() opts out of it", () => {
    let inner!: Tensor;
    let escaped!: Tensor;
    device.tidy(() => {
      inner = device.tidy(() => Tensor.zeros(device, [4]));
      escaped = Tensor.zeros(device, [4]).keep();
    });
    expect(inner.disposed).toBe(true);
    expect(escaped.disposed).toBe(false);
    escaped.dispose();
  });

  it("reuses pooled GPU buffers across iterations (peak does not grow)", () => {
    device.pool.resetPeak();
    for (let i = 0; i < 20; i++) {
      device.tidy(() => {
        Tensor.empty(device, [256, 256]);
      });
    }
    const s = device.memory();
    expect(s.peakLiveBytes - s.liveBytes).toBe(256 * 256 * 4);
  });
});

describe("tensor buffers", () => {
  it("can be bound as uniforms on CPU adapters only (their kernels read packed windows through them)", () => {
    const t = Tensor.empty(device, [4]);
    const uniform = (t.buffer.usage & GPUBufferUsage.UNIFORM) !== 0;
    expect(uniform).toBe(device.info.isCpu);
    expect(t.buffer.usage & GPUBufferUsage.STORAGE).toBe(GPUBufferUsage.STORAGE);
    t.dispose();
  });
});
