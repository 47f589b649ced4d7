import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { blobReader, PickleError, TorchCheckpoint, TorchCheckpointError, ZipError } from "../src/index.ts";
import { xorshift } from "./synthetic.ts";

/**
 * Checkpoints that PyTorch's own loader would execute or choke on (reference/make_torch_fixtures.py writes
 * them; torch.load runs the four payloads). Each must be refused with an error naming the problem, within the
 * test timeout (no hang), and without the payload's side effect: the file it would create.
 */
const HOSTILE = join(import.meta.dirname, "fixtures", "torch", "hostile");

const CASES: [file: string, error: RegExp][] = [
  ["reduce-os-system.pt", /refused global os\.system/],
  ["builtins-exec.pt", /refused global builtins\.exec/],
  ["posix-system.pt", /refused global posix\.system/],
  ["nested-global.ckpt", /refused global __builtin__\.eval/], // protocol 2 writes builtins as __builtin__,
  ["lightning-callback.ckpt", /refused global pytorch_lightning\.callbacks\.model_checkpoint\.ModelCheckpoint/],
  ["memo-index.pt", /memo index 4294967295 was never stored/],
  ["truncated-pickle.pt", /the pickle is truncated/],
  ["truncated-zip.pt", /not a zip archive|truncated/],
  ["missing-storage.pt", /storage "7" is not in the archive \(no entry .*data\/7\)/],
  ["offset-past-end.pt", /tensor "w" .*reaches element 12 of storage "0", which holds 10 elements/],
  ["stride-past-end.pt", /tensor "w" .*reaches element 10 of storage "0", which holds 10 elements/],
  ["zip-bomb.pt", /inflates to more than its declared 100 bytes \(a zip bomb\?\)/],
  ["nesting.pt", /more than 1000 nested MARKs \(nesting too deep\)/],
  ["list-nesting.pt", /more than 100000 values on the stack \(nesting too deep\)/],
];

const ERRORS = [PickleError, TorchCheckpointError, ZipError];

async function open(bytes: Uint8Array, name: string) {
  const file = await TorchCheckpoint.open(blobReader(new Blob([bytes as Uint8Array<ArrayBuffer>]), name));
  // Reading every tensor is part of loading: the data must be checked too.
  for (const entry of file.tensors.values()) await file.readBytes(entry.name);
  return file;
}

describe("hostile and broken PyTorch checkpoints", () => {
  it.each(CASES)(
    "%s is refused, naming the problem, with no side effect",
    async (name, error) => {
      const marker = `/tmp/ldm-pwned-${name.replace(/\.\w+$/, "")}`;
      rmSync(marker, { force: true });
      const failure = await open(readFileSync(join(HOSTILE, name)), name).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(failure?.message).toMatch(error);
      expect(failure?.message).toContain(name);
      expect(ERRORS.some((kind) => failure instanceof kind)).toBe(true);
      expect(existsSync(marker)).toBe(false);
    },
    10_000,
  ); // a hang fails here rather than after the suite's two minutes

  it("random mutations of a valid checkpoint load or fail with a named error, never anything else", async () => {
    const originals = ["zip.pt", "legacy.pt"].map((n) =>
      readFileSync(join(import.meta.dirname, "fixtures", "torch", n)),
    );
    const next = xorshift(21);
    const started = performance.now();
    const outcomes = { loaded: 0, refused: 0 };
    for (let i = 0; i < 600 && performance.now() - started < 20_000; i++) {
      const bytes = Uint8Array.from(originals[i % 2]);
      const kind = next() % 3;
      if (kind === 0) {
        for (let k = 1 + (next() % 4); k > 0; k--) bytes[next() % bytes.length] = next() & 0xff;
      } else if (kind === 1) {
        bytes[next() % bytes.length] ^= 1 << (next() % 8);
      }
      const input = kind === 2 ? bytes.subarray(0, next() % bytes.length) : bytes;
      try {
        await open(input, `mutant-${i}`);
        outcomes.loaded++;
      } catch (e) {
        if (!ERRORS.some((kind) => e instanceof kind)) throw new Error(`mutant ${i}: ${(e as Error).stack}`);
        expect((e as Error).message).toContain(`mutant-${i}`);
        outcomes.refused++;
      }
    }
    // Both outcomes happen: mutations inside tensor data load (as other numbers), most others are caught.
    expect(outcomes.loaded).toBeGreaterThan(10);
    expect(outcomes.refused).toBeGreaterThan(10);
  });
});
