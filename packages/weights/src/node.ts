/** Node-only entry: files on disk, checkpoints, the hub cache. Everything else is in "@ldm/weights". */
export * from "./node/checkpoint.ts";
export * from "./node/convert.ts";
export * from "./node/file.ts";
export * from "./node/hub.ts";
