export { VarBuilder } from "./var-builder.ts";
