import { describe, expect, it, vi } from "vitest";
import { awaitDawn, pollDelayMs } from "../src/gpu.ts";

describe("awaitDawn", () => {
  it("defers setImmediate to the timer queue while it waits, and restores it after", async () => {
    const original = globalThis.setImmediate;
    let release!: () => void;
    const pending = new Promise<void>((r) => {
      release = r;
    });
    const waited = awaitDawn(pending);
    expect(globalThis.setImmediate).not.toBe(original);
    // A deferred callback still runs, with its arguments.
    const ran = await new Promise((resolve) => setImmediate((a: number, b: number) => resolve(a + b), 2, 3));
    expect(ran).toBe(5);
    // And a deferred handle can still be cleared.
    let cleared = true;
    const handle = setImmediate(() => {
      cleared = false;
    });
    clearImmediate(handle);
    await new Promise((r) => setTimeout(r, 5));
    expect(cleared).toBe(true);
    // A handle from the wait, cleared after it (release and await are microtasks: the timer cannot fire between).
    let lateRan = false;
    const late = setImmediate(() => {
      lateRan = true;
    });
    release();
    await waited;
    expect(globalThis.setImmediate).toBe(original);
    clearImmediate(late);
    await new Promise((r) => setTimeout(r, 5));
    expect(lateRan).toBe(false);
  });

  it("restores setImmediate only when the last of overlapping waits ends, also when one rejects", async () => {
    const original = globalThis.setImmediate;
    let fail!: (e: Error) => void;
    const first = awaitDawn(
      new Promise<void>((_, reject) => {
        fail = reject;
      }),
    );
    let finish!: () => void;
    const second = awaitDawn(
      new Promise<void>((r) => {
        finish = r;
      }),
    );
    fail(new Error("device lost"));
    await expect(first).rejects.toThrow("device lost");
    expect(globalThis.setImmediate).not.toBe(original);
    finish();
    await second;
    expect(globalThis.setImmediate).toBe(original);
  });

  it("polls on Node's own timers while a test fakes them", async () => {
    // Fails instead of hanging when the poll waits on a faked timer.
    let guard: ReturnType<typeof setTimeout> | undefined;
    const stuck = new Promise<never>((_, reject) => {
      guard = setTimeout(() => reject(new Error("the poll never ran: it used the faked setTimeout")), 2000);
    });
    const realClearTimeout = globalThis.clearTimeout;
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      let poll!: () => void;
      const pending = new Promise<number>((resolve) => {
        poll = () => setImmediate(() => resolve(7)); // as dawn.node does, once the wait has begun
      });
      const waited = awaitDawn(pending);
      poll();
      await expect(Promise.race([waited, stuck])).resolves.toBe(7);
    } finally {
      vi.useRealTimers();
      realClearTimeout(guard);
    }
  });

  it("thins a backing-off wait's polls as it grows: a fiftieth of the time waited, at most 8 ms", () => {
    expect(pollDelayMs(0)).toBe(0);
    expect(pollDelayMs(100)).toBe(2);
    expect(pollDelayMs(400)).toBe(8);
    expect(pollDelayMs(60_000)).toBe(8);
    expect(pollDelayMs(-1)).toBe(0);
  });

  /** Polls as dawn.node does (re-arming setImmediate until the work is done) through a 1 s wait. */
  async function pollsDuring(waits: boolean[]): Promise<number> {
    let done = false;
    let polls = 0;
    const work = new Promise<void>((resolve) => setTimeout(resolve, 1000)).then(() => {
      done = true;
    });
    const waited = waits.map((backoff) => awaitDawn(work, backoff));
    const poll = () => {
      polls++;
      if (!done) setImmediate(poll);
    };
    setImmediate(poll);
    await Promise.all(waited);
    return polls;
  }

  it("polls a backing-off wait far less often, unless an eager wait overlaps it", async () => {
    const eager = await pollsDuring([false]);
    const backoff = await pollsDuring([true]);
    const mixed = await pollsDuring([true, false]);
    // A tick is about 1 ms: ~850 polls; backing off, gaps reach 1 ms at 50 ms and 8 ms at 400 ms: ~230.
    expect(backoff * 2).toBeLessThan(eager);
    expect(mixed * 2).toBeGreaterThan(eager);
  });

  it("resolves to the awaited value", async () => {
    await expect(awaitDawn(Promise.resolve(42))).resolves.toBe(42);
  });
});
