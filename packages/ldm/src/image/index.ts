export { gridImage, maskFromImage, pixelsToRgba, resizeNearest, rgbaToPixels } from "./pixels.ts";
export { type DecodedImage, decodeLabelPng, decodePng, encodePng, type LabelMap, type RgbaImage } from "./png.ts";
