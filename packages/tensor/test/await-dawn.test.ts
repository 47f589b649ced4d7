import { describe, expect, it } from "vitest";
import { awaitDawn } from "../src/gpu.ts";

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
    release();
    await waited;
    expect(globalThis.setImmediate).toBe(original);
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

  it("resolves to the awaited value", async () => {
    await expect(awaitDawn(Promise.resolve(42))).resolves.toBe(42);
  });
});
