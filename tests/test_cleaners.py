from logitcache.data.cleaners import (CLEANERS, clean_austen, clean_default, clean_kjv, clean_qed, clean_script,
                                      clean_subtitles, clean_transcript, clean_wiki, cleaner_for, fix_ocr_caps)


def test_every_cleaner_survives_odd_input():
    odd = ["", "\n\n\n", "ALL CAPS LINE", "\ufffd\ufffd bad bytes", "\x00\x07 control", "[unclosed", "   ", "a" * 10000]
    for cleaner in list(CLEANERS.values()) + [clean_default]:
        for text in odd:
            assert isinstance(cleaner(text), str)


def test_unknown_source_gets_default():
    assert cleaner_for("no-such-source") is clean_default


def test_spaces_before_punctuation():
    assert clean_default("Hello , world ! Is it ?\n") == "Hello, world! Is it?\n"
    assert clean_default("It do n't matter .\n") == "It don't matter.\n"


def test_script_drops_speaker_tags_and_stage_directions():
    text = "ACT 1\nSCENE 2\n[Enter a SHIPMASTER]\n\nMASTER.\nBoatswain! {Aside.]\n\nBOATSWAIN.\nHere, master.\n"
    assert clean_script(text) == "Boatswain!\n\nHere, master.\n"


def test_kjv_verse_numbers_and_brackets():
    text = "1. In the beginning God created the heaven. 2. And the earth was [so] void.\n"
    assert clean_kjv(text) == "In the beginning God created the heaven. And the earth was so void.\n"


def test_austen_headings_italics_and_wrapping():
    text = "EMMA\n\nCHAPTER IV\n\nShe was _very_ happy\nand rich.\n\nVOLUME II\n\nThe end came.\n"
    assert clean_austen(text) == "She was very happy and rich.\nThe end came.\n"


def test_transcript_speaker_tags():
    assert clean_transcript("*CHI:\tmore juice .\n*MOT:\tyes .\n") == "more juice.\nyes.\n"


def test_subtitle_credits():
    assert clean_subtitles("- Where are you?\nSubtitles by someone\n- Here.\n") == "Where are you?\nHere.\n"


def test_wiki_headings():
    assert clean_wiki("= = = History = = =\nIt began.\n") == "It began.\n"


def test_ocr_l_for_i_in_caps_lines():
    assert fix_ocr_caps("THE LlTTLE PRlNCE") == "THE LITTLE PRINCE"
    assert fix_ocr_caps("The little prince") == "The little prince"


def _words(text: str) -> list[str]:
    return text.split()


def test_a_stray_angle_bracket_never_spans_lines():
    """'<' in one line and '>' a thousand lines later is text, not an HTML tag."""
    middle = [f"line {i} of the lecture" for i in range(1000)]
    text = "\n".join(["so if x < 5 we stop", *middle, "and y > 3."]) + "\n"
    out = clean_qed(text)
    assert out.count("\n") == 1002 and _words(out) == _words(text)


def test_qed_tags_and_entities_are_removed_inside_the_line():
    text = '<i>Hello</i> <font color="#ffff00">world</font>, x &lt; 5<br/>\nand a<b>and c> stays\n'
    assert clean_qed(text) == "Hello world, x < 5\nand aand c> stays\n"
    assert clean_qed("if a <b and c> d\n") == "if a <b and c> d\n"  # not a tag: 'and', 'c' are no name=value


def test_an_unmatched_stage_bracket_stays_in_its_paragraph():
    body = "\n".join(f"Speech line {i}, with words." for i in range(300))
    for opener, closer in (("[", "]"), ("{", "}")):
        text = f"Exit here, {opener}Aside\n\n{body}\n\nand then {closer} later.\n"
        out = clean_script(text)
        assert all(f"Speech line {i}," in out for i in range(300)), opener
        assert "and then" in out and "later." in out


def test_stage_directions_within_a_paragraph_and_unclosed_direction_lines():
    wrapped = "Good night.\n[Enter LEAR, CORNWALL, ALBANY, and\nAttendants.]\nWhat news?\n"
    assert clean_script(wrapped) == "Good night.\n\nWhat news?\n"
    unclosed = "[Enter MENENIUS\n\nBRUTUS.\nHail, sir!\n"
    assert clean_script(unclosed) == "Hail, sir!\n"
    long = "[" + "word " * 400 + "]\nkept\n"  # 2,000 characters: no stage direction is that long
    assert "word" in clean_script(long)


def test_subtitle_credits_are_matched_as_credits_not_by_word():
    dialogue = ["I translated the letter for him.", "We need to sync our watches.", "He corrected me twice.",
                "Subtitles are hard to read.", "Go to www.example.com tonight, she said.", "-5 degrees outside."]
    credits = ["Subtitles by someone", "Synced and corrected by xyz", "- Translated by John Smith",
               "Sync: Rick", "English subtitles ripped by ABC", "www.addic7ed.com",
               "Subtitles downloaded from www.example.org", "Support us and become VIP member at www.OpenSubtitles.org"]
    out = clean_subtitles("\n".join(dialogue + credits) + "\n")
    assert out == "\n".join(dialogue) + "\n"


def test_transcript_speaker_tags_stay_in_their_line():
    assert clean_transcript("A:\tOkay.\nLook: a dog.\n*MOT:\n\nmore juice.\n") == "Okay.\nLook: a dog.\n\nmore juice.\n"


def test_counted_tallies_each_step_and_cleans_the_same():
    kept = ["- Where are you?", "Here.", "I translated it."]
    dropped = ["Subtitles by someone", "Synced and corrected by xyz"]
    text = "\n".join(kept[:1] + dropped[:1] + kept[1:] + dropped[1:]) + "\n"
    tally: dict = {}
    out = clean_subtitles.counted(text, tally)
    assert out == clean_subtitles(text) == "Where are you?\nHere.\nI translated it.\n"
    assert tally["chars"] == len("".join(text.split())) and tally["lines"] == 5
    assert tally["removed"]["credits"] == {"chars": sum(len("".join(line.split())) for line in dropped), "lines": 2}
    assert tally["removed"]["dialogue dashes"] == {"chars": 1, "lines": 0}
    assert clean_subtitles.warnings("open_subtitles", tally)  # 2 of 5 lines: far more than 5% of the text
    clean_subtitles.counted("\n".join(kept * 40) + "\n", tally)  # the same tally grows
    assert tally["lines"] == 125 and tally["removed"]["credits"]["lines"] == 2
    assert not clean_subtitles.warnings("open_subtitles", tally)  # 2 short lines of 125: under 5% of characters


def test_unwrapping_joins_lines_without_removing_text():
    tally: dict = {}
    clean_austen.counted("She was\nhappy\nand rich.\n\nThe end.\n", tally)
    assert tally["removed"]["unwrap"] == {"chars": 0, "lines_joined": 2}
    assert not clean_austen.warnings("austen", tally)
