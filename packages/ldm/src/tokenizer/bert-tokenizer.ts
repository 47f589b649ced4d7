import type { Tokenized } from "./clip-tokenizer.ts";

/** The sequence length CompVis/latent-diffusion's BERTTokenizer pads and truncates to ([CLS] … [SEP], padding). */
export const BERT_MAX_LENGTH = 77;
/** bert-base-uncased's vocabulary size: the token embedding rows of the paper's BERTEmbedder. */
export const BERT_VOCAB_SIZE = 30522;
/** Hugging Face WordPiece's limit: a longer word becomes [UNK] whole. */
const MAX_WORD_CHARS = 100;
const CONTINUATION = "##";

// Hugging Face's BertNormalizer and BertPreTokenizer (the Rust tokenizers library behind BertTokenizerFast).
// Control: any category C character except \t \n \r; whitespace: Rust's char::is_whitespace (White_Space).
const CONTROL = /[^\P{C}\t\n\r]/u;
const WHITESPACE = /[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;
const NONSPACING_MARK = /\p{Mn}/gu;
// ASCII punctuation (including $+<=>^`|~, Unicode symbols) and every Unicode P* category.
const PUNCTUATION = /[!-/:-@[-`{-~\p{P}]/u;

/** The code point ranges BERT treats as CJK ideographs: each becomes a word of its own. */
function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/**
 * bert-base-uncased's normalization, in BertNormalizer's order: drop NUL, U+FFFD and control characters, whitespace
 * to a space, spaces around CJK ideographs, strip accents (NFD, drop nonspacing marks), then lowercase each character
 * alone (Rust's char::to_lowercase: a final Σ becomes σ, not ς as String.prototype.toLowerCase would give).
 */
export function normalizeBertText(text: string): string {
  let cleaned = "";
  for (const char of text) {
    const cp = char.codePointAt(0) as number;
    if (cp === 0 || cp === 0xfffd || CONTROL.test(char)) continue;
    if (WHITESPACE.test(char)) cleaned += " ";
    else if (isCjk(cp)) cleaned += ` ${char} `;
    else cleaned += char;
  }
  let lowered = "";
  for (const char of cleaned.normalize("NFD").replace(NONSPACING_MARK, "")) lowered += char.toLowerCase();
  return lowered;
}

/** BertPreTokenizer: words split on whitespace, each punctuation character a word of its own. */
export function splitBertWords(normalized: string): string[] {
  const words: string[] = [];
  let word = "";
  const flush = () => {
    if (word) words.push(word);
    word = "";
  };
  for (const char of normalized) {
    if (WHITESPACE.test(char)) flush();
    else if (PUNCTUATION.test(char)) {
      flush();
      words.push(char);
    } else word += char;
  }
  flush();
  return words;
}

/**
 * BERT's uncased WordPiece tokenizer with Hugging Face `BertTokenizerFast` semantics, as CompVis/latent-diffusion's
 * BERTTokenizer calls it (`truncation=True, max_length=77, padding="max_length"`): normalize, split into words,
 * greedy longest-match WordPiece with `##` continuations ([UNK] for a word over 100 characters or one with no
 * match), [CLS] … [SEP], padded with [PAD]. Takes the text of `vocab.txt` (one token per line, id = line number).
 */
export class BertTokenizer {
  readonly padId: number;
  readonly unkId: number;
  readonly clsId: number;
  readonly sepId: number;
  private readonly vocab: Map<string, number>;
  private readonly tokens: string[];

  constructor(vocabText: string) {
    this.tokens = vocabText.split("\n");
    if (this.tokens.at(-1) === "") this.tokens.pop();
    this.tokens = this.tokens.map((line) => line.trimEnd());
    // As HF WordPiece.read_file: lines right-trimmed, a repeated line keeps its last id.
    this.vocab = new Map(this.tokens.map((token, id) => [token, id]));
    const special = (token: string) => {
      const id = this.vocab.get(token);
      if (id === undefined) throw new Error(`BERT vocab.txt has no ${token} line (wrong vocabulary file?)`);
      return id;
    };
    this.padId = special("[PAD]");
    this.unkId = special("[UNK]");
    this.clsId = special("[CLS]");
    this.sepId = special("[SEP]");
  }

  get vocabSize(): number {
    return this.tokens.length;
  }

  /** Id of a vocabulary entry (`##` prefix for a continuation), undefined if absent. */
  tokenId(token: string): number | undefined {
    return this.vocab.get(token);
  }

  /** WordPiece tokens of a prompt, without [CLS]/[SEP] and untruncated. */
  wordpieces(text: string): string[] {
    return splitBertWords(normalizeBertText(text)).flatMap((word) => this.wordpiece(word));
  }

  /** WordPiece ids of a prompt, without [CLS]/[SEP] and untruncated. */
  encode(text: string): number[] {
    return this.wordpieces(text).map((token) => this.vocab.get(token) as number);
  }

  /** The ids the BERTEmbedder takes: [CLS], wordpieces truncated to maxLength − 2, [SEP], then [PAD] to maxLength. */
  tokenize(text: string, options: { maxLength?: number } = {}): Tokenized {
    const maxLength = options.maxLength ?? BERT_MAX_LENGTH;
    if (!Number.isInteger(maxLength) || maxLength < 2)
      throw new RangeError(`maxLength ${maxLength}: must be an integer ≥ 2`);
    const pieces = this.encode(text);
    const kept = pieces.slice(0, maxLength - 2);
    const ids = [this.clsId, ...kept, this.sepId];
    const padded = [...ids, ...new Array<number>(maxLength - ids.length).fill(this.padId)];
    return { ids, padded, truncated: pieces.length - kept.length };
  }

  /** Tokens of ids joined as HF's decode does: `##` pieces glued to the previous one, others separated by a space. */
  decode(ids: readonly number[]): string {
    let text = "";
    for (const id of ids) {
      const token = this.tokens[id];
      if (token === undefined) throw new RangeError(`token id ${id} is not in the vocabulary (size ${this.vocabSize})`);
      text += token.startsWith(CONTINUATION) ? token.slice(CONTINUATION.length) : text ? ` ${token}` : token;
    }
    return text;
  }

  /** Greedy longest-match-first WordPiece over code points; [UNK] for the whole word if any part has no match. */
  private wordpiece(word: string): string[] {
    const chars = Array.from(word);
    if (chars.length > MAX_WORD_CHARS) return ["[UNK]"];
    const pieces: string[] = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let piece: string | undefined;
      while (start < end) {
        const candidate = (start > 0 ? CONTINUATION : "") + chars.slice(start, end).join("");
        if (this.vocab.has(candidate)) {
          piece = candidate;
          break;
        }
        end--;
      }
      if (piece === undefined) return ["[UNK]"];
      pieces.push(piece);
      start = end;
    }
    return pieces;
  }
}
