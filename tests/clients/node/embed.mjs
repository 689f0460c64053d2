// A real client of the gateway's embeddings endpoint: the Vercel AI SDK
// (`ai`'s `embed` with `@ai-sdk/openai-compatible`) embeds one value and
// prints one JSON line on stdout:
//   {"dims": D, "tokens": T, "path": ..., "provider": ...}
// where `path` / `provider` are the `x-byok-path` / `x-byok-provider`
// response headers (null when absent).
//
// Usage: node embed.mjs BASE_URL TOKEN MODEL TEXT
// Exits 1 with a message on stderr when the call fails.
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { embed } from 'ai';

const [baseURL, token, model, value] = process.argv.slice(2);
if (!baseURL || !token || !model || !value) {
  console.error('usage: node embed.mjs BASE_URL TOKEN MODEL TEXT');
  process.exit(2);
}

const provider = createOpenAICompatible({ name: 'byok', baseURL, apiKey: token });
try {
  const result = await embed({ model: provider.embeddingModel(model), value, maxRetries: 0 });
  const headers = result.response?.headers ?? {};
  console.log(
    JSON.stringify({
      dims: result.embedding.length,
      tokens: result.usage?.tokens ?? null,
      path: headers['x-byok-path'] ?? null,
      provider: headers['x-byok-provider'] ?? null,
    }),
  );
} catch (error) {
  console.error(`embed failed: ${error?.message ?? error}`);
  process.exit(1);
}
