/** Small helpers the benchmark scripts share. */
import { InvalidArgumentError } from "commander";

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** A commander argument parser for positive integer flags. */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`must be a positive integer, got '${value}'`);
  return n;
}
