"""A chunk's text as a reader sees it: whole statements, each with the heading it sits under.

Chunks come from very different files - Markdown with pipe tables, text files wrapped at 72
columns with fixed-width tables, PDF price lists whose rows lost their column gaps, CSV rows
written as "item: ...; price_gbp: ...", FAQ pages of question/answer lines - and a chunk may
start or end inside a line (the splitter's overlap). `units()` turns any of them into a list
of `Unit`s: headings (context, never an answer), whole sentences of joined paragraphs, whole
list items, table rows as statements ("Premium varifocal: £320"), FAQ questions (context for
the answer under them), and edge fragments (kept for display, never quoted).

`render()` joins the units into the whitespace-normalised passage the API returns and records
each unit's character span in it, so a citation can point at the exact sentence it quotes.

Line classification is hand-written on purpose: LlamaIndex's MarkdownNodeParser only splits at
`#` headers (the reader already did that) and knows nothing of pipe tables, wrapped text files
or PDF rows; the sentences inside a paragraph come from LlamaIndex's own sentence tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from llama_index.core.node_parser.text.utils import split_by_sentence_tokenizer

HEADING, SENTENCE, ROW, ITEM, QUESTION, FRAGMENT = "heading", "sentence", "row", "item", "question", "fragment"
ANSWERABLE = frozenset({SENTENCE, ROW, ITEM})
MIN_UNIT_CHARS = 12
HEADING_MAX_WORDS = 9
WRAP_CHARS = 55  # a line at least this long that ends mid-sentence was wrapped, not a heading

_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_PIPE_ROW = re.compile(r"^\s*\|(.*)\|\s*$")
_PIPE_RULE = re.compile(r"^\s*\|?[\s:|-]*-[\s:|-]*\|?\s*$")
_TEXT_RULE = re.compile(r"^\s*-{3,}(\s{2,}-{3,})+\s*$")  # fixed-width table rule: "-----  -----"
_BULLET = re.compile(r"^(\s*)(?:[-*•+]|\d+[.)]|\d+\.\d+[.)]?|[a-z][.)])\s+(?=\S)")
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|\d+\.\d+[.)]?)\s+")
_KEY_VALUE = re.compile(r"^[A-Z][\w'’ ()-]{1,30}: \S")
_CSV_ROW = re.compile(r"^([A-Za-z_][\w ]{0,30}): [^;]*(; [A-Za-z_][\w ]{0,30}: ?[^;]*)+.*$")
_CSV_CELL = re.compile(r";\s+(?=[a-z_][a-z0-9_ ]{0,30}:)")  # "; notes: ..." starts a cell, "; £20 credited" does not
_AMOUNT = r"\+?£\s?\d[\d,.]*"
_PRICE_ROW = re.compile(rf"^(?P<label>[A-Z].*?\S)\s+"
                        rf"(?P<value>(?:from\s+)?{_AMOUNT}(?:\s*[-–/]\s*(?:from\s+)?{_AMOUNT})?"
                        r"(?:\s*(?:per|/)\s*\w+)?|Included\b.*|Free\b.*)$")
_LABEL = re.compile(r"^(?:Price|Cost|Fee|Charge|Length|Duration|Time|Interval|Frequency|Validity|Valid|"
                    r"Available|Who|When|Where)s?(?: [\w'’-]+)?: .{1,60}$", re.IGNORECASE)  # "Price: £60 per pair"
_BOLD_LINE = re.compile(r"^\s*\*\*([^*]{2,80})\*\*")
_PRICE_KEY = re.compile(r"gbp|£|pounds", re.IGNORECASE)  # a column in pounds: "price_gbp"
_AMOUNT_IN = re.compile(r"£\s?\d")
_TERMINAL = re.compile(r"[.!?…]['\")\]]*$")
_EMPHASIS = re.compile(r"\*\*|__|`")
_ABBREVIATION = re.compile(r"(?:\b(?:Dr|Mr|Mrs|Ms|Prof|St|approx|No|vs|etc)|\b(?:e\.g|i\.e))\.\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Unit:
    text: str
    kind: str
    context: str = ""  # the heading or FAQ question it sits under

    @property
    def answerable(self) -> bool:
        return self.kind in ANSWERABLE and len(self.text) >= MIN_UNIT_CHARS

    @property
    def embed_text(self) -> str:
        """What the unit is ranked by: its heading gives "Price: £60 per pair" its subject."""
        return f"{self.context}: {self.text}" if self.context else self.text


@dataclass(frozen=True)
class Rendered:
    passage: str
    units: tuple[Unit, ...]
    spans: tuple[tuple[int, int], ...]  # (start, end) of units[i] in passage


@lru_cache(maxsize=1)
def _sentence_splitter() -> Callable[[str], list[str]]:
    return split_by_sentence_tokenizer()


def _clean(line: str) -> str:
    return " ".join(_EMPHASIS.sub("", line).split())


def split_sentences(paragraph: str) -> list[str]:
    """LlamaIndex's (punkt) sentence tokenizer, with splits after "Dr." or "e.g." mended."""
    out: list[str] = []
    for piece in _sentence_splitter()(paragraph):
        piece = piece.strip()
        if not piece:
            continue
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _ends_sentence(text: str) -> bool:
    return bool(_TERMINAL.search(text.rstrip()))


