// A wasmhook filter plugin in JavaScript, built with componentize-js.
//
// Keeps the messages whose JSON value has a top-level field (config key
// `field`, default `keep`) equal to `true`. Messages that are not JSON
// objects are dropped. The host calls `init` once, then `filter` once per
// batch. World-level WIT exports are this module's exported functions.

let field = 'keep';

// A `result<_, string>` error is raised by throwing; componentize-js uses the
// thrown error's `payload` as the `string`.
function fail(message) {
  const error = new Error(message);
  error.payload = message;
  throw error;
}

/** @param {[string, string][]} config */
export function init(config) {
  for (const [key, value] of config) {
    if (key === 'field') {
      if (value === '') fail('`field` must not be empty');
      field = value;
    } else {
      fail(`unknown config key \`${key}\` (expected: field)`);
    }
  }
}

const decoder = new TextDecoder('utf-8', { fatal: true });

function keeps(value) {
  let doc;
  try {
    doc = JSON.parse(decoder.decode(value));
  } catch {
    return false;
  }
  return doc !== null && typeof doc === 'object' && !Array.isArray(doc) && doc[field] === true;
}

/** @param {{ value: Uint8Array }[]} batch */
export function filter(batch) {
  return batch.map((message) => keeps(message.value));
}
