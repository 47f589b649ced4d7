export { gridImage, maskFromImage, pixelsToRgba, resizeNearest, rgbaToPixels } from "./pixels.ts";
export { type DecodedImage, decodePng, encodePng, type RgbaImage } from "./png.ts";
