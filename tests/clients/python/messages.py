"""A real client of the gateway's Anthropic-compatible endpoint: the official
`anthropic` Python SDK sends one Messages request (streamed with
`messages.stream`, or not) and prints one JSON line on stdout:

    {"text": "...", "chunks": N, "inputTokens": I, "outputTokens": O, "path": ...}

`chunks` counts the text deltas the stream yielded (1 when not streamed);
`path` is the `x-byok-path` response header (null when absent). The SDK sends
the token as `x-api-key`, as it sends an Anthropic key.

Usage: python messages.py [--no-stream] BASE_URL TOKEN MODEL PROMPT
(BASE_URL without /v1: the SDK adds /v1/messages). Exits 1 on failure.
"""

import json
import sys

import anthropic


def main(argv: list[str]) -> int:
    stream = "--no-stream" not in argv
    args = [a for a in argv if a != "--no-stream"]
    if len(args) != 4:
        print("usage: messages.py [--no-stream] BASE_URL TOKEN MODEL PROMPT", file=sys.stderr)
        return 2
    base_url, token, model, prompt = args
    client = anthropic.Anthropic(base_url=base_url, api_key=token, max_retries=0, timeout=60.0)
    request = dict(model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}])
    try:
        if stream:
            text, chunks = "", 0
            with client.messages.stream(**request) as events:
                for piece in events.text_stream:
                    text += piece
                    chunks += 1
                final = events.get_final_message()
                path = events.response.headers.get("x-byok-path")
        else:
            raw = client.messages.with_raw_response.create(**request)
            final = raw.parse()
            text = "".join(b.text for b in final.content if b.type == "text")
            chunks = 1
            path = raw.headers.get("x-byok-path")
    except anthropic.APIError as err:
        print(f"messages failed: {err}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "text": text,
                "chunks": chunks,
                "inputTokens": final.usage.input_tokens,
                "outputTokens": final.usage.output_tokens,
                "path": path,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
