import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { toResultRow } from "../harness.ts";
import { checkResults, checkRow, DEVICE_ROW_KEYS, makeRow, ROW_KEYS, writeResults } from "../results.ts";

const here = join(import.meta.dirname, "..");
const row = { name: "op (f32)", ours_ms: 10, peer: "tfjs", peer_ms: 25, ratio: 2.5, gflops: null, peak_bytes: null };

describe("benchmark results schema", () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it("makeRow gives exactly the row fields, ratio = peer / ours, GFLOP/s from the FLOP count", () => {
    const r = makeRow({ name: "matmul (f32)", oursMs: 2, peer: "tfjs", peerMs: 5, flops: 4e9, peakBytes: 1024 });
    expect(Object.keys(r)).toEqual([...ROW_KEYS]);
    expect(r).toEqual({
      name: "matmul (f32)",
      ours_ms: 2,
      peer: "tfjs",
      peer_ms: 5,
      ratio: 2.5,
      gflops: 2000,
      peak_bytes: 1024,
    });
    expect(checkRow(r)).toBe(r);
    const alone = makeRow({ name: "x (f16)", oursMs: 1.23456 });
    expect(alone).toEqual({ ...alone, ours_ms: 1.235, peer: null, peer_ms: null, ratio: null, gflops: null });
    expect(checkRow(alone)).toBe(alone);
  });

  it("kernel harness results become rows with the dtype in the name", () => {
    const r = toResultRow({
      name: "matmul 8×8×8",
      dtype: "f16",
      ours_ms: 1,
      peer: "tfjs-backend-webgpu",
      peer_ms: 3,
      ratio: 3,
      gflops: 5,
      gbps: null,
      peer_gflops: 1.667,
    });
    expect(Object.keys(r)).toEqual([...ROW_KEYS]);
    expect(r.name).toBe("matmul 8×8×8 (f16)");
    expect(checkRow(r)).toBe(r);
  });

  it("checkRow names the row and the problem", () => {
    expect(() => checkRow({ ...row, dtype: "f32" })).toThrow(/'op \(f32\)'.*unexpected dtype/);
    const { peak_bytes: _, ...noPeak } = row;
    expect(() => checkRow(noPeak)).toThrow(/missing peak_bytes/);
    expect(() => checkRow({ ...row, ours_ms: 0 })).toThrow(/ours_ms 0/);
    expect(() => checkRow({ ...row, ratio: 0.4 })).toThrow(/ratio 0.4 is not peer_ms \/ ours_ms/);
    expect(() => checkRow({ ...row, peer: null })).toThrow(/all null/);
    expect(() => checkRow({ ...row, peak_bytes: 1.5 })).toThrow(/peak_bytes/);
    expect(() => checkRow([row])).toThrow(/not an object/);
    expect(() => checkRow(row, DEVICE_ROW_KEYS)).toThrow(/missing device/);
    expect(checkRow({ ...row, device: "NVIDIA H100" }, DEVICE_ROW_KEYS).name).toBe("op (f32)");
  });

  it("checkResults wants date, machine, adapter and unique rows", () => {
    const file = { date: "2026-11-26T18:00:00Z", machine: "m", adapter: "a", rows: [row] };
    expect(checkResults(file).rows).toHaveLength(1);
    expect(() => checkResults([row])).toThrow(/must be an object/);
    expect(() => checkResults({ ...file, adapter: "" })).toThrow(/adapter/);
    expect(() => checkResults({ ...file, date: "yesterday" })).toThrow(/not a date/);
    expect(() => checkResults({ ...file, rows: [row, row] })).toThrow(/appears twice/);
  });

  it("writeResults merges rows by name and stamps the file", () => {
    const dir = mkdtempSync(join(tmpdir(), "results-test-"));
    dirs.push(dir);
    const path = join(dir, "results.json");
    writeResults(path, [row, { ...row, name: "other (f32)" }], "adapter 1");
    writeResults(path, [{ ...row, ours_ms: 5, ratio: 5 }], "adapter 2");
    const file = checkResults(JSON.parse(readFileSync(path, "utf8")));
    expect(file.adapter).toBe("adapter 2");
    expect(file.rows.map((r) => [r.name, r.ours_ms])).toEqual([
      ["other (f32)", 10],
      ["op (f32)", 5],
    ]);
    expect(() => writeResults(path, [{ ...row, ratio: 9 }], "a")).toThrow(/ratio 9/);
  });

  it("the committed benchmarks/results.json conforms", () => {
    const file = checkResults(JSON.parse(readFileSync(join(here, "results.json"), "utf8")));
    expect(file.rows.length).toBeGreaterThan(0);
  });
});
