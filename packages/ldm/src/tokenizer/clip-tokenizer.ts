import { decodeHTML } from "entities";

/** CLIP's context length: start token, at most 75 BPE tokens, end token. */
export const CLIP_CONTEXT_LENGTH = 77;
export const START_OF_TEXT = "<|startoftext|>";
export const END_OF_TEXT = "<|endoftext|>";
/** Merges CLIP uses from the BPE file: 49152 − 256 − 2 (the vocab is 256 bytes, 256 bytes + `</w>`, merges, 2 specials). */
export const CLIP_MERGE_COUNT = 49152 - 256 - 2;

const END_OF_WORD = "</w>";

/**
 * How the 77-long form is padded after the end token: with the end token (SD1's OpenAI CLIP, HF
 * CLIPTokenizer's pad_token) or with 0 (OpenCLIP's tokenize, used by SD2).
 */
export type PadWith = "end" | "zero";

export interface TokenizeOptions {
  /** Length of the padded form and the most ids kept, start and end included (default 77). */
  maxLength?: number;
  padWith?: PadWith;
}

export interface Tokenized {
  /** Start token, BPE tokens, end token — truncated to maxLength keeping the end token. */
  ids: number[];
  /** `ids` padded to maxLength. */
  padded: number[];
  /** BPE tokens dropped by truncation (0 when the prompt fits). */
  truncated: number;
}

