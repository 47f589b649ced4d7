/** modelInputs: what each family of the fixtures is conditioned on, read from its YAML config alone. */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { ldmConfigFromYaml } from "@ldm/weights";
import { describe, expect, it } from "vitest";
import { modelInputs } from "../src/pipeline/model-inputs.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const inputsOf = (name: string) => {
  const path = `${DUMPS}${name}.yaml`;
  return modelInputs(ldmConfigFromYaml(readFileSync(path, "utf8"), path));
};
const none = { classes: undefined, segmentationClasses: undefined, upscale: false, inpainting: false };

describe("modelInputs", () => {
  it.each([
    ["tiny-sd1", { ...none, prompted: "clip", guidable: true, guidanceFamily: "clip", guidanceScale: 7.5 }],
    [
      "tiny-inpaint",
      { ...none, prompted: "clip", inpainting: true, guidable: true, guidanceFamily: "clip", guidanceScale: 7.5 },
    ],
    ["tiny-txt2img", { ...none, prompted: "bert", guidable: true, guidanceFamily: "bert", guidanceScale: 5 }],
    ["tiny-layout2img", { ...none, prompted: "layout", guidable: true, guidanceFamily: "layout", guidanceScale: 1 }],
    // cin256-v2 sets n_classes (its last is "no class"): the ImageNet notebook's scale 3; cin-ldm-vq-f8 keeps
    // the constructor's 1000 real classes and has nothing to guide against.
    [
      "tiny-cin",
      { ...none, prompted: undefined, classes: 11, guidable: true, guidanceFamily: "class", guidanceScale: 3 },
    ],
    [
      "tiny-cin-f8",
      { ...none, prompted: undefined, classes: 1000, guidable: false, guidanceFamily: "unguided", guidanceScale: 1 },
    ],
    ["tiny-celebahq", { ...none, prompted: undefined, guidable: false, guidanceFamily: "unguided", guidanceScale: 1 }],
    ["tiny-churches", { ...none, prompted: undefined, guidable: false, guidanceFamily: "unguided", guidanceScale: 1 }],
    [
      "tiny-bsr",
      { ...none, prompted: undefined, upscale: true, guidable: false, guidanceFamily: "unguided", guidanceScale: 1 },
    ],
    [
      "tiny-seg",
      {
        ...none,
        prompted: undefined,
        segmentationClasses: 12,
        guidable: false,
        guidanceFamily: "unguided",
        guidanceScale: 1,
      },
    ],
  ])("%s", (name, expected) => {
    expect(inputsOf(name)).toEqual(expected);
  });
});
