export {
  BERT_MAX_LENGTH,
  BERT_VOCAB_SIZE,
  BertTokenizer,
  normalizeBertText,
  splitBertWords,
} from "./bert-tokenizer.ts";
export {
  CLIP_CONTEXT_LENGTH,
  ClipTokenizer,
  cleanText,
  END_OF_TEXT,
  type PadWith,
  START_OF_TEXT,
  type Tokenized,
  type TokenizeOptions,
} from "./clip-tokenizer.ts";
export { LayoutBuilder, type LayoutBuilderConfig, type LayoutObject, parseLayout } from "./layout.ts";
export {
  type ChunkedPrompt,
  type ChunkOptions,
  chunkPrompt,
  type PromptChunk,
  parsePromptAttention,
  type WeightedText,
} from "./prompt-attention.ts";
export { clipTokenizerFromGzip, gunzipText } from "./vocab-bytes.ts";
