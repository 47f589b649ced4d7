/**
 * AUTOMATIC1111's prompt syntax: emphasis weights and BREAK (modules/prompt_parser.py parse_prompt_attention),
 * and long prompts cut into chunks of 75 tokens that the text encoder takes one at a time
 * (sd_hijack_clip.py tokenize_line), with the same rules, so prompts written for the web UI condition alike.
 */
import type { ClipTokenizer, PadWith } from "./clip-tokenizer.ts";

/** A run of prompt text and its weight; `BREAK` is a separate entry with weight −1, as A1111 marks it. */
export type WeightedText = [text: string, weight: number];

/** The BREAK entry's weight. */
const BREAK_WEIGHT = -1;

// The tokens of the emphasis syntax, tried in this order: escapes, brackets, ":weight)", plain text, a lone ":".
const ATTENTION = /\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()[\]:]+|:/g;
// Python's \b in a str pattern is Unicode-aware: a word character is a letter, digit or underscore of any script.
const BREAK = /\s*(?<![\p{L}\p{N}_])BREAK(?![\p{L}\p{N}_])\s*/su;

/**
 * The prompt's text runs and their weights: `(x)` ×1.1, `[x]` ÷1.1, `(x:1.3)` ×1.3 (nesting multiplies), `\(`
 * `\)` `\[` `\]` `\\` literal; unclosed brackets still apply to the rest; runs of equal weight merged.
 */
