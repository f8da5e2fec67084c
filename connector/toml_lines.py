"""Find the line of every key in a TOML document, so errors can say where to look.

tomllib gives values, not positions. This scanner walks a document that tomllib has
already accepted and records the line on which each key path (tables, dotted keys,
keys inside inline tables and arrays) is written.
"""

from __future__ import annotations

KeyPath = tuple[str | int, ...]

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path in a valid TOML document to the 1-based line it is written on."""
    return _Scanner(text).scan()


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, or of its nearest written ancestor when the key itself is absent."""
    for end in range(len(path), 0, -1):
        found = lines.get(tuple(path[:end]))
        if found is not None:
            return found
    return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self.array_tables: dict[KeyPath, int] = {}

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            if self._peek() == "[":
                table = self._header()
            else:
                self._key_value(table)

    # -- statements -------------------------------------------------------------

    def _header(self) -> KeyPath:
        is_array = self.text.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        path = self._key()
        if is_array:
            index = self.array_tables.get(path, -1) + 1
            self.array_tables[path] = index
            path = path + (index,)
        self._skip_blank()
        self.pos += 2 if is_array else 1
        self.lines.setdefault(path, self.line)
        return path

    def _key_value(self, prefix: KeyPath) -> None:
        line = self.line
        key = prefix + self._key()
        for end in range(len(prefix) + 1, len(key) + 1):
            self.lines.setdefault(key[:end], line)
        self._skip_blank()
        self.pos += 1  # "="
        self._skip_blank()
        self._value(key)

    def _key(self) -> KeyPath:
        parts: list[str] = []
        while True:
            self._skip_blank()
            char = self._peek()
            if char in ('"', "'"):
                parts.append(self._quoted_key(char))
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE:
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            self._skip_blank()
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1

    def _quoted_key(self, quote: str) -> str:
        self.pos += 1
        chars: list[str] = []
        while self.text[self.pos] != quote:
            if quote == '"' and self.text[self.pos] == "\\":
                chars.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            chars.append(self.text[self.pos])
            self.pos += 1
        self.pos += 1
        return "".join(chars)

    # -- values -----------------------------------------------------------------

    def _value(self, path: KeyPath) -> None:
        char = self._peek()
        if char in ('"', "'"):
            self._string(char)
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\n#":
                self.pos += 1

    def _string(self, quote: str) -> None:
        triple = quote * 3
        if self.text.startswith(triple, self.pos):
            end = self.pos + 3
            while True:
                end = self.text.index(triple, end)
                if quote == '"' and _escaped(self.text, end):
                    end += 1
                    continue
                break
            while self.text.startswith(quote, end + 3):  # up to two quotes may close it
                end += 1
            self._advance_to(end + 3)
            return
        end = self.pos + 1
        while self.text[end] != quote or (quote == '"' and _escaped(self.text, end)):
            end += 1
        self._advance_to(end + 1)

    def _array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "]":
                self.pos += 1
                return
            self.lines.setdefault(path + (index,), self.line)
            self._value(path + (index,))
            self._skip_blank(newlines=True)
            if self._peek() == ",":
                self.pos += 1
            index += 1

    def _inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "}":
                self.pos += 1
                return
            self._key_value(path)
            self._skip_blank(newlines=True)
            if self._peek() == ",":
                self.pos += 1

    # -- characters -------------------------------------------------------------

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _advance_to(self, end: int) -> None:
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def _skip_blank(self, newlines: bool = False) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r":
                self.pos += 1
            elif char == "\n" and newlines:
                self.pos += 1
                self.line += 1
            elif char == "#":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.pos += 1
            else:
                return


def _escaped(text: str, index: int) -> bool:
    """Whether the character at `index` is preceded by an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1
