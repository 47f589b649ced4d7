import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { gunzipSync } from "node:zlib";
import { packageFile } from "../package-files.ts";
import { BertTokenizer } from "./bert-tokenizer.ts";
import { ClipTokenizer, END_OF_TEXT, type PadWith } from "./clip-tokenizer.ts";

export interface TokenizerSource {
  /** `bpe_simple_vocab_16e6.txt(.gz)`, a HF tokenizer folder (vocab.json + merges.txt), or a vocab.json. */
  vocab?: string;
  /** A diffusers folder, whose `tokenizer/` subfolder is used when `vocab` is not given. */
  model?: string;
}

export interface LoadedTokenizer {
  tokenizer: ClipTokenizer;
  /** Padding declared by a HF folder's pad_token ("<|endoftext|>" → end, id 0 → zero); undefined if none. */
  padWith?: PadWith;
  /** The file or folder the vocabulary came from. */
  path: string;
}

/**
 * CLIP's BPE merges shipped with @ldm/ldm (vocab/clip/, MIT, with its notice): the vocabulary of SD 1.x's
 * CLIP ViT-L/14 and of SD 2.x's OpenCLIP ViT-H/14 alike, so single files need no --vocab.
 */
export const SHIPPED_CLIP_VOCAB = packageFile("vocab", "clip", "bpe_simple_vocab_16e6.txt.gz");

const WHAT_TO_PASS = "pass --vocab <bpe_simple_vocab_16e6.txt.gz | tokenizer folder with vocab.json and merges.txt>";

function isDirectory(path: string): boolean {
  return existsSync(path) && statSync(path).isDirectory();
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** pad_token of a HF tokenizer folder, from special_tokens_map.json or tokenizer_config.json. */
function declaredPadding(folder: string, tokenizer: ClipTokenizer): PadWith | undefined {
  for (const name of ["special_tokens_map.json", "tokenizer_config.json"]) {
    const path = join(folder, name);
    if (!existsSync(path)) continue;
    const config = JSON.parse(readText(path)) as { pad_token?: string | { content?: string } };
    const pad = typeof config.pad_token === "string" ? config.pad_token : config.pad_token?.content;
    if (pad === undefined) continue;
    if (pad === END_OF_TEXT) return "end";
    if (tokenizer.tokenId(pad) === 0) return "zero";
    throw new Error(`${path}: pad_token ${JSON.stringify(pad)} is neither ${END_OF_TEXT} nor the token with id 0`);
  }
  return undefined;
}

function fromHuggingFaceFolder(folder: string): LoadedTokenizer {
  const vocabPath = join(folder, "vocab.json");
  const mergesPath = join(folder, "merges.txt");
  for (const path of [vocabPath, mergesPath]) {
    if (!existsSync(path)) throw new Error(`${folder} has no ${basename(path)}; ${WHAT_TO_PASS}`);
  }
  const tokenizer = ClipTokenizer.fromVocabAndMerges(readText(vocabPath), readText(mergesPath));
  return { tokenizer, padWith: declaredPadding(folder, tokenizer), path: folder };
}

function fromVocabPath(path: string): LoadedTokenizer {
  if (!existsSync(path)) throw new Error(`vocab ${path} does not exist; ${WHAT_TO_PASS}`);
  if (isDirectory(path)) {
    const nested = join(path, "tokenizer");
    return fromHuggingFaceFolder(isDirectory(nested) && !existsSync(join(path, "vocab.json")) ? nested : path);
  }
  if (basename(path) === "vocab.json") return fromHuggingFaceFolder(dirname(path));
  const bytes = readFileSync(path);
  const isGzip = bytes[0] === 0x1f && bytes[1] === 0x8b;
  let text: string;
  try {
    text = isGzip ? gunzipSync(bytes).toString("utf8") : bytes.toString("utf8");
  } catch (e) {
    throw new Error(`cannot gunzip ${path}: ${(e as Error).message}`);
  }
  try {
    return { tokenizer: ClipTokenizer.fromBpeMerges(text), path };
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

/**
 * Loads CLIP's tokenizer from `vocab` if given, else from a model folder's `tokenizer/`, else (no model, or a
 * single file, which carries no tokenizer) the shipped CLIP vocabulary.
 */
export function loadClipTokenizer(source: TokenizerSource): LoadedTokenizer {
  if (source.vocab) return fromVocabPath(source.vocab);
  if (source.model) {
    // Worded as the checkpoint loader says it, which would otherwise only run after this.
    if (!existsSync(source.model)) throw new Error(`${source.model}: no such file or folder`);
    if (isDirectory(source.model)) {
      const folder = join(source.model, "tokenizer");
      if (!isDirectory(folder)) throw new Error(`model ${source.model} has no tokenizer/ folder; ${WHAT_TO_PASS}`);
      return fromHuggingFaceFolder(folder);
    }
  }
  return fromVocabPath(SHIPPED_CLIP_VOCAB);
}

/** bert-base-uncased's vocab.txt as shipped with @ldm/ldm (vocab/bert/README.md has its source and license). */
export const SHIPPED_BERT_VOCAB = packageFile("vocab", "bert", "vocab.txt");

/** BERT's WordPiece tokenizer from a vocab.txt (a folder holding one), by default the shipped bert-base-uncased. */
export function loadBertTokenizer(vocab: string = SHIPPED_BERT_VOCAB): { tokenizer: BertTokenizer; path: string } {
  const path = isDirectory(vocab) ? join(vocab, "vocab.txt") : vocab;
  if (!existsSync(path)) throw new Error(`BERT vocab ${path} does not exist; pass --vocab <vocab.txt>`);
  try {
    return { tokenizer: new BertTokenizer(readText(path)), path };
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}
