import { ClipTokenizer } from "./clip-tokenizer.ts";

/**
 * Gunzips with the Compression Streams API (browsers, Deno, Node ≥ 18), for loading
 * `bpe_simple_vocab_16e6.txt.gz` where there is no zlib.
 */
export async function gunzipText(gzipped: Uint8Array<ArrayBuffer>): Promise<string> {
  const stream = new Blob([gzipped]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(stream).text();
}

/** A tokenizer from the bytes of CLIP's gzipped merges file, e.g. fetched in a browser. */
export async function clipTokenizerFromGzip(gzipped: Uint8Array<ArrayBuffer>): Promise<ClipTokenizer> {
  return ClipTokenizer.fromBpeMerges(await gunzipText(gzipped));
}