def _is_caps_heading(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 4 and sum(c.isupper() for c in letters) / len(letters) > 0.8


def _csv_statement(row: str) -> str:
    """"item: Anti-reflective coating; category: Coatings; price_gbp: 45.00; notes: Per pair" ->
    "Anti-reflective coating: £45; category: Coatings; notes: Per pair": the first column names
    the thing, a price column reads as a price."""
    cells = [cell.partition(": ") for cell in _CSV_CELL.split(row.rstrip(";"))]
    subject, rest = cells[0][2].strip(), []
    for key, _, value in cells[1:]:
        value = value.strip()
        if _PRICE_KEY.search(key) and re.fullmatch(r"\d+(?:\.\d+)?", value):
            amount = value[:-3] if value.endswith(".00") else value
            rest.insert(0, f"£{amount}")
        elif value:
            rest.append(f"{key.strip()}: {value}")
    return f"{subject}: {'; '.join(rest)}" if rest else subject


def _row_statement(cells: list[str], header: list[str] | None) -> str:
    cells = [_clean(c) for c in cells]
    first, rest = cells[0], [c for c in cells[1:]]
    if not rest:
        return first
    extra = ""
    if len(rest) > 1:
        names = header[2:] if header and len(header) == len(cells) else [""] * (len(rest) - 1)
        extra = "".join(f"; {name.lower()}: {value}" if name else f"; {value}"
                        for name, value in zip(names, rest[1:], strict=False) if value)
    return f"{first}: {rest[0]}{extra}" if rest[0] else f"{first}{extra}"


@dataclass
class _Block:
    kind: str  # "para" | "item" | "row" | "heading" | "question"
    text: str
    indent: int = 0


def _blocks(text: str, section: str | None, starts_document: bool) -> list[_Block]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[_Block] = []
    header: list[str] | None = None
    fixed_columns: list[int] | None = None  # column starts of a fixed-width table
    for number, raw in enumerate(lines):
        if not raw.strip():
            fixed_columns = None
            if blocks and blocks[-1].kind in ("para", "item"):
                blocks.append(_Block("break", ""))
            continue
        indent = len(raw) - len(raw.lstrip())
        line = _clean(raw)
        if number == 0 and section and line == _clean(section):
            blocks.append(_Block("heading", line))
            continue
        bold = _BOLD_LINE.match(raw)
        short_bold = bool(bold) and len(bold.group(1).split()) <= 5 and ":" not in bold.group(1)
        if short_bold and raw.strip() != bold.group(0).strip():
            # "**Minimum fitting height.** The standard is ...": a run-in heading, context for its paragraph
            blocks.append(_Block("heading", _clean(bold.group(1)).rstrip(".")))
            raw = raw[bold.end():]
            line = _clean(raw)
            indent = 0
        elif short_bold and not _ends_sentence(line):
            blocks.append(_Block("heading", line))
            continue
        if heading := _MD_HEADING.match(raw):
            blocks.append(_Block("heading", _clean(heading.group(1))))
            continue
        if _TEXT_RULE.match(raw):
            fixed_columns = [m.start() for m in re.finditer(r"-{3,}", raw)]
            if blocks and blocks[-1].kind in ("para", "heading"):
                blocks[-1] = _Block("heading", blocks[-1].text)
            continue
        if fixed_columns:
            cells = [c for c in re.split(r"\s{2,}", raw.strip()) if c]
            starts_second = indent >= fixed_columns[-1] - 1
            if len(cells) >= 2:
                blocks.append(_Block("row", f"{_clean(cells[0])}: {_clean(' '.join(cells[1:]))}", indent))
            elif blocks and blocks[-1].kind == "row":
                label, _, value = blocks[-1].text.partition(": ")
                blocks[-1] = _Block("row", f"{label}: {value} {line}" if starts_second else f"{label} {line}: {value}")
            else:
                blocks.append(_Block("para", line, indent))
            continue
        if _PIPE_RULE.match(raw) and "|" in raw:
            if blocks and blocks[-1].kind == "row" and number > 0:
                header = [c.strip() for c in _PIPE_ROW.match(lines[number - 1]).group(1).split("|")] \
                    if _PIPE_ROW.match(lines[number - 1]) else None
                blocks[-1] = _Block("table-head", " | ".join(_clean(c) for c in header or [blocks[-1].text]))
            continue
        if row := _PIPE_ROW.match(raw):
            blocks.append(_Block("row", _row_statement(row.group(1).split("|"), header)))
            continue
        header = None
        if _CSV_ROW.match(line):
            blocks.append(_Block("row", line))
            continue
        if (price := _PRICE_ROW.match(line)) and not _ends_sentence(line) and len(line.split()) <= 14 \
                and ":" not in price.group("label"):
            blocks.append(_Block("row", f"{price.group('label')}: {price.group('value')}"))
            continue
        if blocks and blocks[-1].kind == "lead-in" and not _BULLET.match(raw) and not _ends_sentence(line) \
                and len(line) < WRAP_CHARS:
            blocks[-1] = _Block("para", f"{blocks[-1].text}: {line}.")  # "referrals go to:" + "Eye Unit, ..."
            continue
        if blocks and blocks[-1].kind == "lead-in" and not _BULLET.match(raw) and indent > blocks[-1].indent:
            # "Central line (01632 960772):" over an indented block: the label belongs to what it labels
            blocks[-1] = _Block("para", f"{blocks[-1].text}: {line}", indent)
            continue
        bullet = _BULLET.match(raw)
        previous = blocks[-1] if blocks else None
        continues = (previous is not None and previous.kind in ("para", "item")
                     and (line[:1].islower() or line[:1] in "(–-&" or
                          (not _ends_sentence(previous.text) and len(previous.text.split("\n")[-1]) >= WRAP_CHARS
                           and not previous.text.endswith(":"))
                          or (previous.kind == "item" and indent > previous.indent and not bullet)))
        if continues and not bullet and not _KEY_VALUE.match(line):
            previous.text = f"{previous.text} {line}"
            continue
        words = len(line.split())
        if bullet:
            body = _clean(raw[bullet.end():])
            is_number = bool(_NUMBERED.match(raw))
            if is_number and not _ends_sentence(body) and not body.endswith(":") and \
                    len(body.split()) <= HEADING_MAX_WORDS and (_is_caps_heading(body) or body[:1].isupper()):
                blocks.append(_Block("heading", line))
            elif body.endswith(":"):
                blocks.append(_Block("heading", body[:-1]))
            elif body.endswith("?"):
                blocks.append(_Block("question", body))
            else:
                blocks.append(_Block("item", body, indent))
            continue
        if _is_caps_heading(line) and not _ends_sentence(line):
            blocks.append(_Block("heading", line))
            continue
        if line.endswith(":") and words <= 14:
            blocks.append(_Block("lead-in", line[:-1], indent))
            continue
        following = next((other.strip() for other in lines[number + 1:] if other.strip()), "")
        if not _ends_sentence(line) and words <= HEADING_MAX_WORDS and ":" not in line and \
                len(line) < WRAP_CHARS and line[:1].isupper() and not following[:1].islower():
            blocks.append(_Block("heading", line))
            continue
        blocks.append(_Block("para", line, indent))
    blocks = [b for b in blocks if b.kind != "break"]
    out: list[_Block] = []
    for i, block in enumerate(blocks):  # a wrapped "... if both are taken:" leading a list
        if block.kind == "para" and block.text.endswith(":") and i + 1 < len(blocks) and blocks[i + 1].kind == "item":
            *before, last = split_sentences(block.text)  # only the paragraph's last sentence leads the list
            if before:
                out.append(_Block("para", " ".join(before), block.indent))
            out.append(_Block("lead-in", last[:-1]))
        else:
            out.append(block)
    return out


def units(text: str, section: str | None = None, *, starts_document: bool = False) -> list[Unit]:
    """The chunk's units in reading order. `starts_document`: the chunk begins at the start of
    its file, so its first line cannot be the tail of a line cut by the splitter."""
    out: list[Unit] = []
    context, question = _clean(section or ""), ""  # the FAQ question the following sentences answer
    raw_blocks = _blocks(text, section, starts_document)
    blocks = [_Block("heading", b.text) if b.kind == "lead-in" else b for b in raw_blocks]
    csv_keys = [b.text.split(":", 1)[0] for b in blocks if b.kind == "row" and _CSV_ROW.match(b.text)]
    csv_first = max(set(csv_keys), key=csv_keys.count) if csv_keys else None
    lead_ins = {i for i, b in enumerate(raw_blocks) if b.kind == "lead-in"}
    lead_in = ""
    for index, block in enumerate(blocks):
        first, last = index == 0, index == len(blocks) - 1
        if block.kind != "item":
            lead_in = ""
        if index in lead_ins and index + 1 < len(blocks) and blocks[index + 1].kind == "item":
            lead_in = block.text  # shown with each item below it instead of on its own
            continue
        if block.kind == "table-head":  # column names: shown, but the heading above stays the context
            out.append(Unit(block.text, HEADING))
            continue
        if block.kind == "heading":
            context, question = block.text, ""
            if _AMOUNT_IN.search(block.text):  # "Photochromic lenses — £79": a heading that states a price
                out.append(Unit(block.text, ROW))
                continue
            out.append(Unit(block.text, HEADING))
            continue
        if block.kind == "question":
            question = block.text
            out.append(Unit(block.text, QUESTION, context))
            continue
        if block.kind == "row":
            is_csv = bool(_CSV_ROW.match(block.text))
            broken = is_csv and (not block.text.startswith(f"{csv_first}:") or block.text.endswith(";"))
            broken = broken or (first and not starts_document and not block.text[:1].isupper() and not is_csv)
            text = _csv_statement(block.text) if is_csv and not broken else block.text
            out.append(Unit(text, FRAGMENT if broken else ROW, context))
            continue
        if block.kind == "item" and block.text.endswith("?"):  # "3. Are there new flashes ...?"
            out.append(Unit(block.text, QUESTION, context))
            continue
        if block.kind == "item":
            broken = last and not _ends_sentence(block.text) and len(block.text) >= WRAP_CHARS
            text = f"{lead_in}: {block.text}" if lead_in else block.text
            out.append(Unit(text, FRAGMENT if broken else ITEM, context))
            continue
        pieces = split_sentences(block.text)
        for position, sentence in enumerate(pieces):
            kind = SENTENCE
            if sentence.endswith("?"):
                out.append(Unit(sentence, QUESTION, context))
                question = sentence
                continue
            if first and position == 0 and not starts_document and not sentence[:1].isupper() \
                    and sentence[:1] not in "£(\"'":
                kind = FRAGMENT  # the splitter's overlap began inside a sentence
            if last and position == len(pieces) - 1 and not _ends_sentence(sentence) \
                    and not _KEY_VALUE.match(sentence):
                kind = FRAGMENT  # the chunk ends inside a sentence
            previous = out[-1] if out else None
            if kind == SENTENCE and context and _LABEL.match(sentence) and not _ends_sentence(sentence):
                # A bare "Price: £60 per pair" line says nothing without the heading it sits under.
                if previous is not None and previous.kind == HEADING and previous.text == context:
                    out.pop()
                out.append(Unit(f"{context} — {sentence}", SENTENCE, context))
                continue
            out.append(Unit(sentence, kind, question or context))
    return out


def render(unit_list: list[Unit]) -> Rendered:
    """Join units with single spaces; record where each one sits."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for unit in unit_list:
        if parts:
            position += 1
        spans.append((position, position + len(unit.text)))
        parts.append(unit.text)
        position += len(unit.text)
    return Rendered(" ".join(parts), tuple(unit_list), tuple(spans))


def passage_of(text: str, section: str | None = None, *, starts_document: bool = False) -> Rendered:
    return render(units(text, section, starts_document=starts_document))
