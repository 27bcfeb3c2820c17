"""Per-source text cleaners (after the Baby Llama paper's `mrclean.py`).

Every cleaner is a pure `str -> str` that never raises. `CLEANERS` maps a source name (the part
of `<source>.<split>` before the dot) to its cleaner; unknown sources get `clean_default`.
"""
from __future__ import annotations

import re
from typing import Callable

_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([.,;:!?)\]}'](?:\s|$))|[ \t]+(n't\b)")
_MULTI_SPACE = re.compile(r"[ \t]{2,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def fix_spacing(text: str) -> str:
    """'Hello , world !' -> 'Hello, world!'; collapse runs of spaces; strip line ends."""
    text = _CONTROL.sub("", text)
    text = _SPACE_BEFORE_PUNCT.sub(lambda m: m.group(1) or m.group(2), text)
    text = _MULTI_SPACE.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n"))


def clean_basic(text: str) -> str:
    """Only what any text needs: control bytes removed, runs of spaces and tabs collapsed, line ends
    stripped (for inputs without a source to pick a cleaner by)."""
    text = _CONTROL.sub("", text)
    text = _MULTI_SPACE.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n"))


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


def clean_default(text: str) -> str:
    return squeeze_blank_lines(fix_spacing(text))


def clean_austen(text: str) -> str:
    """Novels: drop headings (CHAPTER I, VOLUME II, titles), _italics_ marks, unwrap paragraphs."""
    kept = []
    for para in re.split(r"\n\s*\n", text):
        stripped = para.strip()
        if re.fullmatch(r"(CHAPTER|VOLUME|Chapter|Volume)\s+[\dIVXLC]+\.?|By Jane Austen|[A-Z][A-Z \-']+", stripped):
            continue
        kept.append(stripped.replace("_", ""))
    return unwrap_paragraphs(fix_spacing("\n\n".join(kept)))


def clean_kjv(text: str) -> str:
    """Bible: drop verse numbers ('12. And ...'), keep translators' [added] words without brackets."""
    text = re.sub(r"(?:(?<=\s)|^)\d+\.\s+", "", text, flags=re.M)
    text = re.sub(r"\[([^\]]*)\]", r"\1", text)
    return clean_default(text)


def clean_script(text: str) -> str:
    """Plays: drop stage directions [Enter ...], ACT/SCENE headings and SPEAKER. tag lines."""
    text = re.sub(r"[\[{][^\]}]*[\]}]", "", text, flags=re.S)
    lines = []
    for line in text.split("\n"):
        stripped = line.strip()
        if re.fullmatch(r"(ACT|SCENE|Act|Scene)\b.*|[A-Z][A-Z .,'&\-]*\.|DRAMATIS PERSONAE|THE END", stripped):
            continue
        lines.append(fix_ocr_caps(stripped))
    return squeeze_blank_lines(fix_spacing("\n".join(lines)))


def clean_transcript(text: str) -> str:
    """CHILDES / Switchboard: drop speaker tags ('*CHI:', 'A:'), fix tokenised punctuation."""
    text = re.sub(r"^\s*\*?[A-Za-z]{1,8}:\s*", "", text, flags=re.M)
    return clean_default(text)


def clean_subtitles(text: str) -> str:
    """Open Subtitles: drop credit lines and leading dialogue dashes."""
    credit = re.compile(r"(subtitle|subtitles|synced|sync|corrected|translated|captioning|www\.|http)", re.I)
    lines = [re.sub(r"^\s*-\s*", "", line) for line in text.split("\n") if not credit.search(line)]
    return clean_default("\n".join(lines))


def clean_wiki(text: str) -> str:
    """Wikipedia: drop '= = Heading = =' lines."""
    lines = [line for line in text.split("\n") if not re.fullmatch(r"\s*(=\s*)+[^=]*(\s*=)+\s*", line)]
    return clean_default("\n".join(lines))


def clean_gutenberg(text: str) -> str:
    """Books with OCR: fix 'l' for 'I' in all-caps lines, drop chapter headings."""
    lines = [fix_ocr_caps(line) for line in text.split("\n")]
    lines = [line for line in lines if not re.fullmatch(r"\s*(CHAPTER|Chapter)\s+[\dIVXLC]+\.?\s*", line)]
    return clean_default("\n".join(lines))


def clean_qed(text: str) -> str:
    """QED educational subtitles: strip HTML tags and entities, then as subtitles."""
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&").replace("&quot;", '"')
    return clean_subtitles(text)


CLEANERS: dict[str, Callable[[str], str]] = {
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


def cleaner_for(source: str) -> Callable[[str], str]:
    return CLEANERS.get(source, clean_default)
