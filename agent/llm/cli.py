"""``agentctl generate`` and ``agentctl chat``: talk to a causal-lm model through agentd.

    agentctl generate MODEL "prompt" [--max-tokens N] [--temperature T] [--top-p P] [--top-k K]
                                     [--seed S] [--stop TEXT]... [--system TEXT | --raw] [--json]
    agentctl chat MODEL [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]

``generate`` sends the prompt as one user message, so the daemon renders it with the model's chat
template (a model without one gets the plain text); ``--raw`` sends it as a plain completion prompt
instead (the text is continued as is). ``generate`` streams the text to stdout as it is produced and
ends with one summary line on stderr (variant@device, tokens, time to first token, tokens/s, finish
reason); ``--json`` prints the final result object instead. A prompt of ``-`` is read from stdin.
``chat`` is a REPL: each stdin line is a user turn, the conversation is kept as messages (so the prefix
cache reuses it), ``/reset`` starts over, ``/exit`` (or end of input) leaves. Ctrl-C during a reply
cancels that reply only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from agent.errors import InvalidParams


def llm_status_line(llm: dict[str, Any]) -> str:
    """One line of ``agentctl status`` for a causal-lm's worker stats."""
    pc = llm.get("prefix_cache") or {}
    return (f"  llm: {llm.get('active_generations', 0)} generating ({llm.get('live_kv_bytes', 0) >> 10} KiB KV)  "
            f"{llm.get('requests', 0)} requests  {llm.get('completion_tokens', 0)} tokens  "
            f"{llm.get('cancelled', 0)} cancelled  prefix cache: {pc.get('hits', 0)} hits / {pc.get('misses', 0)} "
            f"misses, {pc.get('entries', 0)} entries, {pc.get('bytes', 0) >> 10} of {pc.get('max_bytes', 0) >> 10} KiB")


def _params(a: argparse.Namespace) -> dict[str, Any]:
    p: dict[str, Any] = {"max_tokens": a.max_tokens}
    for key in ("temperature", "top_p", "top_k", "seed", "deadline_ms", "min_quality", "priority"):
        v = getattr(a, key, None)
        if v is not None:
            p[key] = v
    if getattr(a, "stop", None):
        p["stop"] = list(a.stop)
    return p


def _summary(final: Any) -> str:
    u = final.usage or {}
    tps = u.get("decode_tokens_per_s")
    parts = [f"{final.variant}@{final.device}", f"{u.get('completion_tokens', 0)} tokens",
             f"ttft {u.get('ttft_ms', 0):.1f} ms"]
    if tps:
        parts.append(f"{tps:.1f} tok/s")
    if u.get("cached_tokens"):
        parts.append(f"{u['cached_tokens']} cached prompt tokens")
    jpt = (final.result or {}).get("joules_per_token")
    if jpt:
        parts.append(f"{jpt:.3f} J/token")
    parts.append(f"finish {final.finish_reason}")
    return "[" + " · ".join(parts) + "]"


def _stream(client: Any, model: str, out: TextIO, *, prompt: str | None = None,
            messages: list[dict[str, str]] | None = None, params: dict[str, Any]) -> Any:
    """Print tokens as they come; returns the final chunk (Ctrl-C cancels the generation and re-raises)."""
    final = None
    it = client.generate(model, prompt, messages=messages, **params)
    try:
        for ch in it:
            if ch.finish_reason is not None:
                final = ch
            if ch.text:
                out.write(ch.text)
                out.flush()
    finally:
        it.close()   # an interrupted iteration cancels the generation in the daemon
    return final


