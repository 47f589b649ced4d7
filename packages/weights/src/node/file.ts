import { open, stat } from "node:fs/promises";
import {
  type ByteReader,
  encodeHeader,
  SafetensorsError,
  SafetensorsFile,
  type TensorToWrite,
} from "../safetensors.ts";
import { TorchCheckpoint } from "../torch.ts";

/** A reader over a file on disk through one file handle: positioned reads, nothing mapped or slurped. */
export async function fileReader(path: string): Promise<ByteReader> {
  let size: number;
  try {
    const s = await stat(path);
    if (s.isDirectory()) throw new SafetensorsError(`${path}: is a directory, not a safetensors file`);
    size = s.size;
  } catch (e) {
    if (e instanceof SafetensorsError) throw e;
    throw new SafetensorsError(`${path}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const handle = await open(path, "r");
  return {
    name: path,
    size,
    async readInto(position, target) {
      let filled = 0;
      while (filled < target.byteLength) {
        const { bytesRead } = await handle.read(target, filled, target.byteLength - filled, position + filled);
        if (bytesRead === 0) {
          throw new SafetensorsError(
            `${path}: unexpected end of file at byte ${position + filled} (the file shrank while reading?)`,
          );
        }
        filled += bytesRead;
      }
    },
    close: () => handle.close(),
  };
}

/** Opens and validates a safetensors file (header only; tensors are read on demand). */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  const reader = await fileReader(path);
  try {
    return await SafetensorsFile.open(reader);
  } catch (e) {
    await reader.close();
    throw e;
  }
}

/** PyTorch checkpoint files by extension (a pickle, never executed: see torch.ts). */
export const TORCH_CHECKPOINT = /\.(ckpt|pt|pth)$/i;

/** Opens a PyTorch checkpoint (`torch.save`, zip or legacy format) as data; tensors are read on demand. */
export async function openTorchCheckpoint(path: string): Promise<TorchCheckpoint> {
  const reader = await fileReader(path);
  try {
    return await TorchCheckpoint.open(reader);
  } catch (e) {
    await reader.close();
    throw e;
  }
}

/**
 * Writes tensors to a safetensors file, one tensor's data at a time (a tensor given as a function is produced
 * only when its turn comes, so a large checkpoint can be generated without holding it in memory).
 */
export async function writeSafetensors(
  path: string,
  tensors: Readonly<Record<string, TensorToWrite>>,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  const { header, order } = encodeHeader(tensors, metadata);
  const handle = await open(path, "w");
  const writeAll = async (bytes: Uint8Array) => {
    for (let done = 0; done < bytes.byteLength; ) done += (await handle.write(bytes, done)).bytesWritten;
  };
  try {
    await writeAll(header);
    for (const name of order) {
      const t = tensors[name];
      const data = typeof t.data === "function" ? await t.data() : t.data;
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      // encodeHeader checked eager data; a produced tensor is checked here, before it can shift the layout.
      if (typeof t.data === "function") encodeHeader({ [name]: { ...t, data } });
      await writeAll(bytes);
    }
  } finally {
    await handle.close();
  }
}
