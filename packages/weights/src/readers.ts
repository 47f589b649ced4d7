import { type ByteReader, SafetensorsError } from "./safetensors.ts";

/** Byte readers that work in browsers and Node alike (for files on disk, see node/file.ts). */

/** A reader over a Blob (a browser File, or a Node Blob): each read slices the range it needs. */
export function blobReader(blob: Blob, name: string): ByteReader {
  return {
    name,
    size: blob.size,
    async readInto(position, target) {
      const end = position + target.byteLength;
      if (end > blob.size) throw new SafetensorsError(`${name}: read of bytes ${position}–${end} past the end`);
      target.set(new Uint8Array(await blob.slice(position, end).arrayBuffer()));
    },
    async close() {},
  };
}

/**
 * A reader over a URL that serves byte ranges (HTTP Range requests: a hub's resolve URL, a static file
 * server): each read fetches only the bytes it needs, so a remote checkpoint streams without being downloaded
 * whole. The size comes from a HEAD request.
 */
export async function httpReader(url: string, init: { headers?: Record<string, string> } = {}): Promise<ByteReader> {
  const failure = (what: string) => new SafetensorsError(`${url}: ${what}`);
  const head = await fetch(url, { method: "HEAD", headers: init.headers }).catch((e: Error) => {
    throw failure(`cannot reach the server (${(e as { cause?: Error }).cause?.message ?? e.message})`);
  });
  const length = head.headers.get("content-length");
  if (!head.ok || length === null) throw failure(`no size (HTTP ${head.status}, content-length ${length})`);
  const size = Number(length);
  return {
    name: url,
    size,
    async readInto(position, target) {
      if (target.byteLength === 0) return;
      const end = position + target.byteLength;
      if (end > size) throw failure(`read of bytes ${position}–${end} past the end (${size} bytes)`);
      const response = await fetch(url, { headers: { ...init.headers, range: `bytes=${position}-${end - 1}` } });
      if (response.status !== 206 && !(response.status === 200 && position === 0 && end === size)) {
        await response.body?.cancel();
        throw failure(`the server did not honour the byte range ${position}–${end} (HTTP ${response.status})`);
      }
      let filled = 0;
      for await (const part of response.body as unknown as AsyncIterable<Uint8Array>) {
        if (filled + part.byteLength > target.byteLength)
          throw failure(`the server sent more than bytes ${position}–${end}`);
        target.set(part, filled);
        filled += part.byteLength;
      }
      if (filled !== target.byteLength) throw failure(`the server sent ${filled} of bytes ${position}–${end}`);
    },
    async close() {},
  };
}
