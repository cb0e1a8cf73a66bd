"""Text from Consul made safe for a terminal: one line, every unprintable character escaped.

Messages quote what Consul holds or said (a holder's value, a session name, an error body), which
whoever can write the key or answer for the agent chose: an escape sequence must reach a terminal as
the four characters ``\\x1b``, never as the byte that retitles the window or moves the cursor.
"""

from __future__ import annotations

__all__ = ["escape", "one_line"]


def escape(char: str) -> str:
    """One character as a Python string escape (``\\x1b``, ``\\n``, ``\\u202e``, ``\\\\``)."""
    if char == "\\":
        return "\\\\"
    if char in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def one_line(text: str) -> str:
    """``text`` as one line: runs of whitespace as one space, anything else unprintable escaped."""
    return "".join(c if c.isprintable() else escape(c) for c in " ".join(text.split()))
