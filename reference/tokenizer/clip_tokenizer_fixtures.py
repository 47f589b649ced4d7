"""Expected CLIP token ids for packages/ldm/test/fixtures/tokenizer/clip-prompts.json.

Runs openai/CLIP's own tokenizer (clip.simple_tokenizer.SimpleTokenizer and clip.tokenize) from a checkout:
    /usr/bin/python3 reference/tokenizer/clip_tokenizer_fixtures.py --clip-repo /tmp/clip-ref
(needs Debian's python3-regex and python3-packaging). Modules the tokenizer does not use are replaced by empty stand-ins: ftfy (not packaged
for Debian's Python) by an identity fix_text, so prompts ftfy would change (curly quotes, mojibake, fullwidth
letters, non-NFC text) record the ftfy-less ids; torchvision and tqdm (only used by clip.load) by empty modules.
"""

import argparse
import json
import os
import sys
import types

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "   \t\n ",
    "A  Photo\tof\n\nthe   CAT!!!",
    "Hello, World. It's 3:45pm; price: $1,234.56 (approx.)",
    "I'M GOING, you're it, we've seen, they'll go, she'd, 's 't 'RE",
    "don't can't won't y'all rock'n'roll",
    "naïve café résumé Ångström über straße",
    "ÉCOLE ÇA İstanbul ΟΔΥΣΣΕΥΣ",
    "日本語のテキスト 中文 한국어 Здравствуйте мир",
    "emoji 🚀🔥 test 👩‍💻 flags 🇯🇵 ❤️",
    "&amp; &lt;tag&gt; &amp;amp; &quot;quoted&quot; &#39;x&#39; &copy 2023 &notit; &#x1F600;",
    "numbers 1234567890 3.14159 1e-5 ½ ² ٣ Ⅻ",
    "<|startoftext|>hello<|endoftext|> world",
    "trending on artstation, 8k, ((masterpiece)), [best quality], {detailed}, highres:1.2, --no blur",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "zero\u200bwidth non\u00a0breaking\u3000ideographic\u2028line\u2003em",
    "\x1cfile sep\x85next line\ufeffbom\x1f",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ and ﬁ ligature",
    "it’s “curly” — dash … ellipsis",
    "a beautiful oil painting of a lighthouse on a cliff at sunset, " * 6,
    "x " * 74 + "y",
    "x " * 75 + "y",
    "x " * 76 + "y",
]


def install_stand_ins() -> None:
    ftfy = types.ModuleType("ftfy")
    ftfy.fix_text = lambda text: text
    sys.modules["ftfy"] = ftfy
    transforms = types.ModuleType("torchvision.transforms")
    for name in ["Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"]:
        setattr(transforms, name, None)
    transforms.InterpolationMode = types.SimpleNamespace(BICUBIC=None)
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules["torchvision"] = torchvision
    sys.modules["torchvision.transforms"] = transforms
    tqdm = types.ModuleType("tqdm")
    tqdm.tqdm = None
    sys.modules["tqdm"] = tqdm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip-repo", required=True, help="checkout of github.com/openai/CLIP")
    args = parser.parse_args()
    install_stand_ins()
    sys.path.insert(0, args.clip_repo)
    import clip
    from clip.simple_tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    cases = []
    for prompt in PROMPTS:
        bpe = tokenizer.encode(prompt)
        zero_padded = clip.tokenize(prompt, context_length=77, truncate=True)[0].tolist()
        cases.append({"prompt": prompt, "bpe": bpe, "tokenize_zero_padded": zero_padded, "decoded": tokenizer.decode(bpe)})
    out = os.path.join(os.path.dirname(__file__), "../../packages/ldm/test/fixtures/tokenizer/clip-prompts.json")
    with open(out, "w") as f:
        json.dump({"source": "openai/CLIP d05afc4 simple_tokenizer + clip.tokenize, ftfy.fix_text = identity", "cases": cases}, f, ensure_ascii=False)
        f.write("\n")
    print("wrote", out, len(cases), "prompts")


if __name__ == "__main__":
    main()
