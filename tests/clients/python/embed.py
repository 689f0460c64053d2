"""A real client of the gateway's embeddings endpoint: the official `openai`
Python SDK embeds the texts given and prints one JSON line on stdout:

    {"count": N, "dims": D, "promptTokens": T, "path": ..., "provider": ..., "model": ...}

`path` / `provider` are the `x-byok-path` / `x-byok-provider` response
headers (null when absent).

Usage: python embed.py BASE_URL TOKEN MODEL TEXT [TEXT ...]
Exits 1 with a message on stderr when the call fails.
"""

import json
import sys

import openai


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: embed.py BASE_URL TOKEN MODEL TEXT [TEXT ...]", file=sys.stderr)
        return 2
    base_url, token, model, *texts = argv
    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=60.0)
    try:
        raw = client.embeddings.with_raw_response.create(model=model, input=texts)
        result = raw.parse()
    except openai.APIError as err:
        print(f"embeddings failed: {err}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "count": len(result.data),
                "dims": len(result.data[0].embedding) if result.data else 0,
                "promptTokens": result.usage.prompt_tokens if result.usage else None,
                "path": raw.headers.get("x-byok-path"),
                "provider": raw.headers.get("x-byok-provider"),
                "model": result.model,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
