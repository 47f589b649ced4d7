import type { Tensor } from "@ldm/tensor";
import { expect } from "vitest";
import { Dump } from "../../src/validate/dump.ts";

/** max |actual − expected| / max |expected|: an error relative to the reference's scale. */
export function maxRelativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let err = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return err / scale;
}

/**
 * Expects a conditioning (disposed here) to equal the dump's `conditioning.out.<name>` in shape and within
 * `tolerance` of its max |value|.
 */
export async function expectConditioning(actual: Tensor, dumpPath: string, name: string, tolerance: number) {
  const dump = await Dump.open(dumpPath);
  try {
    const expected = await dump.floats("conditioning", "out", name);
    expect(actual.shape).toEqual(expected.shape);
    expect(maxRelativeError(await actual.toFloat32(), expected.data)).toBeLessThan(tolerance);
  } finally {
    actual.dispose();
    await dump.close();
  }
}