// Python's str.isspace() (used by str.strip()) and the `regex` module's \s (used by whitespace_clean and the
// pre-tokeniser) differ from JavaScript's \s: both include U+0085 and exclude U+FEFF; isspace also has U+001C–1F.
const REGEX_SPACE = "\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_ISSPACE = `${REGEX_SPACE}\\x1c-\\x1f`;
const LEADING_OR_TRAILING_SPACE = new RegExp(`^[${PY_ISSPACE}]+|[${PY_ISSPACE}]+$`, "gu");
const SPACE_RUN = new RegExp(`[${REGEX_SPACE}]+`, "gu");
// CLIP's pattern, case-insensitive as upstream (the text is lowercased first, so only the specials could care).
const PRE_TOKEN = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^${REGEX_SPACE}\\p{L}\\p{N}]+`,
  "giu",
);

/**
 * CLIP's text clean-up without ftfy (which has no JavaScript port): HTML entities unescaped twice (Python's
 * html.unescape semantics), whitespace runs collapsed to one space, stripped, lowercased. ftfy.fix_text would
 * also NFC-normalise, straighten curly quotes and fix mojibake; prompts that need those differ.
 */
export function cleanText(text: string): string {
  const unescaped = decodeHTML(decodeHTML(text)).replace(LEADING_OR_TRAILING_SPACE, "");
  return unescaped.replace(SPACE_RUN, " ").replace(LEADING_OR_TRAILING_SPACE, "").toLowerCase();
}

/**
 * GPT-2's reversible byte → character table: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards,
 * so BPE never sees whitespace or control characters. Listed printable bytes first, the rest after: the order of
 * the vocabulary's first 256 ids.
 */
function byteCharsInVocabOrder(): [number, string][] {
  const isPrintable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const bytes = Array.from({ length: 256 }, (_, b) => b);
  const printable = bytes.filter(isPrintable).map((b): [number, string] => [b, String.fromCodePoint(b)]);
  const others = bytes
    .filter((b) => !isPrintable(b))
    .map((b, i): [number, string] => [b, String.fromCodePoint(256 + i)]);
  return [...printable, ...others];
}

const BYTE_CHARS = byteCharsInVocabOrder();
const BYTE_TO_CHAR = new Map(BYTE_CHARS);
const CHAR_TO_BYTE = new Map(BYTE_CHARS.map(([b, c]) => [c, b]));
const utf8 = new TextEncoder();

/** The byte-level vocabulary CLIP builds from its merges list: bytes, bytes + `</w>`, one token per merge, specials. */
function vocabFromMerges(merges: readonly (readonly [string, string])[]): string[] {
  const chars = BYTE_CHARS.map(([, c]) => c);
  return [...chars, ...chars.map((c) => c + END_OF_WORD), ...merges.map(([a, b]) => a + b), START_OF_TEXT, END_OF_TEXT];
}

function parseMergeLines(lines: readonly string[], source: string): [string, string][] {
  return lines.map((line, i) => {
    const parts = line.split(" ");
    if (parts.length !== 2 || !parts[0] || !parts[1]) {
      throw new Error(`${source}: merge ${i + 1} is "${line}", expected two symbols separated by one space`);
    }
    return [parts[0], parts[1]];
  });
}

/**
 * CLIP's byte-level BPE tokenizer, equal to openai/CLIP's simple_tokenizer (with ftfy.fix_text as identity) and
 * to HF CLIPTokenizer with ftfy installed. Takes vocabulary text, not files: see `vocab-files.ts` for loading.
 */
export class ClipTokenizer {
  readonly startId: number;
  readonly endId: number;
  private readonly encoder: Map<string, number>;
  private readonly decoder: Map<number, string>;
  private readonly ranks: Map<string, number>;
  private readonly cache = new Map<string, string[]>();

  private constructor(encoder: Map<string, number>, merges: readonly (readonly [string, string])[]) {
    this.encoder = encoder;
    this.decoder = new Map([...encoder].map(([token, id]) => [id, token]));
    this.ranks = new Map(merges.map(([a, b], rank) => [pairKey(a, b), rank]));
    this.startId = this.idOf(START_OF_TEXT);
    this.endId = this.idOf(END_OF_TEXT);
    this.cache.set(START_OF_TEXT, [START_OF_TEXT]);
    this.cache.set(END_OF_TEXT, [END_OF_TEXT]);
  }

  /**
   * From the text of a merges file in the format of CLIP's `bpe_simple_vocab_16e6.txt` (one header line, then one
   * merge per line). Like simple_tokenizer, uses at most CLIP's 48,894 merges; smaller vocabularies trained in the
   * same format (the built-in model's) use all of theirs.
   */
  static fromBpeMerges(text: string): ClipTokenizer {
    const lines = text.split("\n").slice(1, 1 + CLIP_MERGE_COUNT);
    if (lines.length === 0 || (lines.length === 1 && lines[0] === "")) {
      throw new Error("BPE merges file has no merges after its header line");
    }
    const merges = parseMergeLines(lines, "BPE merges file");
    return new ClipTokenizer(new Map(vocabFromMerges(merges).map((token, id) => [token, id])), merges);
  }

  /** From a Hugging Face tokenizer folder's `vocab.json` and `merges.txt` texts (as CLIPTokenizer reads them). */
  static fromVocabAndMerges(vocabJson: string, mergesText: string): ClipTokenizer {
    let vocab: unknown;
    try {
      vocab = JSON.parse(vocabJson);
    } catch (e) {
      throw new Error(`vocab.json is not valid JSON: ${(e as Error).message}`);
    }
    if (typeof vocab !== "object" || vocab === null || Array.isArray(vocab)) {
      throw new Error("vocab.json must be an object mapping tokens to ids");
    }
    const encoder = new Map<string, number>();
    for (const [token, id] of Object.entries(vocab)) {
      if (!Number.isInteger(id))
        throw new Error(`vocab.json: id of "${token}" is ${JSON.stringify(id)}, not an integer`);
      encoder.set(token, id as number);
    }
    const lines = mergesText
      .trim()
      .split("\n")
      .slice(1, 1 + CLIP_MERGE_COUNT);
    return new ClipTokenizer(encoder, parseMergeLines(lines, "merges.txt"));
  }

  /** Entries of the vocabulary (CLIP's: 49408). */
  get vocabularySize(): number {
    return this.encoder.size;
  }

  /** Id of a vocabulary entry (a byte-mapped token such as "photo</w>"), undefined if absent. */
  tokenId(token: string): number | undefined {
    return this.encoder.get(token);
  }

  /** The vocabulary as a Hugging Face tokenizer folder holds it: vocab.json and merges.txt texts. */
  toVocabAndMerges(): { vocabJson: string; mergesText: string } {
    const merges = [...this.ranks.keys()];
    return {
      vocabJson: JSON.stringify(Object.fromEntries(this.encoder)),
      mergesText: `#version: 0.2\n${merges.join("\n")}\n`,
    };
  }

  /** BPE ids of a prompt, without start/end tokens and untruncated. */
  encode(text: string): number[] {
    const ids: number[] = [];
    for (const [word] of cleanText(text).matchAll(PRE_TOKEN)) {
      let mapped = "";
      for (const byte of utf8.encode(word)) mapped += BYTE_TO_CHAR.get(byte);
      for (const token of this.bpe(mapped)) ids.push(this.idOf(token));
    }
    return ids;
  }

  /** The ids a CLIP text encoder takes: start, BPE tokens, end, truncated to maxLength keeping the end, padded. */
  tokenize(text: string, options: TokenizeOptions = {}): Tokenized {
    const maxLength = options.maxLength ?? CLIP_CONTEXT_LENGTH;
    const padWith = options.padWith ?? "end";
    if (!Number.isInteger(maxLength) || maxLength < 2)
      throw new RangeError(`maxLength ${maxLength}: must be an integer ≥ 2`);
    if (padWith !== "end" && padWith !== "zero") throw new RangeError(`padWith "${padWith}": must be "end" or "zero"`);
    const bpe = this.encode(text);
    const kept = bpe.slice(0, maxLength - 2);
    const ids = [this.startId, ...kept, this.endId];
    const padded = [...ids, ...new Array<number>(maxLength - ids.length).fill(padWith === "end" ? this.endId : 0)];
    return { ids, padded, truncated: bpe.length - kept.length };
  }

  /** Text of ids, as simple_tokenizer's decode: `</w>` becomes a space, invalid UTF-8 becomes U+FFFD. */
  decode(ids: readonly number[]): string {
    const bytes: number[] = [];
    for (const id of ids) {
      const token = this.decoder.get(id);
      if (token === undefined) throw new RangeError(`token id ${id} is not in the vocabulary`);
      for (const char of token) {
        const byte = CHAR_TO_BYTE.get(char);
        // Specials and `</w>` are not byte-mapped; simple_tokenizer would fail on them, we keep them as text.
        bytes.push(...(byte === undefined ? utf8.encode(char) : [byte]));
      }
    }
    return new TextDecoder().decode(new Uint8Array(bytes)).replaceAll(END_OF_WORD, " ");
  }

  private idOf(token: string): number {
    const id = this.tokenId(token);
    if (id === undefined)
      throw new Error(`token "${token}" is not in the vocabulary (wrong or incomplete vocab file?)`);
    return id;
  }

  /** Greedy BPE: repeatedly merge the adjacent pair of lowest rank, all its non-overlapping occurrences at once. */
  private bpe(word: string): string[] {
    const cached = this.cache.get(word);
    if (cached) return cached;
    const chars = Array.from(word);
    let symbols = [...chars.slice(0, -1), chars[chars.length - 1] + END_OF_WORD];
    while (symbols.length > 1) {
      let best: [string, string] | undefined;
      let bestRank = Number.POSITIVE_INFINITY;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.ranks.get(pairKey(symbols[i], symbols[i + 1]));
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = [symbols[i], symbols[i + 1]];
        }
      }
      if (!best) break;
      const [first, second] = best;
      const merged: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (symbols[i] === first && symbols[i + 1] === second) {
          merged.push(first + second);
          i++;
        } else {
          merged.push(symbols[i]);
        }
      }
      symbols = merged;
    }
    this.cache.set(word, symbols);
    return symbols;
  }
}

function pairKey(first: string, second: string): string {
  return `${first} ${second}`;
}
