import type { WeightRequest } from "@ldm/tensor";
import { type SingleFileLayout, type SingleFileOptions, singleFileLayout } from "./layouts.ts";
import { type ByteReader, SafetensorsError, SafetensorsFile } from "./safetensors.ts";
import { type LoadOptions, MappedWeightSource } from "./source.ts";

/**
 * Safetensors from a one-pass byte stream (a `fetch` Response's body in a browser): no seeking, so the
 * header is parsed from the first bytes and the data is consumed once, in file order — the loader already
 * sorts its reads by offset, skipping the bytes of tensors nobody asked for.
 */

/**
 * A ByteReader over a stream that only reads forward: each read discards the bytes before its position and
 * copies its range out of the stream's own chunks. Reading bytes already passed is an error, not a re-read.
 * `size` is Infinity when unknown (the header's offsets are then checked against the stream's actual end).
 */
export function streamReader(
  stream: ReadableStream<Uint8Array>,
  name: string,
  size = Number.POSITIVE_INFINITY,
): ByteReader {
  const reader = stream.getReader();
  let pending: Uint8Array = new Uint8Array(0); // the unread rest of the stream's last chunk
  let position = 0; // file offset of pending[0]
  let busy = false;
  const readForward = async (start: number, target: Uint8Array) => {
    if (start < position) {
      throw new SafetensorsError(
        `${name}: bytes from ${start} were already consumed (the stream is at byte ${position}); a stream is read once, in file order`,
      );
    }
    const end = start + target.byteLength;
    while (position < end) {
      if (!pending.byteLength) {
        const { done, value } = await reader.read().catch((e: Error) => {
          throw new SafetensorsError(`${name}: the stream failed at byte ${position}: ${e.message}`);
        });
        if (done) {
          throw new SafetensorsError(
            `${name}: the stream ended at byte ${position}, before byte ${end} (truncated download?)`,
          );
        }
        pending = value;
      }
      const wanted = position < start ? start - position : end - position;
      const take = Math.min(wanted, pending.byteLength);
      if (position >= start) target.set(pending.subarray(0, take), position - start);
      pending = pending.subarray(take);
      position += take;
    }
  };
  return {
    name,
    size,
    async readInto(start, target) {
      // Interleaved reads would each move the one stream position under the other.
      if (busy) throw new SafetensorsError(`${name}: a stream serves one read at a time`);
      busy = true;
      try {
        await readForward(start, target);
      } finally {
        busy = false;
      }
    },
    // Cancelling an already failed stream rejects with its failure, which its reads have reported.
    close: () => reader.cancel().catch(() => {}),
  };
}

/** A MappedWeightSource whose bytes come from a stream: its one `load` consumes the stream. */
class OnePassWeightSource extends MappedWeightSource {
  private loaded = false;

  override async load(requests: readonly WeightRequest[]): Promise<void> {
    if (this.loaded) {
      throw new SafetensorsError(
        `${this.origin}: this stream was already loaded (a stream is read once; request every tensor in one load, or fetch it again)`,
      );
    }
    this.loaded = true;
    await super.load(requests);
  }
}

export interface StreamOptions extends LoadOptions, SingleFileOptions {
  /** Shown in errors: the URL or file name. */
  origin: string;
  /** The stream's length in bytes when known (a File's size): tensors' offsets are then checked up front. */
  size?: number;
}

export interface SafetensorsStream {
  /** The parsed header; its data can be read once, forward. */
  readonly file: SafetensorsFile;
  /** The single-file key table (canonical keys, OpenCLIP renamed and split), ignored keys, text naming. */
  readonly layout: SingleFileLayout;
  /** The weights under canonical keys; `load` may be called once, with every tensor wanted. */
  readonly source: MappedWeightSource;
  /** Cancels the rest of the stream. */
  close(): Promise<void>;
}

/**
 * Reads and validates the header from the start of a single-file checkpoint's stream and maps its keys as
 * `openCheckpoint` does for a file; the data stays in the stream until `source.load`.
 */
export async function openSafetensorsStream(
  stream: ReadableStream<Uint8Array>,
  options: StreamOptions,
): Promise<SafetensorsStream> {
  const reader = streamReader(stream, options.origin, options.size);
  try {
    const file = await SafetensorsFile.open(reader);
    const layout = singleFileLayout(file, options);
    const source = new OnePassWeightSource(options.origin, layout.table, options);
    return { file, layout, source, close: () => reader.close() };
  } catch (e) {
    await reader.close();
    throw e;
  }
}
