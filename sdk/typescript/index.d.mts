// TypeScript looks for `index.d.mts` beside `index.mjs` when a workflow imports the SDK by its
// file (`import type { Context } from "../../sdk/typescript/index.mjs"`); the declarations
// themselves are in index.d.ts, once.
export * from "./index.js";
