"""What the `airut` command prints that others wrote."""

from __future__ import annotations


def printable(text: str) -> str:
    """Text the agent, a sender or a server wrote: terminal control sequences (colours,
    titles, the clipboard escape) are shown, not obeyed."""
    return "".join(c if c in "\n\t" or (c.isprintable() and c != "\x7f") else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                   for c in text)
