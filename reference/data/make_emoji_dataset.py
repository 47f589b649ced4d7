"""Builds the emoji image/caption dataset for the built-in model from Debian packages only.

Sources (install with `apt-get install fonts-noto-color-emoji python3-fonttools unicode-data
unicode-cldr-core`):
  - images: the colour bitmaps (CBDT, PNG, 136x128) of /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf;
  - which emojis, their names and groups: /usr/share/unicode/emoji/emoji-test.txt (the fully-qualified
    entries; the names are the Unicode/CLDR short names, e.g. "red apple", "flag: Japan");
  - Unicode character names of single code points: /usr/share/unicode/UnicodeData.txt;
  - keywords: CLDR English annotations (common/annotations/en.xml and annotationsDerived/en.xml).

An emoji's glyph is found as a shaper would find it: the code points (without U+FE0F, which the
font's ligatures leave out) map through the cmap, and a sequence of several glyphs must be one
ligature of the font's main GSUB ligature lookup. Emojis the font does not draw as one glyph are
counted and left out.

Each bitmap is centred on a square white canvas (alpha composited onto RGB 255,255,255), then
resized with Lanczos to --size. Output, in --out (git-ignored reference/out/emoji by default):
  emoji-<size>.npy   uint8 [N, size, size, 3]
  emoji-<size>.json  {"source": ..., "items": [{"emoji", "codepoints", "skin_tone_base", "name", "group",
                      "subgroup", "unicode_name", "keywords", "captions"}]}; item i is row i of the array;
                      captions[0] is the lowercased emoji name, the primary caption.
  emoji-<size>-sheet.png   a contact sheet of the first 400 images, to look at.

Usage: /usr/bin/python3 reference/data/make_emoji_dataset.py [--size 64] [--out DIR]
"""

import argparse
import io
import json
import os
import re
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
UNICODE_DATA = "/usr/share/unicode/UnicodeData.txt"
CLDR_ANNOTATIONS = [
    "/usr/share/unicode/cldr/common/annotations/en.xml",
    "/usr/share/unicode/cldr/common/annotationsDerived/en.xml",
]
PACKAGES = "fonts-noto-color-emoji python3-fonttools unicode-data unicode-cldr-core"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "out", "emoji")
BACKGROUND = (255, 255, 255)
VARIATION_SELECTOR_16 = 0xFE0F
SKIN_TONE_MODIFIERS = range(0x1F3FB, 0x1F400)
# lookup 0 of the font's `ccmp` feature holds every emoji sequence ligature (the others only
# turn unsupported flag and tag sequences into fallbacks).
EMOJI_LIGATURE_LOOKUP = 0


def require(path):
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: apt-get install {PACKAGES}")
    return path


def read_emoji_test(path):
    """Fully-qualified entries of emoji-test.txt, in file order, with their group and subgroup."""
    entries = []
    group = subgroup = None
    line_pattern = re.compile(r"^([0-9A-F ]+);\s*(\S+)\s*#\s*(\S+)\s+E\d+\.\d+\s+(.+)$")
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            else:
                match = line_pattern.match(line.strip())
                if match and match.group(2) == "fully-qualified":
                    codepoints = [int(c, 16) for c in match.group(1).split()]
                    entries.append(
                        {"codepoints": codepoints, "name": match.group(4), "group": group, "subgroup": subgroup}
                    )
    return entries


def read_unicode_names(path):
    names = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            fields = line.split(";")
            if not fields[1].startswith("<"):
                names[int(fields[0], 16)] = fields[1]
    return names


def read_cldr_keywords(paths):
    """Emoji string without U+FE0F -> keywords (the `|`-separated annotation, not the tts name)."""
    keywords = {}
    for path in paths:
        for node in ElementTree.parse(path).getroot().iter("annotation"):
            if node.get("type") == "tts":
                continue
            key = node.get("cp").replace(chr(VARIATION_SELECTOR_16), "")
            keywords.setdefault(key, [w.strip() for w in node.text.split("|") if w.strip()])
    return keywords


class EmojiFont:
    def __init__(self, path):
        self.font = TTFont(path)
        self.cmap = self.font.getBestCmap()
        self.bitmaps = self.font["CBDT"].strikeData[0]
        lookup = self.font["GSUB"].table.LookupList.Lookup[EMOJI_LIGATURE_LOOKUP]
        if lookup.LookupType != 4:
            raise ValueError(f"{path}: GSUB lookup {EMOJI_LIGATURE_LOOKUP} is type {lookup.LookupType}, not ligatures")
        self.ligatures = {}
        for subtable in lookup.SubTable:
            for first, ligatures in subtable.ligatures.items():
                for ligature in ligatures:
                    self.ligatures.setdefault((first, *ligature.Component), ligature.LigGlyph)

    def glyph(self, codepoints):
        """The glyph drawing this code point sequence, or None if the font has no single glyph for it."""
        glyphs = [self.cmap.get(c) for c in codepoints if c != VARIATION_SELECTOR_16]
        if None in glyphs:
            return None
        glyph = glyphs[0] if len(glyphs) == 1 else self.ligatures.get(tuple(glyphs))
        return glyph if glyph in self.bitmaps else None

    def image(self, glyph):
        return Image.open(io.BytesIO(self.bitmaps[glyph].imageData)).convert("RGBA")


