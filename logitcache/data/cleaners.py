"""Per-source text cleaners (after the Baby Llama paper's `mrclean.py`).

A cleaner is a chain of named steps, each a pure `str -> str` that never raises. Every step works
inside one line, or inside one paragraph within a bounded length, so an unmatched bracket or a stray
'<' can never take the text after it with it. `Cleaner.counted` also tallies what each step removed
(non-space characters, non-blank lines) for `prepare_report.json`. `CLEANERS` maps a source name
(the part of `<source>.<split>` before the dot) to its cleaner; unknown sources get `clean_default`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([.,;:!?)\]}'](?:\s|$))|[ \t]+(n't\b)")
_MULTI_SPACE = re.compile(r"[ \t]{2,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WHITESPACE = " \t\n\r\x0b\x0c"


def text_chars(text: str) -> int:
    """Non-whitespace characters: what a step that only re-spaces text leaves unchanged."""
    return len(text) - sum(text.count(c) for c in _WHITESPACE)


def text_lines(text: str) -> int:
    """Non-blank lines."""
    return sum(1 for line in text.split("\n") if line.strip())


WARN_FRACTION = 0.05  # a step removing more of a source's characters than this is reported as a warning


@dataclass(frozen=True)
class Cleaner:
    """Named steps run in order. A step that `joins` lines (paragraph unwrapping) removes no text, so
    its line count is reported as lines joined, not lines removed. `expected` raises the warning
    threshold (a fraction of the source's characters) of a step whose job is to remove more, such as
    speaker tags; every other step warns above WARN_FRACTION."""

    name: str
    steps: tuple[tuple[str, Callable[[str], str]], ...]
    joins: frozenset[str] = frozenset()
    expected: dict[str, float] = field(default_factory=dict)

    def __call__(self, text: str) -> str:
        for _, step in self.steps:
            text = step(text)
        return text

    def counted(self, text: str, tally: dict) -> str:
        """Clean `text`, adding to `tally` {"cleaner", "chars", "lines", "removed": {step: {"chars", "lines"}}}:
        the input's non-space characters and non-blank lines, and what each step took away."""
        chars, lines = text_chars(text), text_lines(text)
        tally["cleaner"] = self.name
        tally["chars"] = tally.get("chars", 0) + chars
        tally["lines"] = tally.get("lines", 0) + lines
        removed = tally.setdefault("removed", {})
        for name, step in self.steps:
            text = step(text)
            after_chars, after_lines = text_chars(text), text_lines(text)
            line_key = "lines_joined" if name in self.joins else "lines"
            entry = removed.setdefault(name, {"chars": 0, line_key: 0})
            entry["chars"] += chars - after_chars
            entry[line_key] += lines - after_lines
            chars, lines = after_chars, after_lines
        return text

    def warnings(self, source: str, tally: dict) -> list[str]:
        """One line per step that removed more of `source`'s characters than it is expected to."""
        total, found = tally.get("chars", 0), []
        for name, entry in tally.get("removed", {}).items():
            limit = self.expected.get(name, WARN_FRACTION)
            if total and entry["chars"] > limit * total:
                found.append(f"source '{source}': cleaner step '{name}' removed {entry['chars']:,} of {total:,} "
                             f"characters ({entry['chars'] / total:.1%}, more than {limit:.0%}) and "
                             f"{entry.get('lines', 0):,} of {tally.get('lines', 0):,} lines")
        return found


def _strip_controls(text: str) -> str:
    return _CONTROL.sub("", text)


def _respace(text: str) -> str:
    """'Hello , world !' -> 'Hello, world!'; collapse runs of spaces; strip line ends."""
    text = _SPACE_BEFORE_PUNCT.sub(lambda m: m.group(1) or m.group(2), text)
    text = _MULTI_SPACE.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n"))


def _collapse_spaces(text: str) -> str:
    text = _MULTI_SPACE.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n"))


def fix_spacing(text: str) -> str:
    """Control bytes removed, then 'Hello , world !' -> 'Hello, world!', runs of spaces collapsed, line ends stripped."""
    return _respace(_strip_controls(text))


def fix_ocr_caps(line: str) -> str:
    """In an all-caps line, a lowercase 'l' between capitals is an OCR'd 'I' ('LlTTLE' -> 'LITTLE')."""
    letters = [c for c in line if c.isalpha()]
    lower = [c for c in letters if c.islower()]
    if len(letters) < 3 or any(c != "l" for c in lower) or len(lower) * 4 > len(letters):
        return line
    return line.replace("l", "I")


def squeeze_blank_lines(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + ("\n" if text.strip() else "")


def unwrap_paragraphs(text: str) -> str:
    """Join hard-wrapped lines inside a paragraph; paragraphs become single lines."""
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n".join(" ".join(p.split()) for p in paragraphs if p.strip()) + ("\n" if text.strip() else "")


def _drop_lines(pattern: re.Pattern) -> Callable[[str], str]:
    """A step that drops every line the pattern matches in full (after stripping)."""
    return lambda text: "\n".join(line for line in text.split("\n") if not pattern.fullmatch(line.strip()))


def _per_line(fn: Callable[[str], str]) -> Callable[[str], str]:
    return lambda text: "\n".join(fn(line) for line in text.split("\n"))


_DEFAULT_STEPS = (("control bytes", _strip_controls), ("spacing", _respace), ("blank lines", squeeze_blank_lines))
# Only what any text needs (for inputs without a source to pick a cleaner by).
clean_basic = Cleaner("basic", (("control bytes", _strip_controls), ("spacing", _collapse_spaces)))
clean_default = Cleaner("default", _DEFAULT_STEPS)

# Novels: headings (CHAPTER I, VOLUME II, the title) are whole paragraphs; _italics_ marks; unwrap paragraphs.
_AUSTEN_HEADING = re.compile(r"(CHAPTER|VOLUME|Chapter|Volume)\s+[\dIVXLC]+\.?|By Jane Austen|[A-Z][A-Z \-']+")


def _drop_austen_headings(text: str) -> str:
    kept = [p.strip() for p in re.split(r"\n\s*\n", text) if not _AUSTEN_HEADING.fullmatch(p.strip())]
    return "\n\n".join(kept)


clean_austen = Cleaner("austen", (("headings", _drop_austen_headings), ("italics marks", lambda t: t.replace("_", "")),
                                  ("control bytes", _strip_controls), ("spacing", _respace),
                                  ("unwrap", unwrap_paragraphs)), joins=frozenset({"unwrap"}))

# Bible: verse numbers ('12. And ...') go; translators' [added] words stay, without brackets.
_VERSE = re.compile(r"(?:(?<=\s)|^)\d+\.[ \t]+", re.M)
_ADDED_WORDS = re.compile(r"\[([^\[\]\n]*)\]")
clean_kjv = Cleaner("kjv", (("verse numbers", lambda t: _VERSE.sub("", t)),
                            ("brackets", lambda t: _ADDED_WORDS.sub(r"\1", t))) + _DEFAULT_STEPS)

# Plays: a stage direction or note is [..] or {..} (either closer) inside one paragraph, at most 1,000
# characters; a line that opens one and never closes it is a direction line of its own.
_DIRECTION = re.compile(r"[\[{](?:[^\[\]{}\n]|\n(?![ \t]*\n)){0,1000}[\]}]")
_UNCLOSED_DIRECTION = re.compile(r"^[ \t]*[\[{][^\[\]{}\n]*$", re.M)
_SCRIPT_HEADING = re.compile(r"(ACT|SCENE|Act|Scene)\b.*|[A-Z][A-Z .,'&\-]*\.|DRAMATIS PERSONAE|THE END")


def _drop_directions(text: str) -> str:
    text = _DIRECTION.sub("", _DIRECTION.sub("", text))  # twice: a direction nested in another
    return _UNCLOSED_DIRECTION.sub("", text)


clean_script = Cleaner("script", (("stage directions", _drop_directions), ("headings and speaker tags",
                                  _drop_lines(_SCRIPT_HEADING)), ("ocr caps", _per_line(fix_ocr_caps))) + _DEFAULT_STEPS,
                       expected={"headings and speaker tags": 0.10})  # a tag line per speech: 4.9% of the demo's

# CHILDES / Switchboard: a speaker tag is a CHAT tier ('*CHI:') or one capital ('A:') opening a line.
_SPEAKER = re.compile(r"^[ \t]*(?:\*[A-Za-z0-9]{2,8}|[A-Z]):(?:[ \t]+|$)", re.M)
clean_transcript = Cleaner("transcript", (("speaker tags", lambda t: _SPEAKER.sub("", t)),) + _DEFAULT_STEPS,
                           expected={"speaker tags": 0.35})  # '*CHI:' on lines of a few words

# Open Subtitles: a credit line names who subtitled, synced, corrected or translated ('Synced and
# corrected by X', 'Subtitles: X'), is a bare web address, points at a subtitle site, or pairs a credit
# word with a web address ('Subtitles downloaded from www.example.com'). Dialogue that merely uses
# those words ('I translated it', 'sync our watches') stays.
_CREDIT_WORD = (r"(?:subtitles?|subs|subtitled|captions?|captioned|captioning|transcript|transcribed|transcription|"
                r"translation|translations|translated|re-?sync(?:ed|hroni[sz]ed)?|sync(?:ed|hroni[sz]ed)?|"
                r"synchroni[sz]ation|corrected|corrections?|ripped|encoded)")
_CREDITS = rf"(?:(?:english|original|new)[ \t]+)?{_CREDIT_WORD}(?:[ \t]*(?:and|&|,|/|\+)[ \t]*{_CREDIT_WORD})*"
_CREDIT = re.compile(rf"[\W_]*{_CREDITS}(?:(?:[ \t]+\w+){{0,2}}?[ \t]+by|[ \t]*:)(?:[ \t].{{0,100}})?", re.I)
_URL = r"(?:https?://|www\.)\S+"
_BARE_URL = re.compile(rf"[\W_]*{_URL}[\W_]*", re.I)
_CREDIT_AND_URL = re.compile(rf"\b{_CREDIT_WORD}\b.*{_URL}|{_URL}.*\b{_CREDIT_WORD}\b", re.I)
_SUBTITLE_SITE = re.compile(r"\b(?:opensubtitles|addic7ed|subscene|podnapisi|tvsubtitles|subtitulos|yifysubtitles)"
                            r"\.(?:org|com|net|info)\b", re.I)
_DIALOGUE_DASH = re.compile(r"^[ \t]*-+(?!\d)[ \t]*", re.M)


def is_credit_line(line: str) -> bool:
    line = line.strip()
    return bool(_CREDIT.fullmatch(line) or _BARE_URL.fullmatch(line) or _SUBTITLE_SITE.search(line)
                or _CREDIT_AND_URL.search(line))


def _drop_credits(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not is_credit_line(line))


_SUBTITLE_STEPS = (("credits", _drop_credits), ("dialogue dashes", lambda t: _DIALOGUE_DASH.sub("", t)))
clean_subtitles = Cleaner("subtitles", _SUBTITLE_STEPS + _DEFAULT_STEPS)

# Wikipedia: '= = Heading = =' lines.
clean_wiki = Cleaner("wiki", (("headings", _drop_lines(re.compile(r"(=\s*)+[^=]*(\s*=)+"))),) + _DEFAULT_STEPS)

# Books with OCR: 'l' for 'I' in all-caps lines, chapter headings.
clean_gutenberg = Cleaner("gutenberg", (("ocr caps", _per_line(fix_ocr_caps)),
                                        ("chapter headings", _drop_lines(re.compile(r"(CHAPTER|Chapter)\s+[\dIVXLC]+\.?"))))
                          + _DEFAULT_STEPS)

# QED educational subtitles: HTML tags (a known tag name, attributes only as name=value, inside one
# line) and entities, then as subtitles. 'x < 5 and y > 3' is text, not a tag.
_TAG = re.compile(r"</?(?:a|b|big|br|div|em|font|i|p|s|small|span|strong|sub|sup|u)"
                  r"(?:[ \t]+[\w:-]+[ \t]*=[ \t]*(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'<>]+))*[ \t]*/?>", re.I)
_ENTITIES = (("&gt;", ">"), ("&lt;", "<"), ("&quot;", '"'), ("&#39;", "'"), ("&nbsp;", " "), ("&amp;", "&"))


def _unescape(text: str) -> str:
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    return text


clean_qed = Cleaner("qed", (("html tags", lambda t: _TAG.sub("", t)), ("html entities", _unescape))
                    + _SUBTITLE_STEPS + _DEFAULT_STEPS)


CLEANERS: dict[str, Cleaner] = {
    # the demo corpus
    "austen": clean_austen,
    "kjv": clean_kjv,
    "shakespeare": clean_script,
    # BabyLM 2023 and 2024 source names
    "aochildes": clean_transcript,
    "childes": clean_transcript,
    "switchboard": clean_transcript,
    "bnc_spoken": clean_default,
    "open_subtitles": clean_subtitles,
    "qed": clean_qed,
    "simple_wiki": clean_wiki,
    "simple_wikipedia": clean_wiki,
    "wikipedia": clean_wiki,
    "gutenberg": clean_gutenberg,
    "cbt": clean_gutenberg,
    "children_stories": clean_default,
}


def cleaner_for(source: str) -> Cleaner:
    return CLEANERS.get(source, clean_default)


CLEANERS_BY_NAME: dict[str, Cleaner] = {c.name: c for c in (clean_basic, clean_default, *CLEANERS.values())}
