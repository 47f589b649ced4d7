/**
 * The benchmark results file (benchmarks/results.json, and the GPU script's results-gpu.json): when, on what
 * machine and adapter, and one row per measurement with exactly the fields a script checking the issue's
 * targets reads. Every benchmark writes its rows through `writeResults`, which merges them by name into the
 * file and checks the schema, so no row can drift from it.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";

export interface ResultRow {
  /** Unique within a file; includes the dtype, e.g. "matmul 1024×1024×1024 (f32)". */
  name: string;
  ours_ms: number;
  /** What we are compared with ("tfjs-backend-webgpu", "torch 1.13.1 CPU, 2 threads"), null without a peer. */
  peer: string | null;
  peer_ms: number | null;
  /** peer_ms / ours_ms: above 1, ours is faster. */
  ratio: number | null;
  /** Our GFLOP/s, for rows with a known FLOP count. */
  gflops: number | null;
  /** Our peak GPU bytes (live tensors, weights included) where measured. */
  peak_bytes: number | null;
}

/** A row of the GPU script: the same fields plus the device it ran on. */
export interface DeviceRow extends ResultRow {
  device: string;
}

export interface ResultsFile<Row extends ResultRow = ResultRow> {
  /** ISO time of the latest write. */
  date: string;
  /** CPU model × count, memory, Node version. */
  machine: string;
  /** The WebGPU adapter our side ran on. */
  adapter: string;
  rows: Row[];
}

export const ROW_KEYS = ["name", "ours_ms", "peer", "peer_ms", "ratio", "gflops", "peak_bytes"] as const;
export const DEVICE_ROW_KEYS = [...ROW_KEYS, "device"] as const;

function round(x: number): number {
  return Number(x.toPrecision(4));
}

export interface Measurement {
  name: string;
  oursMs: number;
  peer?: string;
  peerMs?: number;
  /** Floating-point operations of one call, for the GFLOP/s column. */
  flops?: number;
  peakBytes?: number;
}

/** A row from a measurement: ratio and GFLOP/s computed, times rounded to 4 significant digits. */
export function makeRow(m: Measurement): ResultRow {
  const hasPeer = m.peer !== undefined && m.peerMs !== undefined;
  return {
    name: m.name,
    ours_ms: round(m.oursMs),
    peer: hasPeer ? (m.peer ?? null) : null,
    peer_ms: hasPeer ? round(m.peerMs as number) : null,
    ratio: hasPeer ? round((m.peerMs as number) / m.oursMs) : null,
    gflops: m.flops === undefined ? null : round(m.flops / m.oursMs / 1e6),
    peak_bytes: m.peakBytes ?? null,
  };
}

function isPositive(v: unknown): v is number {
  return typeof v === "number" && Number.isFinite(v) && v > 0;
}

/** Throws an error naming the row and the field when `row` does not have exactly `keys` with valid values. */
export function checkRow(row: unknown, keys: readonly string[] = ROW_KEYS): ResultRow {
  if (typeof row !== "object" || row === null || Array.isArray(row)) {
    throw new Error(`results row ${JSON.stringify(row)} is not an object`);
  }
  const r = row as Record<string, unknown>;
  const label = typeof r.name === "string" && r.name ? `results row '${r.name}'` : `results row ${JSON.stringify(r)}`;
  const extra = Object.keys(r).filter((k) => !keys.includes(k));
  const missing = keys.filter((k) => !(k in r));
  if (extra.length || missing.length) {
    throw new Error(
      `${label}: fields must be exactly ${keys.join(", ")}${missing.length ? `; missing ${missing.join(", ")}` : ""}${extra.length ? `; unexpected ${extra.join(", ")}` : ""}`,
    );
  }
  if (typeof r.name !== "string" || !r.name) throw new Error(`${label}: name must be a non-empty string`);
  if (!isPositive(r.ours_ms)) throw new Error(`${label}: ours_ms ${r.ours_ms} must be a positive number`);
  const peerFields = [r.peer, r.peer_ms, r.ratio];
  if (peerFields.some((v) => v === null) && !peerFields.every((v) => v === null)) {
    throw new Error(`${label}: peer, peer_ms and ratio must be all null (no peer) or all set`);
  }
  if (r.peer !== null) {
    if (typeof r.peer !== "string" || !r.peer) throw new Error(`${label}: peer must be a non-empty string or null`);
    if (!isPositive(r.peer_ms)) throw new Error(`${label}: peer_ms ${r.peer_ms} must be a positive number`);
    if (!isPositive(r.ratio)) throw new Error(`${label}: ratio ${r.ratio} must be a positive number`);
    // ratio is peer_ms / ours_ms of the rounded times, up to the rounding to 4 significant digits.
    const expected = r.peer_ms / r.ours_ms;
    if (Math.abs(r.ratio - expected) > 2e-3 * expected) {
      throw new Error(`${label}: ratio ${r.ratio} is not peer_ms / ours_ms = ${expected.toPrecision(4)}`);
    }
  }
  if (r.gflops !== null && !isPositive(r.gflops)) throw new Error(`${label}: gflops must be a positive number or null`);
  if (r.peak_bytes !== null && !(Number.isInteger(r.peak_bytes) && (r.peak_bytes as number) > 0)) {
    throw new Error(`${label}: peak_bytes must be a positive integer or null`);
  }
  if ("device" in r && (typeof r.device !== "string" || !r.device)) {
    throw new Error(`${label}: device must be a non-empty string`);
  }
  return r as unknown as ResultRow;
}

/** Checks a parsed results file: date, machine and adapter strings, unique row names, every row's schema. */
export function checkResults(json: unknown, keys: readonly string[] = ROW_KEYS): ResultsFile {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new Error("a results file must be an object { date, machine, adapter, rows }");
  }
  const file = json as Record<string, unknown>;
  for (const field of ["date", "machine", "adapter"]) {
    if (typeof file[field] !== "string" || !file[field])
      throw new Error(`results: ${field} must be a non-empty string`);
  }
  if (Number.isNaN(Date.parse(file.date as string))) throw new Error(`results: date '${file.date}' is not a date`);
  if (!Array.isArray(file.rows)) throw new Error("results: rows must be an array");
  const names = new Set<string>();
  for (const row of file.rows) {
    const { name } = checkRow(row, keys);
    if (names.has(name)) throw new Error(`results: row '${name}' appears twice`);
    names.add(name);
  }
  return file as unknown as ResultsFile;
}

export function machineDescription(): string {
  const cores = cpus();
  const model = cores[0]?.model.trim() ?? "unknown CPU";
  return `${cores.length} × ${model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
}

/**
 * Merges `rows` into the results file at `path` (rows of the same name are replaced, others kept) and stamps
 * it with now, this machine and `adapter`. The merged file is checked before it is written.
 */
export function writeResults<Row extends ResultRow>(
  path: string,
  rows: readonly Row[],
  adapter: string,
  keys: readonly string[] = ROW_KEYS,
): void {
  const previous = existsSync(path) ? checkResults(JSON.parse(readFileSync(path, "utf8")), keys).rows : [];
  const merged = [...previous.filter((p) => !rows.some((r) => r.name === p.name)), ...rows];
  const file: ResultsFile = { date: new Date().toISOString(), machine: machineDescription(), adapter, rows: merged };
  checkResults(file, keys);
  writeFileSync(path, `${JSON.stringify(file, null, 2)}\n`);
}
