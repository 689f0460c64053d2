"""A real client of the gateway's OpenAI-compatible endpoint: the official
`openai` Python SDK makes one chat completion and prints one JSON line on
stdout:

    {"text": "...", "chunks": N, "path": ..., "provider": ..., "model": ...}

`chunks` counts the streamed `chat.completion.chunk`s that carried text (1 for
a non-streaming call); `path` / `provider` are the `x-byok-path` /
`x-byok-provider` response headers (null when absent); `model` is the model
the response names.

Usage: python stream_chat.py [--no-stream] [BASE_URL [TOKEN [MODEL [PROMPT]]]]
Each argument falls back to BYOK_BASE_URL (the `/v1` base, e.g.
http://127.0.0.1:8787/v1), BYOK_TOKEN, BYOK_MODEL, BYOK_PROMPT.
Exits 1 with a message on stderr when the call fails.
"""

import json
import os
import sys

import openai


def main(argv: list[str]) -> int:
    stream = "--no-stream" not in argv
    args = [a for a in argv if a != "--no-stream"]
    defaults = [
        os.environ.get("BYOK_BASE_URL"),
        os.environ.get("BYOK_TOKEN"),
        os.environ.get("BYOK_MODEL", "gpt-4o-mini"),
        os.environ.get("BYOK_PROMPT", "Say hello."),
    ]
    base_url, token, model, prompt = args[:4] + defaults[len(args[:4]) :]
    if not base_url or not token:
        print(
            "usage: stream_chat.py [--no-stream] BASE_URL TOKEN [MODEL [PROMPT]]"
            " (or BYOK_BASE_URL, BYOK_TOKEN)",
            file=sys.stderr,
        )
        return 2

    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=60.0)
    messages = [{"role": "user", "content": prompt}]
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, stream=stream
        )
        headers = raw.headers
        text, chunks, answered_model = "", 0, None
        if stream:
            for chunk in raw.parse():
                answered_model = chunk.model or answered_model
                for choice in chunk.choices:
                    if choice.delta.content:
                        text += choice.delta.content
                        chunks += 1
        else:
            completion = raw.parse()
            answered_model = completion.model
            text = completion.choices[0].message.content or ""
            chunks = 1
    except openai.APIStatusError as error:
        print(f"call failed: HTTP {error.status_code}: {error.response.text}", file=sys.stderr)
        return 1
    except openai.OpenAIError as error:
        print(f"call failed: {error!r}", file=sys.stderr)
        return 1

    print(
        json.dumps(
            {
                "text": text,
                "chunks": chunks,
                "path": headers.get("x-byok-path"),
                "provider": headers.get("x-byok-provider"),
                "model": answered_model,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
