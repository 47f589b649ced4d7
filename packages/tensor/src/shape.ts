export type Shape = readonly number[];

export function shapeSize(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function formatShape(shape: Shape): string {
  return `[${shape.join(", ")}]`;
}

export function assertValidShape(shape: Shape, what = "shape"): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new Error(
        `${what} ${formatShape(shape)} has an invalid dimension ${d}: dimensions must be non-negative integers`,
      );
    }
  }
}

export function shapesEqual(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Throws an error naming both shapes when they differ. */
export function assertSameShape(a: Shape, b: Shape, context: string): void {
  if (!shapesEqual(a, b)) {
    throw new Error(`${context}: shape ${formatShape(a)} does not match ${formatShape(b)}`);
  }
}

/** Row-major strides in elements. */
export function stridesOf(shape: Shape): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}
