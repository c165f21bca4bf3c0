"""The agent's Markdown as Slack mrkdwn, and cut to the sizes Slack takes.

markdown-it-py parses (CommonMark, with tables and strikethrough; raw HTML stays
text); the renderer below walks its tokens. Slack has no tables, headings or nested
emphasis markers of Markdown's kind: headings become bold lines, tables aligned code
blocks, rules a line of em dashes, task list items ☐/☑. `<`, `>` and `&` are escaped
everywhere, so nothing the agent writes becomes a mention, a link or a broadcast
(`<!channel>`) that it did not write as a Markdown link.
"""

from __future__ import annotations

import re
import unicodedata

from markdown_it import MarkdownIt
from markdown_it.token import Token

MESSAGE_MAX = 40_000  # characters of one message (chat.postMessage's text limit)
CHUNKS_MAX = 5  # messages of one reply; longer replies go as response.md
RULE = "———"

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
    ["table", "strikethrough"])


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _url(url: str) -> str:
    """A link target Slack reads back whole: no `|`, `>` or space inside."""
    return escape(re.sub(r"[|\s]", lambda m: f"%{ord(m.group()):02X}", url))


def render(markdown: str) -> str:
    tokens = _parser.parse(markdown)
    out = _Renderer().blocks(tokens, 0, len(tokens))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")


class _Renderer:
    def blocks(self, tokens: list[Token], start: int, end: int, indent: str = "") -> list[str]:
        """Block tokens tokens[start:end] as lines."""
        lines: list[str] = []
        i = start
        while i < end:
            t = tokens[i]
            close = _closing(tokens, i) if t.nesting == 1 else i
            kind = t.type
            if kind == "paragraph_open":
                lines += self.inline(tokens[i + 1]).split("\n")
                lines.append("")
            elif kind == "heading_open":
                text = self.inline(tokens[i + 1]).strip()
                lines += [f"*{text}*" if text else "", ""]
            elif kind in ("fence", "code_block"):
                lines += ["```", *escape(t.content.rstrip("\n")).split("\n"), "```", ""]
            elif kind == "hr":
                lines += [RULE, ""]
            elif kind == "blockquote_open":
                inner = self.blocks(tokens, i + 1, close)
                while inner and not inner[-1]:
                    inner.pop()
                lines += [f"&gt; {line}" if line else "&gt;" for line in inner] + [""]
            elif kind in ("bullet_list_open", "ordered_list_open"):
                lines += self.list(tokens, i, close, kind == "ordered_list_open")
                lines.append("")
            elif kind == "table_open":
                lines += ["```", *self.table(tokens, i, close), "```", ""]
            elif kind == "inline":
                lines += self.inline(t).split("\n")
            i = close + 1
        return lines

    def list(self, tokens: list[Token], start: int, end: int, ordered: bool) -> list[str]:
        lines: list[str] = []
        number = int(tokens[start].attrGet("start") or 1) if ordered else 0
        i = start + 1
        while i < end:
            if tokens[i].type != "list_item_open":
                i += 1
                continue
            close = _closing(tokens, i)
            item = self.blocks(tokens, i + 1, close)
            while item and not item[-1]:
                item.pop()
            marker = f"{number}." if ordered else "•"
            number += 1
            first = item[0] if item else ""
            task = re.match(r"\[([ xX])\] ", first)
            if task:
                marker, first = ("☑" if task.group(1) in "xX" else "☐"), first[4:]
            pad = " " * (len(marker) + 1)
            lines.append(f"{marker} {first}")
            lines += [f"{pad}{line}" if line else "" for line in item[1:]]
            i = close + 1
        return [line for line in lines if line != ""] if _tight(tokens, start) else lines

    def table(self, tokens: list[Token], start: int, end: int) -> list[str]:
        rows: list[list[str]] = []
        for i in range(start, end):
            if tokens[i].type == "tr_open":
                rows.append([])
            elif tokens[i].type == "inline" and rows:
                rows[-1].append(_plain(tokens[i]))
        width = max((len(r) for r in rows), default=0)
        rows = [r + [""] * (width - len(r)) for r in rows]
        sizes = [max(_width(r[c]) for r in rows) for c in range(width)]
        lines = []
        for n, row in enumerate(rows):
            cells = [cell + " " * (sizes[c] - _width(cell)) for c, cell in enumerate(row)]
            lines.append(escape(" | ".join(cells).rstrip()))
            if n == 0:
                lines.append("-+-".join("-" * s for s in sizes))
        return lines

    def inline(self, token: Token) -> str:
        out: list[str] = []
        links: list[tuple[str, int]] = []  # open links: their target, where their label starts
        for child in token.children or []:
            kind = child.type
            if kind == "text":
                out.append(escape(child.content))
            elif kind == "code_inline":
                out.append(f"`{escape(child.content)}`")
            elif kind in ("softbreak", "hardbreak"):
                out.append("\n")
            elif kind == "strong_open" or kind == "strong_close":
                out.append("*")
            elif kind == "em_open" or kind == "em_close":
                out.append("_")
            elif kind == "s_open" or kind == "s_close":
                out.append("~")
            elif kind == "link_open":
                links.append((str(child.attrGet("href") or ""), len(out)))
            elif kind == "link_close" and links:
                href, at = links.pop()
                label = "".join(out[at:]).replace("\n", " ")
                del out[at:]
                out.append(_link(href, label))
            elif kind == "image":
                out.append(_link(str(child.attrGet("src") or ""), escape(child.content)))
            else:  # html_inline cannot occur (html off); anything newer: its text
                out.append(escape(child.content))
        return "".join(out)


def _link(href: str, label: str) -> str:
    if not re.match(r"^(https?|mailto):", href, re.IGNORECASE):
        return f"{label} ({escape(href)})" if href and label else label or escape(href)
    if not label or label == escape(href):
        return f"<{_url(href)}>"
    return f"<{_url(href)}|{label.replace('|', '¦')}>"


def _plain(token: Token) -> str:
    return "".join(c.content for c in token.children or [] if c.type in (
        "text", "code_inline")) or token.content


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _closing(tokens: list[Token], i: int) -> int:
    depth = 0
    for j in range(i, len(tokens)):
        depth += tokens[j].nesting
        if depth == 0:
            return j
    return len(tokens) - 1


def _tight(tokens: list[Token], start: int) -> bool:
    """A tight list (no blank lines between items): its paragraphs are hidden."""
    for t in tokens[start + 1:]:
        if t.type == "paragraph_open":
            return t.hidden
    return True


def split(text: str, limit: int = MESSAGE_MAX) -> list[str]:
    """Chunks of at most `limit` characters, cut at a paragraph, else a line, else
    anywhere."""
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = window.rfind("\n\n")
        if cut < limit // 4:
            cut = window.rfind("\n")
        if cut < limit // 4:
            cut = limit
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest.strip() or not chunks:
        chunks.append(rest)
    return chunks
