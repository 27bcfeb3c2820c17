from logitcache.cleaners import (CLEANERS, clean_austen, clean_default, clean_kjv, clean_script, clean_subtitles,
                                 clean_transcript, clean_wiki, cleaner_for, fix_ocr_caps)


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
