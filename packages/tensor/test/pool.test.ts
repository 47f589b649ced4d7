import { describe, expect, it, onTestFinished } from "vitest";
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

describe("BufferPool.reclaiming (fake buffers)", () => {
  const fakePool = () => {
    const destroyed: number[] = [];
    const log: string[] = [];
    const pool = new BufferPool(
      (size) => ({ size, destroy: () => destroyed.push(size) }) as unknown as GPUBuffer,
      () => {},
      () => log.push("flush"),
    );
    return { pool, destroyed, log };
  };

  it("makes a missing class from free buffers of other classes, largest first, flushing before it destroys", () => {
    const { pool, destroyed, log } = fakePool();
    const held = [4096, 8192, 8192, 16384].map((n) => pool.acquire(n));
    for (const b of held) pool.release(b);
    expect(pool.stats().totalBytes).toBe(36864);
    // Outside reclaiming the pool only grows.
    pool.release(pool.acquire(2048));
    expect(destroyed).toEqual([]);
    const got = pool.reclaiming(() => pool.acquire(20_000));
    // 20,000 bytes (class 20,224) need the 16 KiB buffer and one of 8 KiB; the 4 KiB and the other 8 KiB stay.
    expect(destroyed).toEqual([16384, 8192]);
    expect(log).toEqual(["flush"]);
    expect(got.size).toBe(20224);
    expect(pool.stats()).toMatchObject({ liveBytes: 20224, pooledBytes: 4096 + 8192 + 2048, destroyed: 2 });
    // A class with a free buffer is reused, nothing destroyed.
    pool.reclaiming(() => pool.acquire(8000));
    expect(destroyed).toHaveLength(2);
  });

  it("holds no more than what is live when each size is new and the last one's buffers are free", () => {
    const { pool } = fakePool();
    let live: GPUBuffer[] = [];
    pool.reclaiming(() => {
      // A VAE decode in miniature: each level's tensors twice the size of the last one's, the level before freed.
      for (let level = 0; level < 6; level++) {
        for (const b of live) pool.release(b);
        live = [0, 1, 2].map(() => pool.acquire(65536 << level));
        const { totalBytes, liveBytes } = pool.stats();
        expect(totalBytes).toBe(liveBytes);
      }
    });
    expect(pool.stats()).toMatchObject({ peakTotalBytes: 3 * (65536 << 5), peakLiveBytes: 3 * (65536 << 5) });
  });

  it("destroys nothing in a pool that does not release memory", () => {
    const { pool, destroyed } = fakePool();
    pool.releasesMemory = false;
    pool.release(pool.acquire(1 << 20));
    pool.reclaiming(() => pool.acquire(3 << 20));
    expect(destroyed).toEqual([]);
    expect(pool.stats().totalBytes).toBe(4 << 20);
  });

  it("destroys nothing while a watch (a recording) is open", () => {
    const { pool, destroyed } = fakePool();
    pool.release(pool.acquire(1 << 20));
    const end = pool.watch();
    pool.reclaiming(() => pool.acquire(3 << 20));
    end();
    expect(destroyed).toEqual([]);
    expect(pool.stats().pooledBytes).toBe(1 << 20);
  });
});

describe("Device.reclaiming", () => {
  it("releases memory by default on GPUs only (DeviceOptions.releaseMemory)", () => {
    expect(device.pool.releasesMemory).toBe(!device.info.isCpu);
  });

  it("computes the same values while it destroys the free buffers queued work still reads", async () => {
    const releases = device.pool.releasesMemory;
    device.pool.releasesMemory = true;
    onTestFinished(() => {
      device.pool.releasesMemory = releases;
    });
    device.pool.trim();
    // The one free buffer: a's, read by a copy recorded and not yet submitted.
    const a = Tensor.from(device, [1, 2, 3, 4], [4]);
    const copy = Tensor.empty(device, [4]);
    device.copy(a.buffer, 0, copy.buffer, 0, 16);
    a.dispose();
    const before = device.memory().destroyed;
    const big = device.reclaiming(() => Tensor.zeros(device, [1 << 16]));
    expect(device.memory().destroyed).toBe(before + 1);
    expect(Array.from(await copy.toFloat32())).toEqual([1, 2, 3, 4]);
    expect((await big.toFloat32()).every((v) => v === 0)).toBe(true);
    for (const t of [copy, big]) t.dispose();
  });
});

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