def square_on_background(image, size):
    side = max(image.size)
    canvas = Image.new("RGBA", (side, side), BACKGROUND + (255,))
    canvas.alpha_composite(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.LANCZOS)


# CLIP cleans text with ftfy, which straightens these; the TypeScript tokenizer has no ftfy.
# Straight quotes in the captions make both cleanings agree.
STRAIGHT_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def captions_of(name, unicode_name, keywords):
    """The primary caption first: the lowercased emoji name; then the character name where it says
    something else, and the keywords."""
    captions = [name.lower()]
    if unicode_name and unicode_name.lower() != captions[0]:
        captions.append(unicode_name.lower())
    if keywords:
        captions.append(", ".join(k.lower() for k in keywords))
    return [caption.translate(STRAIGHT_QUOTES) for caption in captions]


def contact_sheet(images, columns=20):
    rows = -(-len(images) // columns)
    size = images.shape[1]
    sheet = np.full((rows * size, columns * size, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * size : (r + 1) * size, c * size : (c + 1) * size] = image
    return Image.fromarray(sheet)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="output side in pixels (e.g. 32, 64, 128)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.size < 8:
        sys.exit(f"--size {args.size}: must be at least 8")

    font = EmojiFont(require(FONT))
    entries = read_emoji_test(require(EMOJI_TEST))
    unicode_names = read_unicode_names(require(UNICODE_DATA))
    keywords = read_cldr_keywords([require(p) for p in CLDR_ANNOTATIONS])

    items, images, missing, glyph_users = [], [], [], {}
    for entry in entries:
        glyph = font.glyph(entry["codepoints"])
        if glyph is None:
            missing.append(entry["name"])
            continue
        text = "".join(chr(c) for c in entry["codepoints"])
        cps = entry["codepoints"]
        unicode_name = unicode_names.get(cps[0]) if len([c for c in cps if c != VARIATION_SELECTOR_16]) == 1 else None
        words = keywords.get(text.replace(chr(VARIATION_SELECTOR_16), ""), [])
        glyph_users.setdefault(glyph, []).append(entry["name"])
        images.append(np.asarray(square_on_background(font.image(glyph), args.size)))
        items.append(
            {
                "emoji": text,
                "codepoints": " ".join(f"{c:04X}" for c in cps),
                # the same emoji without skin tones: 1,785 of the images are skin-tone variants of 311
                # sequences (up to 26 each), which a trainer may want to weight down
                "skin_tone_base": " ".join(f"{c:04X}" for c in cps if c not in SKIN_TONE_MODIFIERS),
                "name": entry["name"],
                "group": entry["group"],
                "subgroup": entry["subgroup"],
                "unicode_name": unicode_name,
                "keywords": words,
                "captions": captions_of(entry["name"], unicode_name, words),
            }
        )

    array = np.stack(images)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"emoji-{args.size}")
    np.save(stem + ".npy", array)
    source = {
        "font": f"{FONT} (Debian fonts-noto-color-emoji, artwork Apache-2.0)",
        "emoji_list": EMOJI_TEST,
        "keywords": CLDR_ANNOTATIONS,
        "background": list(BACKGROUND),
        "size": args.size,
        "resize": "centred on a square canvas, Lanczos",
    }
    with open(stem + ".json", "w", encoding="utf-8") as file:
        json.dump({"source": source, "items": items}, file, ensure_ascii=False, indent=0)
        file.write("\n")
    contact_sheet(array[:400]).save(stem + "-sheet.png")

    shared = {g: names for g, names in glyph_users.items() if len(names) > 1}
    groups = {}
    for item in items:
        groups[item["group"]] = groups.get(item["group"], 0) + 1
    print(f"{len(entries)} fully-qualified emojis, {len(items)} drawn as one glyph, {len(missing)} not: {missing[:5]}")
    print(f"{len({i['name'] for i in items})} distinct names, {len(glyph_users)} distinct glyphs; "
          f"{len(shared)} glyphs drawn for several emojis, e.g. {list(shared.values())[:3]}")
    bases = {item["skin_tone_base"] for item in items}
    print(f"{len(bases)} emojis when skin-tone variants count as their base emoji")
    print(f"with a Unicode character name: {sum(i['unicode_name'] is not None for i in items)}, "
          f"with CLDR keywords: {sum(bool(i['keywords']) for i in items)}")
    print("per group:", groups)
    print(f"wrote {stem}.npy {array.shape} {array.dtype}, {stem}.json, {stem}-sheet.png")


if __name__ == "__main__":
    main()