def cmd_generate(a: argparse.Namespace) -> int:
    from agent.client import Client

    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    if not prompt:
        raise InvalidParams("prompt: expected some text, got an empty prompt")
    params = _params(a)
    kw: dict[str, Any] = {}
    if a.raw:
        if a.system:
            raise InvalidParams("--system is a chat turn; it cannot go with --raw")
        kw["prompt"] = prompt
    else:
        msgs = ([{"role": "system", "content": a.system}] if a.system else []) + [{"role": "user", "content": prompt}]
        kw["messages"] = msgs
    with Client(a.socket, timeout=a.timeout) as c:
        if a.json:
            final = c.complete(a.model, stream=False, **kw, **params)
            print(json.dumps(final.result, indent=2, default=str))
            return 0
        try:
            final = _stream(c, a.model, sys.stdout, params=params, **kw)
        except KeyboardInterrupt:
            print("\n[cancelled]", file=sys.stderr)
            return 130
    print(file=sys.stdout)
    if final is not None and not a.quiet:
        print(_summary(final), file=sys.stderr)
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    from agent.client import Client

    params = _params(a)
    base = [{"role": "system", "content": a.system}] if a.system else []
    messages: list[dict[str, str]] = list(base)
    tty = sys.stdin.isatty()
    with Client(a.socket, timeout=a.timeout) as c:
        if tty:
            print(f"chatting with {a.model}; /reset starts over, /exit leaves", file=sys.stderr)
        while True:
            if tty:
                print("you> ", end="", file=sys.stderr, flush=True)
            try:
                line = sys.stdin.readline()
            except KeyboardInterrupt:
                print(file=sys.stderr)
                return 0
            if not line:   # end of input
                return 0
            text = line.rstrip("\n")
            if not text.strip():
                continue
            if text.strip() in ("/exit", "/quit"):
                return 0
            if text.strip() == "/reset":
                messages = list(base)
                print("[conversation reset]", file=sys.stderr)
                continue
            messages.append({"role": "user", "content": text})
            try:
                final = _stream(c, a.model, sys.stdout, messages=messages, params=params)
            except KeyboardInterrupt:
                print("\n[reply cancelled]", file=sys.stderr)
                messages.pop()
                continue
            print(flush=True)
            reply = (final.result or {}).get("text", "") if final is not None else ""
            messages.append({"role": "assistant", "content": reply})
            if final is not None and not a.quiet:
                print(_summary(final), file=sys.stderr)


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def add_qos_args(sp: argparse.ArgumentParser) -> None:
    """Per-request QoS flags (``generate``, ``chat``, ``infer``); the daemon validates the values."""
    sp.add_argument("--deadline-ms", type=float, dest="deadline_ms",
                    help="the answer must be complete within this; refused at once if no variant can make it")
    sp.add_argument("--min-quality", type=float, dest="min_quality", help="the request's own quality floor (0..1)")
    sp.add_argument("--priority", type=int, help="larger = served first among queued requests")


def _add_sampling(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model")
    sp.add_argument("--max-tokens", type=_positive_int, default=256, help="new tokens at most (default 256)")
    sp.add_argument("--temperature", type=float, help="0 = greedy (the default)")
    sp.add_argument("--top-p", type=float, dest="top_p")
    sp.add_argument("--top-k", type=int, dest="top_k")
    sp.add_argument("--seed", type=int, help="makes sampling reproducible")
    sp.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop sequence (repeatable)")
    sp.add_argument("--system", help="system prompt (chat)")
    add_qos_args(sp)
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the daemon")
    sp.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")


def add_parsers(subparsers: Any) -> None:
    """Register ``generate`` and ``chat`` on agentctl's sub-parsers."""
    g = subparsers.add_parser("generate", help="stream a completion from a causal-lm model")
    _add_sampling(g)
    g.add_argument("prompt", help="the prompt ('-' reads stdin)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="plain completion: continue the prompt text as is")
    mode.add_argument("--chat", action="store_true",
                      help="send the prompt as a user message with the chat template (the default)")
    g.add_argument("--json", action="store_true", help="print the final result as JSON instead of streaming")
    g.set_defaults(func=cmd_generate)
    c = subparsers.add_parser("chat", help="interactive chat with a causal-lm model (stdin lines, /exit)")
    _add_sampling(c)
    c.set_defaults(func=cmd_chat)
