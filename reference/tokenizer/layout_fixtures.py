"""Expected layout2img token sequences for packages/ldm/test/fixtures/tokenizer/layout-cases.json.

CompVis/latent-diffusion's layout2img-openimages256 conditions its BERTEmbedder (vocab_size 8192, max_seq_len 92,
no tokenizer) on the sequence taming-transformers' ObjectsBoundingBoxConditionalBuilder builds from an image's
objects: (class, top-left token, bottom-right token) per object, padded with the "none" token (no_tokens − 1) to
30 objects, then the crop's two tokens (encode_crop). This runs that builder, from a checkout of
CompVis/taming-transformers:
    /usr/bin/python3 reference/tokenizer/layout_fixtures.py --taming /tmp/taming-transformers
with the settings of taming's open_images_scene_images_transformer.yaml data (no_tokens 8192, 30 objects,
encode_crop, no crop: the full image) and two stand-ins: random.shuffle (the builder shuffles the objects, a
training augmentation) keeps the given order, and the modules only its plotting uses (more_itertools,
taming.data.image_transforms) are empty. A layout's box [x0, y0, x1, y1] is the builder's (x0, y0, x1 − x0, y1 − y0).
"""

import argparse
import json
import os
import random
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "../../packages/ldm/test/fixtures/tokenizer/layout-cases.json")
NO_TOKENS, MAX_OBJECTS = 8192, 30

LAYOUTS = [
    [],
    [{"class": 0, "box": [0, 0, 1, 1]}],
    [{"class": 42, "box": [0.1, 0.2, 0.6, 0.9]}, {"class": 7, "box": [0.5, 0.05, 0.95, 0.45]}],
    # Coordinates on the rounding boundary of the 90 × 90 grid (k + 0.5) / 89, where round() is half-to-even.
    [{"class": 3, "box": [0.5 / 89, 1.5 / 89, 2.5 / 89, 88.5 / 89]}, {"class": 599, "box": [44.5 / 89, 0.3, 1, 45.5 / 89]}],
    [{"class": i, "box": [i / 40, (29 - i) / 40, i / 40 + 0.25, (29 - i) / 40 + 0.25]} for i in range(30)],
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--taming", required=True, help="checkout of github.com/CompVis/taming-transformers")
    args = parser.parse_args()
    recipes = types.ModuleType("more_itertools.recipes")
    recipes.grouper = None
    sys.modules["more_itertools"] = types.ModuleType("more_itertools")
    sys.modules["more_itertools.recipes"] = recipes
    transforms = types.ModuleType("taming.data.image_transforms")
    transforms.convert_pil_to_tensor = None
    sys.modules["taming.data.image_transforms"] = transforms
    sys.path.insert(0, args.taming)
    from taming.data.conditional_builder.objects_bbox import ObjectsBoundingBoxConditionalBuilder
    from taming.data.helper_types import Annotation

    random.shuffle = lambda items: None
    builder = ObjectsBoundingBoxConditionalBuilder(
        no_object_classes=600, no_max_objects=MAX_OBJECTS, no_tokens=NO_TOKENS, encode_crop=True,
        use_group_parameter=True, use_additional_parameters=True,
    )
    cases = []
    for layout in LAYOUTS:
        annotations = [
            Annotation(area=None, image_id=None, bbox=(x0, y0, x1 - x0, y1 - y0), category_no=obj["class"],
                       category_id=None, id=None, source=None, confidence=None, is_group_of=False,
                       is_occluded=False, is_depiction=False, is_inside=False)
            for obj in layout for x0, y0, x1, y1 in [obj["box"]]
        ]
        cases.append({"layout": layout, "tokens": builder.build(annotations).tolist()})
    with open(OUT, "w") as f:
        json.dump({"source": "taming-transformers ObjectsBoundingBoxConditionalBuilder, no_tokens 8192, 30 objects, encode_crop, no shuffle",
                   "cases": cases}, f)
        f.write("\n")
    print("wrote", OUT, len(cases), "layouts")


if __name__ == "__main__":
    main()
