/**
 * Size classes for pooled buffers: exact multiples of 256 bytes up to 64 KiB, then four
 * classes per power of two (2^k · {1, 1.25, 1.5, 1.75}), so reuse across nearby sizes
 * wastes at most 25% and typically far less.
 */
export function bucketSize(bytes: number): number {
  if (!(bytes >= 0) || !Number.isFinite(bytes)) throw new Error(`invalid buffer size ${bytes}`);
  const min = 256;
  if (bytes <= 64 * 1024) return Math.max(min, Math.ceil(bytes / min) * min);
  const pow = 2 ** Math.floor(Math.log2(bytes));
  const quarter = pow / 4;
  return pow + Math.ceil((bytes - pow) / quarter) * quarter;
}

export interface PoolStats {
  /** Bytes held by live tensors (bucket sizes). */
  liveBytes: number;
  /** Highest liveBytes since creation or the last resetPeak(). */
  peakLiveBytes: number;
  /** Bytes sitting free in the pool, ready for reuse. */
  pooledBytes: number;
  /** liveBytes + pooledBytes: what the pool holds on the GPU. */
  totalBytes: number;
  peakTotalBytes: number;
  allocations: number;
  reuses: number;
  /** Free buffers destroyed: to make room for others (reclaiming()) or by trim(). */
  destroyed: number;
}

export type BufferFactory = (bytes: number) => GPUBuffer;

/**
 * Reuses GPU storage buffers by size class. Of a class's free buffers it hands out the one it created first, so a
 * repeated sequence of acquires and releases (a model's forward, call after call) gets the same buffers in the
 * same places whatever order the previous call released them in, and the device's cached bind groups for them
 * apply again (handing out the last one released cycled through new combinations call after call).
 */
