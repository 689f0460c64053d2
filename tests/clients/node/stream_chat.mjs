// A real client of the gateway's OpenAI-compatible endpoint: the Vercel AI SDK
// (`ai` with `@ai-sdk/openai-compatible`) streams one completion and prints
// one JSON line on stdout:
//   {"text": "...", "chunks": N, "path": ..., "provider": ..., "model": ...}
// where `chunks` counts the non-empty text deltas the SDK yielded, and `path` /
// `provider` are the `x-byok-path` / `x-byok-provider` response headers (null
// when absent).
//
// Usage: node stream_chat.mjs [BASE_URL [TOKEN [MODEL [PROMPT]]]]
// Each argument falls back to BYOK_BASE_URL (the `/v1` base, e.g.
// http://127.0.0.1:8787/v1), BYOK_TOKEN, BYOK_MODEL, BYOK_PROMPT.
// Exits 1 with a message on stderr when the call fails.
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { streamText } from 'ai';

const [baseURL, token, model, prompt] = [
  process.argv[2] ?? process.env.BYOK_BASE_URL,
  process.argv[3] ?? process.env.BYOK_TOKEN,
  process.argv[4] ?? process.env.BYOK_MODEL ?? 'gpt-4o-mini',
  process.argv[5] ?? process.env.BYOK_PROMPT ?? 'Say hello.',
];
if (!baseURL || !token) {
  console.error('usage: node stream_chat.mjs BASE_URL TOKEN [MODEL [PROMPT]] (or BYOK_BASE_URL, BYOK_TOKEN)');
  process.exit(2);
}

const provider = createOpenAICompatible({ name: 'byok', baseURL, apiKey: token });

let failure;
const result = streamText({
  model: provider(model),
  messages: [{ role: 'user', content: prompt }],
  maxRetries: 0,
  // streamText keeps errors out of textStream; record them to fail loudly.
  onError: ({ error }) => {
    failure = error;
  },
});

let text = '';
let chunks = 0;
for await (const delta of result.textStream) {
  if (delta.length > 0) {
    text += delta;
    chunks += 1;
  }
}
if (failure !== undefined) {
  const detail = failure?.statusCode ? ` (HTTP ${failure.statusCode}: ${failure.responseBody ?? ''})` : '';
  console.error(`stream failed: ${failure?.message ?? failure}${detail}`);
  process.exit(1);
}

const response = await result.response;
const headers = response.headers ?? {};
const header = (name) => headers[name] ?? headers[name.toLowerCase()] ?? null;
console.log(
  JSON.stringify({
    text,
    chunks,
    path: header('x-byok-path'),
    provider: header('x-byok-provider'),
    model: response.modelId ?? null,
  }),
);
