/**
 * Tensors derived from another one (a GEMM's packed B, a convolution's Winograd-transformed weights) kept across
 * calls, per device and kind, within a byte budget. The source is a weight, the same on every call, so the
 * derivation (a pass over it and a dispatch) is done once. An entry is used only while its source buffer's
 * `contentsVersion` is unchanged: a LoRA merge writing the weight, a kernel writing it, or its tensor's disposal
 * makes it stale; stale entries are dropped at the cache's next miss, and derived again on their next use. Entries
 * are kept first come, first kept, up to the budget: a model's layers run in the same order every call, which would
 * evict every entry before its reuse if the oldest made room.
 */
import type { Device, Tensor } from "@ldm/tensor";

export class DerivedCache {
  private bytes = 0;
  /** By source buffer: what was derived from it (the caller's key), at which contentsVersion. */
  private readonly entries = new Map<GPUBuffer, { key: string; version: number; value: Tensor }>();

  constructor(
    private readonly device: Device,
    private budget: number,
  ) {}

  /** Changes the budget (0: derive anew on every call), dropping entries, first kept first, until they fit. */
  setBudget(op: string, bytes: number): void {
    if (!(bytes >= 0) || !Number.isFinite(bytes)) {
      throw new Error(`${op}: the budget must be a finite number of bytes ≥ 0, got ${bytes}`);
    }
    this.budget = bytes;
    for (const [buffer, entry] of this.entries) {
      if (this.bytes <= bytes) break;
      this.drop(buffer, entry.value);
    }
  }

  stats(): { entries: number; bytes: number; budget: number } {
    return { entries: this.entries.size, bytes: this.bytes, budget: this.budget };
  }

  /** Whether `get(source, key, …)` of a value of `bytes` would return a kept one: held and valid, or room for it. */
  keeps(source: Tensor, key: string, bytes: number): boolean {
    const hit = this.entries.get(source.buffer);
    if (hit && hit.key === key && hit.version === this.device.contentsVersion(source.buffer)) return true;
    let free = this.budget - this.bytes + (hit ? hit.value.byteLength : 0);
    for (const [buffer, entry] of this.entries) {
      if (buffer !== source.buffer && this.device.contentsVersion(buffer) !== entry.version) {
        free += entry.value.byteLength;
      }
    }
    return bytes <= free;
  }

  /**
   * What `derive()` makes of `source` under `key`: the kept value where valid, else a new one, kept when the budget
   * has room. `owned`: the caller disposes it after use.
   */
  get(source: Tensor, key: string, derive: () => Tensor): { value: Tensor; owned: boolean } {
    if (this.budget === 0) return { value: derive(), owned: true };
    const buffer = source.buffer;
    const version = this.device.contentsVersion(buffer);
    const hit = this.entries.get(buffer);
    if (hit && hit.key === key && hit.version === version) return { value: hit.value, owned: false };
    if (hit) this.drop(buffer, hit.value);
    // Entries whose source changed or was freed (e.g. a model disposed) are dropped at the next miss.
    for (const [stale, entry] of this.entries) {
      if (this.device.contentsVersion(stale) !== entry.version) this.drop(stale, entry.value);
    }
    const value = derive();
    if (this.bytes + value.byteLength > this.budget) return { value, owned: true };
    this.entries.set(buffer, { key, version, value: value.keep() });
    this.bytes += value.byteLength;
    return { value, owned: false };
  }

  private drop(buffer: GPUBuffer, value: Tensor): void {
    this.entries.delete(buffer);
    this.bytes -= value.byteLength;
    value.dispose();
  }
}

const caches = new WeakMap<Device, Map<string, DerivedCache>>();

/** The device's cache of a kind, created with `initialBudget` bytes on first use. */
export function derivedCache(device: Device, kind: string, initialBudget: number): DerivedCache {
  let kinds = caches.get(device);
  if (!kinds) {
    kinds = new Map();
    caches.set(device, kinds);
  }
  let cache = kinds.get(kind);
  if (!cache) {
    cache = new DerivedCache(device, initialBudget);
    kinds.set(kind, cache);
  }
  return cache;
}