export function parsePromptAttention(prompt: string): WeightedText[] {
  const result: WeightedText[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiplyFrom = (start: number, factor: number) => {
    for (let p = start; p < result.length; p++) result[p][1] *= factor;
  };
  for (const match of prompt.matchAll(ATTENTION)) {
    const [text, weight] = match;
    if (text.startsWith("\\")) {
      result.push([text.slice(1), 1]);
    } else if (text === "(") {
      round.push(result.length);
    } else if (text === "[") {
      square.push(result.length);
    } else if (weight !== undefined && round.length) {
      const factor = Number(weight);
      if (!Number.isFinite(factor)) throw new RangeError(`prompt: emphasis weight "${weight}" is not a number`);
      multiplyFrom(round.pop() as number, factor);
    } else if (text === ")" && round.length) {
      multiplyFrom(round.pop() as number, 1.1);
    } else if (text === "]" && square.length) {
      multiplyFrom(square.pop() as number, 1 / 1.1);
    } else {
      text.split(BREAK).forEach((part, i) => {
        if (i > 0) result.push(["BREAK", BREAK_WEIGHT]);
        result.push([part, 1]);
      });
    }
  }
  for (const start of round) multiplyFrom(start, 1.1);
  for (const start of square) multiplyFrom(start, 1 / 1.1);
  if (result.length === 0) result.push(["", 1]);
  for (let i = 0; i + 1 < result.length; ) {
    if (result[i][1] === result[i + 1][1]) {
      result[i][0] += result[i + 1][0];
      result.splice(i + 1, 1);
    } else {
      i++;
    }
  }
  return result;
}

/** One encoder input: start, up to `length − 2` prompt tokens, end, padding; a weight per position. */
export interface PromptChunk {
  ids: number[];
  weights: number[];
}

export interface ChunkedPrompt {
  chunks: PromptChunk[];
  /** The prompt's tokens, counted as A1111 shows them (75 per full chunk, the last chunk's own). */
  tokenCount: number;
  /** The textual-inversion triggers found, each once, in order of appearance. */
  triggers: string[];
}

/**
 * A textual-inversion trigger: the tokens of its name, and the ids that stand for its vectors in the chunks
 * (ids past the text encoder's vocabulary, which it reads from the embedding's vectors instead).
 */
export interface Trigger {
  name: string;
  tokens: readonly number[];
  ids: readonly number[];
  /** Why a prompt may not use this trigger (an embedding of another width): thrown when it is found. */
  refused?: string;
}

/**
 * Triggers looked up as A1111's embedding database finds them: by the token at a position, the longest trigger
 * whose tokens follow from there (so a trigger matches whole BPE tokens, never part of a word's token).
 */
export class TriggerTable {
  private readonly byFirstToken = new Map<number, Trigger[]>();

  constructor(triggers: Iterable<Trigger>) {
    for (const trigger of triggers) {
      if (!trigger.tokens.length) throw new RangeError(`embedding "${trigger.name}": its name has no tokens`);
      const list = this.byFirstToken.get(trigger.tokens[0]) ?? [];
      list.push(trigger);
      list.sort((a, b) => b.tokens.length - a.tokens.length);
      this.byFirstToken.set(trigger.tokens[0], list);
    }
  }

  /** The trigger whose tokens start at `tokens[at]`, if any. */
  match(tokens: readonly number[], at: number): Trigger | undefined {
    return this.byFirstToken.get(tokens[at])?.find((t) => t.tokens.every((token, i) => tokens[at + i] === token));
  }
}

export interface ChunkOptions {
  /** Tokens per encoder call, start and end included (the text encoder's context, 77). */
  length: number;
  /** What follows the end token (SD1 "end", SD2/OpenCLIP "zero"). */
  padWith: PadWith;
  /** Parse emphasis and BREAK (A1111's default); false: the prompt is plain text of weight 1. */
  emphasis?: boolean;
  /** A chunk that fills up moves the words after its last comma to the next one if that comma is at most this
   * many tokens back (A1111's comma_padding_backtrack, 20). */
  commaBacktrack?: number;
  /** Textual-inversion triggers: each occurrence becomes the embedding's vectors, as many tokens as it has. */
  triggers?: TriggerTable;
}

/**
 * A1111's tokenize_line: the prompt as chunks of `length − 2` tokens, each with its own start and end. A trigger's
 * vectors stay together: when they do not fit in the chunk, they start the next one. Where a full chunk moves the
 * tokens after its last comma to the next, vectors among them move too (A1111 moves their placeholder ids but
 * leaves the vectors at the old offsets, past the end of the shortened chunk).
 */
export function chunkPrompt(tokenizer: ClipTokenizer, prompt: string, options: ChunkOptions): ChunkedPrompt {
  const size = options.length - 2;
  if (!(size >= 1)) throw new RangeError(`a text encoder context of ${options.length} holds no prompt token`);
  const backtrack = options.commaBacktrack ?? 20;
  const comma = tokenizer.tokenId(",</w>");
  const parsed: WeightedText[] = options.emphasis === false ? [[prompt, 1]] : parsePromptAttention(prompt);
  const chunks: PromptChunk[] = [];
  let tokens: number[] = [];
  let weights: number[] = [];
  let tokenCount = 0;
  let lastComma = -1;
  const nextChunk = (isLast = false) => {
    tokenCount += isLast ? tokens.length : size;
    const fill = size - tokens.length;
    const ids = [tokenizer.startId, ...tokens, ...Array(Math.max(fill, 0)).fill(tokenizer.endId), tokenizer.endId];
    // OpenCLIP pads with 0 after the first end token (A1111 rewrites the ids so for SD2).
    if (options.padWith === "zero") ids.fill(0, ids.indexOf(tokenizer.endId) + 1);
    chunks.push({ ids, weights: [1, ...weights, ...Array(Math.max(fill, 0)).fill(1), 1] });
    tokens = [];
    weights = [];
    lastComma = -1;
  };
  const triggers = new Set<string>();
  for (const [text, weight] of parsed) {
    if (text === "BREAK" && weight === BREAK_WEIGHT) {
      nextChunk();
      continue;
    }
    const textTokens = tokenizer.encode(text);
    for (let position = 0; position < textTokens.length; ) {
      const token = textTokens[position];
      if (token === comma) {
        lastComma = tokens.length;
      } else if (
        backtrack !== 0 &&
        tokens.length === size &&
        lastComma !== -1 &&
        tokens.length - lastComma <= backtrack
      ) {
        const at = lastComma + 1;
        const movedTokens = tokens.slice(at);
        const movedWeights = weights.slice(at);
        tokens = tokens.slice(0, at);
        weights = weights.slice(0, at);
        nextChunk();
        tokens = movedTokens;
        weights = movedWeights;
      }
      if (tokens.length === size) nextChunk();
      const trigger = options.triggers?.match(textTokens, position);
      if (!trigger) {
        tokens.push(token);
        weights.push(weight);
        position++;
        continue;
      }
      if (trigger.refused) throw new RangeError(trigger.refused);
      if (trigger.ids.length > size) {
        throw new RangeError(
          `embedding "${trigger.name}" has ${trigger.ids.length} vectors: more than a chunk's ${size} tokens`,
        );
      }
      if (tokens.length + trigger.ids.length > size) nextChunk();
      tokens.push(...trigger.ids);
      weights.push(...trigger.ids.map(() => weight));
      triggers.add(trigger.name);
      position += trigger.tokens.length;
    }
  }
  if (tokens.length || !chunks.length) nextChunk(true);
  return { chunks, tokenCount, triggers: [...triggers] };
}
