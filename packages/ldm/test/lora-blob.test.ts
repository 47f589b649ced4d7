/** loraFromBlob (the browser's file picker) reads a LoRA as loadLora reads it from disk, hash included. */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loraFromBlob } from "../src/lora/blob.ts";
import { loadLora } from "../src/lora/files.ts";

const loras = fileURLToPath(new URL("./fixtures/lora/", import.meta.url));

describe("loraFromBlob", () => {
  it.each(["tiny-sd1.kohya.safetensors", "tiny-sd1.peft.safetensors"])(
    "%s: the same name, alias, A1111 hash and tensors as loadLora",
    async (file) => {
      const path = `${loras}${file}`;
      const { path: _, ...fromDisk } = await loadLora(path);
      const fromBlob = await loraFromBlob(new Blob([readFileSync(path)]), file);
      expect(fromBlob.hash).toMatch(/^[0-9a-f]{64}$/);
      // Errors name where the tensors came from: the path on disk, the file's name from a picker.
      expect(fromBlob.tensors.origin).toBe(file);
      expect({ ...fromBlob, tensors: { ...fromBlob.tensors, origin: path } }).toEqual(fromDisk);
    },
  );
});
