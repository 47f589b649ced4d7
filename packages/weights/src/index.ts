export * from "./architecture.ts";
export * from "./config.ts";
export * from "./detect.ts";
export * from "./dtype.ts";
export * from "./layouts.ts";
export * from "./readers.ts";
export * from "./safetensors.ts";
export * from "./source.ts";
