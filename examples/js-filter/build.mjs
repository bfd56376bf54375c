// Builds filter.wasm from filter.js through componentize-js's JS API
// (its `jco componentize` CLI fails in this environment; the API works).
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));

const { component } = await componentize({
  sourcePath: here('./filter.js'),
  witPath: here('../../wit'),
  worldName: 'wasmhook:plugin/filter@0.1.0',
  // wasi:http is not available to plugins: the host would reject the
  // component for importing it.
  disableFeatures: ['http', 'fetch-event'],
});

await writeFile(here('./filter.wasm'), component);
console.log(`wrote filter.wasm (${component.length} bytes)`);
