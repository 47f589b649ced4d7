/**
 * A LoRA file from a Blob (a browser's File from the file picker), read as loadLora reads one from disk, without
 * the file system: its hash (A1111's) is computed with Web Crypto.
 */
import { SafetensorsFile } from "@ldm/weights";
import { openBlob } from "../models/load-stream.ts";
import { type Lora, readLora } from "./merge.ts";

/**
 * `origin` is the file's name: its extension says .safetensors or PyTorch .pt/.ckpt, its stem is what
 * `<lora:…>` calls it unless `name` is given. The hash is kohya's "addnet" hash (sha256 of the data after the
 * safetensors header) unless the metadata carries one (`sshs_model_hash`), the whole file's sha256 for .pt/.ckpt.
 */
export async function loraFromBlob(blob: Blob, origin: string, name = fileStem(origin)): Promise<Lora> {
  const file = await openBlob(blob, origin);
  try {
    const start = file instanceof SafetensorsFile ? file.header.dataStart : 0;
    const hash = file.metadata.sshs_model_hash || (await sha256Hex(blob.slice(start)));
    return await readLora(file, name, { hash });
  } finally {
    await file.close();
  }
}

function fileStem(name: string): string {
  return name.replace(/^.*[\\/]/, "").replace(/\.[^.]*$/, "");
}

async function sha256Hex(blob: Blob): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
