"""Text to tokens: input readers, cleaners, the demo corpus, tokenizers, and the prepared-data reader."""