export class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>();
  private readonly freeSet = new WeakSet<GPUBuffer>();
  /** Creation order of the pool's buffers. */
  private readonly order = new WeakMap<GPUBuffer, number>();
  /** The number of the acquisition that handed each buffer out last (acquisitions are counted from 1). */
  private readonly acquiredAt = new WeakMap<GPUBuffer, number>();
  private acquisitionCount = 0;
  /** While a watch is open: buffers acquired before it began and released since (see watch()). */
  private watched: { since: number; releasedOlder: Set<GPUBuffer> } | null = null;
  private created = 0;
  private live = 0;
  private pooled = 0;
  private peakLive = 0;
  private peakTotal = 0;
  private allocations = 0;
  private reuses = 0;
  private destroyedCount = 0;
  private reclaimDepth = 0;
  /**
   * Whether the pool gives memory back: reclaiming() acts only when it does, and pipelines trim() the pool after
   * a run only then (the Device sets it from DeviceOptions.releaseMemory).
   */
  releasesMemory = true;

  /**
   * `released` hears of every buffer returned to the pool (its contents are no one's any more); `beforeDestroy`
   * runs before free buffers are destroyed (the device submits the work it has recorded, which may use them).
   */
  constructor(
    private readonly create: BufferFactory,
    private readonly released: (buffer: GPUBuffer) => void = () => {},
    private readonly beforeDestroy: () => void = () => {},
  ) {}

  /**
   * Runs `fn` with the pool reclaiming: a buffer of a size class with none free is made from the memory of free
   * buffers of other classes, destroyed largest first until as many bytes are back, instead of on top of them.
   * For one pass over large tensors (a VAE decode at 512²: its levels' buffers, and those a sampling run left,
   * would otherwise all sit in the pool at once). Work that repeats wants the classes it keeps: a UNet called
   * step after step would destroy and recreate hundreds of buffers per call. Nothing is destroyed while a
   * watch is open: a recording keeps the buffers it bound. A pool that does not release memory runs `fn` as is.
   */
  reclaiming<T>(fn: () => T): T {
    if (!this.releasesMemory) return fn();
    this.reclaimDepth++;
    try {
      return fn();
    } finally {
      this.reclaimDepth--;
    }
  }

  /**
   * A buffer of at least `bytes`. `exact` skips the size classes (rounding to 256 bytes only): for
   * long-lived tensors such as weights, where the class rounding would be resident memory for nothing.
   */
  acquire(bytes: number, exact = false): GPUBuffer {
    const size = exact ? Math.max(256, Math.ceil(bytes / 256) * 256) : bucketSize(bytes);
    const list = this.free.get(size);
    let buffer: GPUBuffer;
    if (list?.length) {
      let first = 0;
      for (let i = 1; i < list.length; i++) if (this.rank(list[i]) < this.rank(list[first])) first = i;
      buffer = list[first];
      list[first] = list[list.length - 1];
      list.pop();
      this.freeSet.delete(buffer);
      this.pooled -= size;
      this.reuses++;
    } else {
      if (this.reclaimDepth > 0 && !this.watched) this.destroyFree(size);
      buffer = this.create(size);
      this.order.set(buffer, this.created++);
      this.allocations++;
    }
    this.handOut(buffer);
    return buffer;
  }

  private handOut(buffer: GPUBuffer): void {
    this.acquiredAt.set(buffer, ++this.acquisitionCount);
    this.live += buffer.size;
    this.peakLive = Math.max(this.peakLive, this.live);
    this.peakTotal = Math.max(this.peakTotal, this.live + this.pooled);
  }

  /** Acquisitions so far: a later acquisition of any buffer gets a higher number (acquisition()). */
  get acquisitions(): number {
    return this.acquisitionCount;
  }

  /**
   * The number of the acquisition that handed `buffer` out last (undefined for a buffer that is not the pool's): it
   * changes whenever the buffer is released and handed out again, so an unchanged number means the same holder.
   */
  acquisition(buffer: GPUBuffer): number | undefined {
    return this.acquiredAt.get(buffer);
  }

  /** Whether `buffer` sits free in the pool. */
  isFree(buffer: GPUBuffer): boolean {
    return this.freeSet.has(buffer);
  }

  /** Takes one particular free buffer out of the pool, as acquire() would hand it out. */
  claim(buffer: GPUBuffer): void {
    const list = this.free.get(buffer.size);
    const at = list?.indexOf(buffer) ?? -1;
    if (!list || at < 0) throw new Error(`BufferPool.claim: the ${buffer.size}-byte buffer is not free in the pool`);
    list[at] = list[list.length - 1];
    list.pop();
    this.freeSet.delete(buffer);
    this.pooled -= buffer.size;
    this.reuses++;
    this.handOut(buffer);
  }

  /**
   * Starts noting the buffers that are released while acquired before now (tensors that existed before and are
   * freed since); the returned function ends the watch and returns them.
   */
  watch(): () => Set<GPUBuffer> {
    if (this.watched) throw new Error("BufferPool.watch: a watch is already open");
    const watched = { since: this.acquisitionCount, releasedOlder: new Set<GPUBuffer>() };
    this.watched = watched;
    return () => {
      if (this.watched === watched) this.watched = null;
      return watched.releasedOlder;
    };
  }

  private rank(buffer: GPUBuffer): number {
    return this.order.get(buffer) ?? Number.POSITIVE_INFINITY;
  }

  release(buffer: GPUBuffer): void {
    this.released(buffer);
    const size = buffer.size;
    if (this.watched && (this.acquiredAt.get(buffer) ?? 0) <= this.watched.since) {
      this.watched.releasedOlder.add(buffer);
    }
    this.live -= size;
    this.pooled += size;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    list.push(buffer);
    this.freeSet.add(buffer);
  }

  /**
   * Destroys every free buffer (after beforeDestroy: the device first submits the work it recorded). GPU work
   * still queued keeps its buffers alive until it finishes.
   */
  trim(): void {
    this.destroyFree(Number.POSITIVE_INFINITY);
  }

  /** Destroys free buffers, largest first, until at least `bytes` of them are gone or none is left. */
  private destroyFree(bytes: number): void {
    if (this.pooled === 0) return;
    this.beforeDestroy();
    const sizes = [...this.free.keys()].sort((a, b) => b - a);
    let freed = 0;
    for (const size of sizes) {
      const list = this.free.get(size) ?? [];
      while (list.length && freed < bytes) {
        const b = list.pop() as GPUBuffer;
        b.destroy();
        this.freeSet.delete(b);
        this.acquiredAt.delete(b);
        this.pooled -= size;
        this.destroyedCount++;
        freed += size;
      }
      if (!list.length) this.free.delete(size);
      if (freed >= bytes) return;
    }
  }

  resetPeak(): void {
    this.peakLive = this.live;
    this.peakTotal = this.live + this.pooled;
  }

  stats(): PoolStats {
    return {
      liveBytes: this.live,
      peakLiveBytes: this.peakLive,
      pooledBytes: this.pooled,
      totalBytes: this.live + this.pooled,
      peakTotalBytes: this.peakTotal,
      allocations: this.allocations,
      reuses: this.reuses,
      destroyed: this.destroyedCount,
    };
  }
}
