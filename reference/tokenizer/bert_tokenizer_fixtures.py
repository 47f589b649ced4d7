"""Expected BERT token ids for packages/ldm/test/fixtures/tokenizer/bert-prompts.json.

CompVis/latent-diffusion's BERTTokenizer is Hugging Face's BertTokenizerFast("bert-base-uncased") called with
truncation=True, max_length=77, padding="max_length". transformers is not packaged for Debian, so the ids come from
BERT's own tokenizer, google-research/bert's tokenization.py (FullTokenizer, do_lower_case=True), run from a
checkout:
    /usr/bin/python3 reference/tokenizer/bert_tokenizer_fixtures.py --bert-repo /tmp/bert-ref
with the four rules where Hugging Face's tokenizers library (its BertNormalizer, BertPreTokenizer, WordPiece)
differs from it set to Hugging Face's:
  - accents are stripped (NFD, marks of category Mn dropped) before lowercasing, and lowercasing maps each
    character alone (Rust's char::to_lowercase: a final capital sigma becomes σ, not ς as Python's str.lower());
  - WordPiece gives [UNK] for a word longer than 100 characters (tokenization.py: 200; HF's WordPiece default 100);
  - control characters, dropped by the clean-up, are all of category C (HF's BertNormalizer: Cc, Cf, Cn, Co, Cs
    except \\t \\n \\r; tokenization.py: Cc and Cf only);
  - whitespace is Rust's char::is_whitespace (HF's BertNormalizer and BertPreTokenizer), which adds U+2028, U+2029
    to tokenization.py's " \\t\\n\\r" and category Zs (the other White_Space characters are of category C,
    dropped before either test).
The framing is BertTokenizerFast's: [CLS] wordpieces [SEP], the wordpieces truncated to max_length - 2, padded with
[PAD] (id 0) to max_length. tensorflow (used only to open the vocabulary file) is replaced by `open`.
"""

import argparse
import json
import os
import sys
import types
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = os.path.join(HERE, "../../packages/ldm/vocab/bert/vocab.txt")
OUT = os.path.join(HERE, "../../packages/ldm/test/fixtures/tokenizer/bert-prompts.json")
MAX_LENGTH = 77

PROMPTS = [
    "a virus monster is playing guitar, oil on canvas",
    "",
    "   \t\n ",
    "A  Photo\tof\n\nthe   CAT!!!",
    "Hello, World. It's 3:45pm; price: $1,234.56 (approx.) 100% #1 @home a+b=c ~x^y `q` |p| <tag> {b} [s] \\ _",
    "don't can't won't y'all rock'n'roll",
    "naïve café résumé Ångström über straße",
    "ÉCOLE ÇA İstanbul ΟΔΥΣΣΕΥΣ Ελληνικά ñandú ﬀ ΆΈ",
    "日本語のテキスト 中文字符 한국어 Здравствуйте мир",
    "emoji 🚀🔥 test 👩‍💻 flags 🇯🇵 ❤️ ★ ©",
    "numbers 1234567890 3.14159 1e-5 ½ ² ٣ Ⅻ 2024-01-01",
    "unaffable unbelievably transformers tokenization hyperparameter photorealistic",
    "zero\u200bwidth non\u00a0breaking\u3000ideographic\u2028line\u2003em\u2029para",
    "\x00nul\x1cfile sep\x85next line\ufeffbom\x1f\ufffdreplacement\ue000private\U000e0001tag",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ and ﬁ ligature",
    "it’s “curly” — dash … ellipsis «guillemets» ¿qué? ¡sí!",
    "x" * 100 + " " + "y" * 101 + " z",
    "a beautiful oil painting of a lighthouse on a cliff at sunset, " * 6,
    "x " * 74 + "y",
    "x " * 75 + "y",
    "x " * 76 + "y",
]


def load_tokenization(bert_repo):
    tf = types.ModuleType("tensorflow")
    tf.gfile = types.SimpleNamespace(GFile=lambda path, mode: open(path, mode, encoding="utf-8"))
    sys.modules["tensorflow"] = tf
    sys.path.insert(0, bert_repo)
    import tokenization

    python_whitespace = tokenization._is_whitespace
    tokenization._is_whitespace = lambda char: char in "\u2028\u2029" or python_whitespace(char)
    tokenization._is_control = lambda char: char not in "\t\n\r" and unicodedata.category(char).startswith("C")
    # HF normalizes the whole text after the clean-up and the CJK spacing; tokenization.py lowercases each word.
    basic = tokenization.BasicTokenizer
    space_cjk = basic._tokenize_chinese_chars
    basic._tokenize_chinese_chars = lambda self, text: "".join(c.lower() for c in self._run_strip_accents(space_cjk(self, text)))
    return tokenization


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bert-repo", required=True, help="checkout of github.com/google-research/bert")
    args = parser.parse_args()
    tokenization = load_tokenization(args.bert_repo)
    tokenizer = tokenization.FullTokenizer(VOCAB, do_lower_case=False)  # lowercased by the patch above
    tokenizer.wordpiece_tokenizer.max_input_chars_per_word = 100
    cls, sep = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    cases = []
    for prompt in PROMPTS:
        pieces = tokenizer.tokenize(prompt)
        wordpiece = tokenizer.convert_tokens_to_ids(pieces)
        ids = [cls] + wordpiece[: MAX_LENGTH - 2] + [sep]
        padded = ids + [0] * (MAX_LENGTH - len(ids))
        cases.append({"prompt": prompt, "tokens": pieces, "wordpiece": wordpiece, "input_ids": padded})
    source = "google-research/bert tokenization.py FullTokenizer with HF BertTokenizerFast rules (see reference/tokenizer/bert_tokenizer_fixtures.py)"
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"source": source, "max_length": MAX_LENGTH, "cases": cases}, f, ensure_ascii=False)
        f.write("\n")
    print("wrote", OUT, len(cases), "prompts")


if __name__ == "__main__":
    main()
