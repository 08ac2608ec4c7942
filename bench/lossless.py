"""Lossless token reduction per stage on realistic structured prompts, in tiktoken counts.

Inputs are files in a folder: ``*.chat.json`` is a whole chat request (``messages``);
any other file becomes the system message of a chat whose user message asks about it.
``--build DIR`` writes the inputs this repository's figures were measured on, made
deterministically (seeded) in public formats: a REST API's JSON list response, order
records, an RSS 2.0 feed, an XML product catalog, a markdown report with padded tables,
a RAG chat that repeats retrieved passages across turns, and a code review prompt (code
blocks are never changed: the control).

    .venv/bin/python bench/lossless.py --build /tmp/lossless-inputs
    .venv/bin/python bench/lossless.py --data /tmp/lossless-inputs
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.tokens import Policy, TokenOptimizer, text_counter  # noqa: E402

WORDS = ("latency cache token budget worker replica region invoice shipment refund "
         "customer order product review rating warehouse carrier tracking").split()


def sentence(rng: random.Random, n: int = 12) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def api_response(rng: random.Random) -> str:
    issues = []
    for i in range(25):
        issues.append({
            "id": 1000 + i, "number": i + 1, "title": sentence(rng, 6),
            "state": rng.choice(["open", "closed"]),
            "user": {"login": f"user{rng.randrange(50)}", "id": rng.randrange(10**6),
                     "type": "User", "site_admin": False},
            "labels": [{"name": rng.choice(["bug", "docs", "perf"]), "color": "d73a4a"}],
            "comments": rng.randrange(20), "created_at": f"2025-0{rng.randrange(1, 10)}-1"
            f"{rng.randrange(10)}T10:00:00Z", "body": sentence(rng, 20),
        })
    return json.dumps(issues, indent=2)


def order_records(rng: random.Random) -> str:
    orders = [{"order_id": f"SO-{5000 + i}", "customer": f"customer-{rng.randrange(300)}",
               "sku": f"SKU-{rng.randrange(900):03d}", "quantity": rng.randrange(1, 9),
               "unit_price": round(rng.uniform(2, 300), 2),
               "status": rng.choice(["paid", "shipped", "delivered", "refunded"]),
               "warehouse": rng.choice(["AMS", "FRA", "DUB"])} for i in range(60)]
    return "Orders exported from the shop:\n" + json.dumps({"orders": orders}, indent=4)


def rss_feed(rng: random.Random) -> str:
    items = "\n".join(
        f"    <item>\n      <title>{escape(sentence(rng, 7))}</title>\n"
        f"      <link>https://news.example.org/articles/{i}</link>\n"
        f"      <description>{escape(sentence(rng, 25))}</description>\n"
        f"      <pubDate>Mon, 0{rng.randrange(1, 10)} Jun 2025 08:00:00 GMT</pubDate>\n"
        f"      <guid>https://news.example.org/articles/{i}</guid>\n    </item>"
        for i in range(15))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0">\n  <channel>\n'
            "    <title>Example News</title>\n    <link>https://news.example.org/</link>\n"
            f"    <description>Daily news</description>\n{items}\n  </channel>\n</rss>")


def xml_catalog(rng: random.Random) -> str:
    products = "\n".join(
        f'  <product id="{i}" currency="EUR">\n    <name>{rng.choice(WORDS).title()} '
        f"{i}</name>\n    <price>{rng.uniform(1, 99):.2f}</price>\n"
        f"    <stock>{rng.randrange(500)}</stock>\n    <category>{rng.choice(WORDS)}"
        f"</category>\n  </product>" for i in range(40))
    return f"<catalog>\n{products}\n</catalog>"


def markdown_report(rng: random.Random) -> str:
    rows = "\n".join(f"| {rng.choice(WORDS):<12} | {rng.randrange(10**4):>8} | "
                     f"{rng.uniform(0, 1):>8.3f} |" for _ in range(30))
    def prose() -> str:
        return "\n\n\n".join(f"{sentence(rng, 30)}   {sentence(rng, 20)}    "
                             for _ in range(8))

    return (f"# Weekly report\n\n\n\n{prose()}\n\n\n| metric       |    count |    ratio |\n"
            f"|--------------|---------:|---------:|\n{rows}\n\n\n\n{prose()}\n")


def rag_chat(rng: random.Random) -> dict:
    passages = [" ".join(sentence(rng, 18) for _ in range(4)) for _ in range(6)]
    messages = [{"role": "system", "content": "Answer from the documents.   Cite them.  "}]
    for turn in range(4):
        docs = "\n\n".join(rng.sample(passages, 4))
        messages.append({"role": "user", "content": f"Documents:\n\n{docs}\n\n\n\nQuestion "
                                                    f"{turn}: {sentence(rng, 8)}"})
        messages.append({"role": "assistant", "content": sentence(rng, 25)})
    messages.append({"role": "user", "content": "Summarise the documents in one line."})
    return {"messages": messages}


def code_review(rng: random.Random) -> str:
    code = "\n".join(f"    value_{i}  =  compute({i},   {i + 1})    # {rng.choice(WORDS)}"
                     for i in range(40))
    return f"Review this code:\n\n```python\ndef run():\n{code}\n```\n\nFocus on naming."


BUILDERS = {"api_response.json": api_response, "order_records.json": order_records,
            "rss_feed.xml": rss_feed, "xml_catalog.xml": xml_catalog,
            "markdown_report.md": markdown_report, "rag.chat.json": rag_chat,
            "code_review.md": code_review}


def build(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in BUILDERS.items():
        value = make(random.Random(f"{seed}-{name}"))
        text = json.dumps(value, indent=1) if isinstance(value, dict) else value
        (folder / name).write_text(text)


def request_for(path: Path) -> dict:
    if path.name.endswith(".chat.json"):
        return json.loads(path.read_text())
    return {"messages": [{"role": "system", "content": path.read_text()},
                         {"role": "user", "content": "What stands out in this data?"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder of inputs")
    parser.add_argument("--build", type=Path, help="write the standard inputs here and exit")
    parser.add_argument("--encodings", default="cl100k_base,o200k_base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5, help="timing repetitions")
    args = parser.parse_args()
    if args.build:
        build(args.build, args.seed)
        print(f"wrote {len(BUILDERS)} inputs to {args.build}", file=sys.stderr)
        return
    if not args.data:
        parser.error("--data or --build is required")
    optimizer, policy = TokenOptimizer(), Policy.parse("lossless")
    results = []
    print(f"{'input':22} {'encoding':12} {'before':>7} {'after':>7} {'saved':>6}  "
          f"{'ms/1k':>6}  per stage")
    for path in sorted(p for p in args.data.iterdir() if p.is_file()):
        request = request_for(path)
        for enc in args.encodings.split(","):
            count = text_counter(enc)
            began = time.perf_counter()
            for _ in range(args.repeat):
                result = optimizer.optimize("chat.completions", request, policy, count)
            ms = (time.perf_counter() - began) * 1000 / args.repeat
            stages = {s.stage: s.saved for s in result.stages}
            row = {"input": path.name, "encoding": enc, "tokens_before": result.tokens_before,
                   "tokens_after": result.tokens_after,
                   "reduction": round(result.saved / result.tokens_before, 4),
                   "stages": stages,
                   "ms_per_1k_tokens": round(ms / (result.tokens_before / 1000), 3)}
            results.append(row)
            per_stage = " ".join(f"{k}={v}" for k, v in stages.items() if v)
            print(f"{path.name:22} {enc:12} {row['tokens_before']:7} {row['tokens_after']:7} "
                  f"{row['reduction']:6.1%}  {row['ms_per_1k_tokens']:6.2f}  {per_stage}")
    for enc in args.encodings.split(","):
        rows = [r for r in results if r["encoding"] == enc]
        before = sum(r["tokens_before"] for r in rows)
        after = sum(r["tokens_after"] for r in rows)
        print(f"{'ALL':22} {enc:12} {before:7} {after:7} {1 - after / before:6.1%}")
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
